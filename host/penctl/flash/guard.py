"""The busy guard of `penctl flash` (docs/design.md §4.3): fail closed.

Flashing starts with Ctrl-C, which stops the firmware and with it the motor (S9). That is never done to
a running session or sterilisation cycle, nor when penctl cannot tell. Flash may break in only when

- the pen positively answered `info` with a state other than RUNNING and STERILISING, or
- the pen is verifiably at the MicroPython REPL (it echoes what it is sent, or prints a prompt): it
  runs no firmware, so no session.

A pen in a session or a cycle: PenRefused BUSY (exit 1). No usable answer within the probe time (a
silent or powered-off pen, a slow link, a port backlog, a pen that speaks another protocol version):
NoAnswer (exit 3), nothing sent but one `info`. `--force` (force=True) skips the guard, explicitly.
"""

from penctl.errors import LinkError, NoAnswer, PenRefused, ProtocolError
from penctl.flash import settings
from penctl.tracing import log
from penctl.transport import SerialLink

BUSY_STATES = ("RUNNING", "STERILISING")
_OVERRIDE = ("if you are sure that no session and no sterilisation cycle runs, `penctl flash --force` "
             "skips this check")


def _ask_in_its_version(link, port, timeout, why):
    """A pen with firmware of another protocol version (the one being replaced, typically) is asked for
    its state in its own frame envelope, which every version keeps. No usable answer: NoAnswer."""
    version = link.foreign_version
    if isinstance(version, int):
        try:
            reply = link.request_foreign(version, {"op": "info"}, timeout=timeout)
            log.info("busy guard: the pen speaks protocol %d; its info says state %s", version, reply.get("state"))
            return reply
        except LinkError:
            pass
    raise NoAnswer("not flashing: the pen on %s cannot tell penctl whether it is busy (%s); %s"
                   % (port, why.message, _OVERRIDE)) from None


def check_idle(port, timeout=None, trace=None):
    """Returns what makes breaking in safe: the pen's state, or "REPL". Raises PenRefused (BUSY),
    NoAnswer, or LinkError when the port cannot be opened."""
    timeout = settings.PROBE_TIMEOUT if timeout is None else timeout
    link = SerialLink(port, request_timeout=timeout, open_timeout=timeout, trace=trace)
    link.open()
    try:
        try:
            reply = link.request({"op": "info"}, timeout=timeout)
        except ProtocolError as exc:
            reply = _ask_in_its_version(link, port, timeout, exc)
        except LinkError as exc:
            if link.is_open and link.at_repl():
                log.info("busy guard: %s is at the MicroPython REPL (no firmware runs)", port)
                return "REPL"
            raise NoAnswer("not flashing: no usable answer from the pen on %s within %g s, so penctl cannot "
                           "tell whether a session or a sterilisation cycle is running (a powered-off pen, "
                           "a slow link or a port backlog look the same). Check the pen and the port, try a "
                           "longer --timeout; %s. [%s]" % (port, timeout, _OVERRIDE, exc.message)) from None
    finally:
        link.close()
    state = reply.get("state")
    if reply.get("ok") is not True or not isinstance(state, str):
        raise NoAnswer("not flashing: the pen on %s answered `info` without its state (%r); %s"
                       % (port, reply, _OVERRIDE))
    if state in BUSY_STATES:
        what = "a session is running: stop it first (`penctl session stop`)" if state == "RUNNING" else \
            "a sterilisation cycle is running: wait for it to end"
        raise PenRefused("BUSY", "the pen is %s, %s; flashing would interrupt it" % (state, what))
    log.info("busy guard: the pen is %s, flashing may break in", state)
    return state
