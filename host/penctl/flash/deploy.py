"""`penctl flash`: the procedure (docs/design.md §4.3).

1. compile the firmware (penctl.flash.build; a build error is a UsageError, nothing is sent);
2. the busy guard (penctl.flash.guard): break in only into an idle pen or a pen at the REPL;
3. Ctrl-C into the raw REPL (the firmware stops the motor on KeyboardInterrupt), then ONE exec that
   hashes both slots, the pointer, main.py, a factory image at the root, and reports
   sys.implementation._mpy (a pen that could not load the build stops here, before any write);
4. the plan (penctl.flash.plan, pure): a factory image is first copied into the slot that is not
   staged and marked complete (the fallback); the other slot is staged: its marker goes first, then
   stale files; files that the booting slot has identical are copied on the pen; only the rest
   travels over the link (base64, settings.WRITE_BATCH_BYTES per exec, raw-paste flow control);
5. ONE exec re-hashes the staging slot; only if it equals the build: marker, pointer and (if it
   differs) main.py are written, each as temp file + rename;
6. Ctrl-B, Ctrl-D: soft reset into the firmware; the port is reopened and a ping must be answered
   with this penctl's protocol version. A firmware that does not start is switched back to the
   fallback slot (the previous firmware or the factory image), and the FlashError says so.

Nothing changed: no write, only steps 3 and 6. A power cut at any instant leaves the pen booting its
previous firmware (its factory image, or, on a pen that had none, the REPL); running `penctl flash`
again completes the job.
"""

from __future__ import annotations

import time
from pathlib import Path

from penctl.errors import FlashError, LinkError, ProtocolError
from penctl.firmware.pen import limits
from penctl.flash import device, settings
from penctl.flash.build import Progress, compile_firmware
from penctl.flash.guard import check_idle
from penctl.flash.plan import check_loadable, make_plan, top_dirs
from penctl.flash.rawrepl import Gone, RawRepl
from penctl.tracing import log
from penctl.transport import SerialLink

PROTOCOL_VERSION = limits.PROTOCOL_VERSION


class NotStarted(FlashError):
    """After the reset the firmware did not come up (the pen is at the REPL, or silent)."""

    def __init__(self, reason: str):
        super().__init__("the flashed firmware does not start (%s): fix it and run `penctl flash` again"
                         % reason)
        self.reason = reason


def ping(port: str, timeout: float, trace=None) -> int:
    """After the reset: the pen protocol (penctl.transport.SerialLink) until the firmware answers a
    ping; returns its protocol version. NotStarted if no firmware comes up (the pen sits at the REPL,
    or stays silent), FlashError if it speaks another protocol version."""
    deadline = time.monotonic() + timeout
    link = SerialLink(port, trace=trace)
    while True:
        try:
            link.open()
            break
        except LinkError as exc:  # e.g. a USB pen re-enumerating after the reset
            if time.monotonic() > deadline:
                raise FlashError("the firmware was flashed but %s cannot be reopened to check it (%s)"
                                 % (port, exc.message)) from None
            time.sleep(0.05)
    # A ping that arrives while the firmware is still starting may be lost with the REPL it
    # replaces: ask again soon, then less and less often (a loaded machine answers slowly).
    wait = settings.PING_FIRST_WAIT
    try:
        while True:
            try:
                reply = link.request({"op": "ping"}, timeout=max(0.01, min(wait, deadline - time.monotonic())))
            except ProtocolError:
                raise FlashError("the flashed firmware speaks protocol %s, this penctl speaks %d: flash "
                                 "firmware from the same release as penctl"
                                 % (link.foreign_version, PROTOCOL_VERSION)) from None
            except LinkError as exc:
                if link.at_repl():
                    crash = link._last_exception()
                    raise NotStarted("the pen is at the REPL" + (": " + crash if crash else "")) from None
                if not link.is_open:
                    raise FlashError("the pen went away right after the reset (%s)" % exc.message) from None
                if time.monotonic() >= deadline:
                    recent = [line for line in link.recent if line.strip()][-3:]
                    raise NotStarted("no answer to a ping within %.0f s of the reset%s"
                                     % (timeout, ("; it printed: " + " | ".join(recent)) if recent else "")) from None
                wait = min(wait * 2, 1.0)
                continue
            if reply.get("ok") is not True or reply.get("protocol") != PROTOCOL_VERSION:
                raise FlashError("the flashed firmware answered the ping with %r, expected protocol %d"
                                 % (reply, PROTOCOL_VERSION))
            return PROTOCOL_VERSION
    finally:
        link.close()


