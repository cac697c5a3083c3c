"""The virtual pen's supervisor: makes the MicroPython unix port look like a pen on a serial port.

`VirtualPen` owns the pieces and their lifecycle, runs them in one event-loop thread and is the
Python API of the rig:

* `PtyPort` (pensim.ptyport): the pen's USB-CDC port, a raw pty whose slave (`port`) stock
  `mpremote` and pyserial open;
* `PenMachine` (pensim.pen_machine): the pen's power and boot states, one interpreter at a time
  (`Interpreter`, pensim.interpreter: the firmware, or the REPL shim repl_shim.py), the world
  around the pen (pensim.world);
* `RigServer` (pensim.rig_server): the rig socket, JSON lines of rigproto (docs/design.md §5.3).

`run_sim` is `penctl sim`. Paths given by the user (`--link`, `--control`, `--state`) are checked
before anything is created, and the pen never replaces or deletes a file it did not create.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from penctl.firmware.boards import rigproto
from pensim.flash_dir import check_state_dir, install_factory_image, pen_serial
from pensim.interpreter import CHILD_SETUP as _CHILD_SETUP  # noqa: F401 - tools/bench.py uses it
from pensim.interpreter import InterpreterMissing, find_micropython
from pensim.loop import EventLoop
from pensim.owned_paths import OwnedLink, PathRefused, check_new_path, check_socket_path
from pensim.pen_machine import PenMachine
from pensim.ptyport import PtyPort
from pensim.rig_channel import RIG_TIMEOUT_S
from pensim.rig_server import RigServer

CLOCKS = ("real", "fast", "target")
PEN_TIME_START_MAX_S = 100 * 24 * 3600   # pen clock may start up to 100 days in (wrap tests)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
EXIT_OK, EXIT_USAGE, EXIT_NO_PEN = 0, 2, 3   # penctl's exit codes (docs/design.md §4)


class SimError(RuntimeError):
    """The virtual pen could not be started."""


class SimConfigError(SimError):
    """Refused before anything was created: a path or setting the virtual pen will not use, or no
    interpreter to run it with (`penctl sim` exits 2)."""


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
        self.error: BaseException | None = None
        self._started = False
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._runtime_dir: Path | None = None    # private: the sim board's final plant state
        self._loop: EventLoop | None = None
        self._port: PtyPort | None = None
        self._link: OwnedLink | None = None
        self._machine: PenMachine | None = None
        self._server: RigServer | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self._started:
            return self
        micropython = self._check()
        try:
            self._setup(micropython)
        except PathRefused as e:  # a path taken between the check and its creation
            self._teardown()
            raise SimConfigError(str(e)) from None
        except BaseException:
            self._teardown()
            raise
        self._started = True
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="virtual-pen", daemon=True)
        assert self._loop is not None
        self._loop.thread = self._thread
        self._thread.start()
        ready.wait(START_TIMEOUT_S)
        if self.error is not None:
            self.stop()
            raise SimError(f"virtual pen failed to start: {self.error}")
        return self

    def _check(self) -> str:
        """Everything the start needs, checked before anything is created; the interpreter."""
        try:
            micropython = find_micropython(self._mp_arg)
            if self.link is not None:
                check_new_path(self.link, "--link")
            if self.control is not None:
                check_socket_path(self.control)
            if self._state_arg is not None:
                check_state_dir(self._state_arg)
        except (InterpreterMissing, ValueError) as e:   # PathRefused is a ValueError
            raise SimConfigError(str(e)) from None
        if self.link is not None and self.control is not None and self.link.absolute() == self.control.absolute():
            raise SimConfigError(f"--link and --control are the same path: {self.link}")
        return micropython

    def _setup(self, micropython: str) -> None:
        if self._state_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="virtual-pen-")
            self.state_dir = Path(self._tmp.name)
        else:
            self.state_dir = self._state_arg.resolve()
            self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.blank and not (self.state_dir / "main.py").exists():
            install_factory_image(self.state_dir)
        self.serial = pen_serial(self.state_dir)
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="pensim-run-"))
        self._loop = loop = EventLoop()
        self._port = PtyPort(loop, on_input=self._host_bytes, on_backlog=self._output_backlog)
        self.port = self._port.open()
        if self.link is not None:
            self._link = OwnedLink(self.link, self.port)
            self._link.create()
        board_env = dict(os.environ)
        board_env.update({"PEN_SIM_CLOCK": self.clock, "PEN_SIM_TIME_START_S": str(self.pen_time_start_s),
                          "PEN_SIM_SERIAL": self.serial})
        self._machine = PenMachine(
            loop, self._port, micropython=micropython, flash_dir=self.state_dir, board_env=board_env,
            plant_file=self._runtime_dir / "plant.json", rig_timeout=self.rig_timeout,
            identity={"supervisor_pid": self.pid, "port": self.port, "state_dir": str(self.state_dir),
                      "serial": self.serial, "clock": self.clock})
        if self.control is not None:
            self._server = RigServer(loop, self.control, self._machine.handle)
            self._server.open()

    def _host_bytes(self, data: bytes) -> None:
        if self._machine is not None:
            self._machine.host_bytes(data)

    def _output_backlog(self, on: bool) -> None:
        if self._machine is not None:
            self._machine.output_backlog(on)

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None and self._machine is not None
        try:
            self._machine.power_on()
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self.error = e
            ready.set()
            return
        ready.set()
        try:
            self._loop.run()
        finally:
            self._machine.shutdown()   # power off

    def stop(self) -> None:
        """Power off for good: kill the interpreter, close the port, remove link/socket/temp state."""
        if self._thread is not None and self._thread.is_alive():
            assert self._loop is not None
            self._loop.stop()
            self._thread.join(STOP_TIMEOUT_S)
        self._thread = None
        self._teardown()
        self._started = False

    def _teardown(self) -> None:
        if self._machine is not None:
            self._machine.shutdown()
            self._machine = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._link is not None:
            self._link.remove()
            self._link = None
        if self._port is not None:
            self._port.close()
            self._port = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def interpreter_pid(self) -> int | None:
        machine = self._machine
        interp = machine.interpreter if machine is not None else None
        return interp.pid if interp is not None else None

    # ---- the rig, from Python (any thread) -----------------------------------------------------

    def rig_request(self, req: dict, timeout: float | None = None) -> dict:
        """One rig-socket operation (docs/design.md §5.3), as a dict -> dict."""
        if not isinstance(req, dict):
            return {"ok": False, "error": "a rig request must be a dict"}
        problem = rigproto.check_request(req)
        if problem is not None:
            return {"ok": False, "error": problem, "ops": list(rigproto.OPS)}
        machine, loop = self._machine, self._loop
        if machine is None or loop is None or not self.alive:
            raise SimError("virtual pen is not running")
        if loop.in_loop_thread():
            answers: list[dict] = []
            machine.handle(req, answers.append)
            if answers:
                return answers[0]
            raise SimError("a rig request that waits for the firmware cannot be made from the loop thread")
        answered = threading.Event()
        result: list[dict] = []

        def reply(rep: dict) -> None:
            result.append(rep)
            answered.set()

        loop.call_soon_threadsafe(lambda: machine.handle(req, reply))
        if not answered.wait(timeout if timeout is not None else self.rig_timeout + 5):
            return {"ok": False, "error": "virtual pen did not answer"}
        return result[0]

    def status(self) -> dict:
        return self.rig_request({"op": rigproto.OP_STATUS})

    def power_cut(self) -> dict:
        return self.rig_request({"op": rigproto.OP_POWER_CUT})

    def power_on(self) -> dict:
        return self.rig_request({"op": rigproto.OP_POWER_ON})

    def measure(self) -> dict:
        return self.rig_request({"op": rigproto.OP_MEASURE})

    def inject(self, fault: str) -> dict:
        return self.rig_request({"op": rigproto.OP_INJECT, "fault": fault})

    def clear_injections(self) -> dict:
        return self.rig_request({"op": rigproto.OP_CLEAR_INJECTIONS})

    def cartridge(self, cid: str | None, used: bool = False) -> dict:
        return self.rig_request({"op": rigproto.OP_CARTRIDGE, "id": cid, "used": used})

    def lid(self, closed: bool) -> dict:
        return self.rig_request({"op": rigproto.OP_LID, "closed": closed})

    def hold_output(self, ms: int) -> dict:
        return self.rig_request({"op": rigproto.OP_HOLD_OUTPUT, "ms": ms})

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


# ---------------------------------------------------------------------------------------------

def run_sim(link: str | None = None, state_dir: str | None = None, clock: str = "real",
            blank: bool = False, control: str | None = None, json_out: bool = False,
            pen_time_start_s: int = 0) -> int:
    """`penctl sim`: run a virtual pen in the foreground until SIGINT/SIGTERM/SIGHUP; returns the
    exit code (2: refused before anything was created, 3: the virtual pen failed)."""
    try:
        pen = VirtualPen(link=link, state_dir=state_dir, clock=clock, blank=blank, control=control,
                         pen_time_start_s=pen_time_start_s)
    except ValueError as e:
        print(f"penctl sim: {e}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            pen.start()
        except SimConfigError as e:
            print(f"penctl sim: {e}", file=sys.stderr)
            return EXIT_USAGE
        except (OSError, SimError) as e:
            print(f"penctl sim: cannot start the virtual pen: {e}", file=sys.stderr)
            return EXIT_NO_PEN
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
        while not stop.wait(0.25):
            if not pen.alive:
                print("penctl sim: the virtual pen stopped unexpectedly", file=sys.stderr)
                return EXIT_NO_PEN
        return EXIT_OK
    finally:
        pen.stop()
        for sig, h in handlers.items():
            signal.signal(sig, h)