def flash_firmware(port: str, source_dir: Path | str | None = None, progress: Progress | None = None,
                   timeout: float | None = None, force: bool = False, trace=None,
                   probe_timeout: float | None = None) -> dict:
    """Deploy the firmware in source_dir (default: the firmware shipped with penctl) to the pen on port.

    `timeout` (seconds) overrides every step limit (raw REPL entry, each device step, the boot) and,
    unless `probe_timeout` is given, the busy guard's wait for `info`. `force` skips the busy guard.
    Returns files_total, files_written (sent over the link, the boot stub included), files_copied (on
    the pen, from the booting slot), files_removed, bytes_written, slot, fallback, factory_adopted,
    guard, seconds, changed, protocol.
    """
    t0 = time.monotonic()
    report = progress or (lambda stage, done, total: None)
    t_raw = timeout or settings.TIMEOUT_RAW_REPL
    t_step = timeout or settings.TIMEOUT_STEP
    t_boot = timeout or settings.TIMEOUT_BOOT

    build = compile_firmware(source_dir, progress=report)
    if force:
        guard = "skipped (force)"
        log.info("busy guard skipped (--force): breaking in whatever the pen is doing")
    else:
        guard = check_idle(port, probe_timeout if probe_timeout is not None else timeout, trace)
    stubm = build.stub_module
    pen = RawRepl(port, trace)
    try:
        pen.enter(t_raw)
    except BaseException as exc:
        pen.close()
        if not isinstance(exc, Gone):
            raise
        raise LinkError("no MicroPython REPL answered on %s within %.0f s: is it the pen's port? "
                        "(unplug and replug the pen, or check --port / PENCTL_PORT)" % (port, t_raw)) from None
    stage = "hash"
    try:
        report("hash", 0, 1)
        state = device.parse_hashes(pen.exec(device.hash_code(stubm, stubm.SLOTS, True, top_dirs(build)), t_step),
                                    stubm)
        report("hash", 1, 1)
        if build.native and state.arch and state.arch != build.arch:
            build = compile_firmware(source_dir, arch=state.arch)   # native code for this pen's CPU
        check_loadable(build, state)
        plan = make_plan(build, state)
        written = bytes_written = 0
        adopt = plan.adopt
        if adopt is not None and adopt.copy:
            stage = "adopt"
            log.info("the pen runs a factory image: copying it into slot %s as the fallback", adopt.slot)
            report("adopt", 0, 1)
            pen.exec(device.adopt_code(adopt, stubm), t_step)
            check = device.parse_hashes(pen.exec(device.hash_code(stubm, [adopt.slot], False), t_step), stubm)
            if check.files[adopt.slot] != adopt.files:
                raise FlashError("copying the pen's factory firmware into slot %s did not verify: nothing was "
                                 "switched, the pen still boots its factory firmware; run `penctl flash` again"
                                 % adopt.slot)
            pen.exec(device.marker_code(stubm, adopt.slot, adopt.generation), t_step)
            report("adopt", 1, 1)
        if plan.stage:
            stage = "write"
            batches = device.write_batches(plan, stubm, settings.WRITE_BATCH_BYTES)
            total = sum(len(f.data) for f in plan.write)
            report("write", 0, total)
            for code, nbytes, nfiles in batches:
                pen.exec(code, t_step)
                written += nfiles
                bytes_written += nbytes
                report("write", bytes_written, total)
            stage = "verify"
            report("verify", 0, 1)
            check = device.parse_hashes(pen.exec(device.hash_code(stubm, [plan.slot], False), t_step), stubm)
            if check.files[plan.slot] != build.hashes:
                bad = sorted(k for k in set(check.files[plan.slot]) | set(build.hashes)
                             if check.files[plan.slot].get(k) != build.hashes.get(k))
                raise FlashError("verifying slot %s failed (%s): nothing was switched, the pen boots its "
                                 "previous firmware; run `penctl flash` again" % (plan.slot, ", ".join(bad[:5])))
            report("verify", 1, 1)
        if plan.changed:
            stage = "switch"
            report("switch", 0, 1)
            pen.exec(device.commit_code(plan, build), t_step)
            if plan.write_stub:
                written += 1
                bytes_written += len(build.stub)
            report("switch", 1, 1)
        stage = "reset"
        report("reset", 0, 1)
        pen.soft_reset(t_step)
    except Gone as exc:
        raise FlashError(_gone_message(stage, port, exc)) from None
    except BaseException:
        # Refused or interrupted (FlashError, Ctrl-C on the host): do not leave the pen idle in the
        # raw REPL; a soft reset boots whatever it booted before (fw/active names a complete slot).
        pen.resume()
        raise
    finally:
        pen.close()
    try:
        protocol = ping(port, t_boot, trace)
    except NotStarted as exc:
        if plan.fallback is None or plan.fallback == plan.slot:
            raise
        raise FlashError(_roll_back(port, stubm, plan.fallback, adopt is not None, exc, t_raw, t_step, t_boot,
                                    trace)) from None
    report("reset", 1, 1)
    return {
        "files_total": len(build.files),
        "files_written": written,
        "files_copied": len(plan.copy),
        "files_removed": len(plan.remove),
        "bytes_written": bytes_written,
        "slot": plan.slot,
        "fallback": plan.fallback,
        "factory_adopted": adopt is not None and adopt.copy,
        "guard": guard,
        "seconds": round(time.monotonic() - t0, 3),
        "changed": plan.changed,
        "protocol": protocol,
    }


def _roll_back(port: str, stubm, slot: str, factory: bool, why: NotStarted, t_raw: float, t_step: float,
               t_boot: float, trace) -> str:
    """The new firmware does not start: point fw/active back at `slot` (complete: the firmware that
    booted before this flash, or the factory image copied there), reset, check it answers. Returns the
    message for the FlashError to raise."""
    what = "its factory firmware (now in slot %s)" % slot if factory else "its previous firmware (slot %s)" % slot
    log.info("the new firmware does not start (%s): switching back to %s", why.reason, what)
    pen = None
    try:
        pen = RawRepl(port, trace)
        pen.enter(t_raw)
        pen.exec(device.pointer_code(stubm, slot), t_step)
        pen.soft_reset(t_step)
        pen.close()
        pen = None
        ping(port, t_boot, trace)
    except (Gone, FlashError, LinkError) as exc:
        return ("the new firmware does not start (%s), and switching back to %s failed too (%s): fix the "
                "firmware and run `penctl flash` again" % (why.reason, what, getattr(exc, "message", exc)))
    finally:
        if pen is not None:
            pen.close()
    return ("the new firmware does not start (%s): the pen was switched back to %s, which runs; fix the "
            "firmware and run `penctl flash` again" % (why.reason, what))


def _gone_message(stage: str, port: str, exc: Exception) -> str:
    what = {
        "hash": "reading its files",
        "adopt": "copying its factory firmware into a slot",
        "write": "writing the new firmware",
        "verify": "verifying the new firmware",
        "switch": "switching to the new firmware",
        "reset": "restarting",
    }[stage]
    if stage in ("hash", "adopt", "write", "verify"):
        after = ("nothing was switched: it still boots the firmware it had before (or, if it had none, "
                 "stays at the REPL)")
    elif stage == "switch":
        after = "it boots either the previous or the new firmware, both are complete"
    else:
        after = "the new firmware is installed"
    return ("the pen on %s stopped answering while %s (power cut or unplugged?); %s. Reconnect it and run "
            "`penctl flash` again to finish. [%s]" % (port, what, after, exc))
