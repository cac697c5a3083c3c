"""The virtual pen's power and boot states, and where the host's bytes and the rig's ops go.

    off       no supply: no interpreter; host bytes are lost
    firmware  main.py runs with the sim board (docs/design.md §5)
    stopping  between two interpreters: Ctrl-C sent to the firmware and it has not exited yet,
              or the REPL shim restarting after a crash; host bytes wait for the next one
    repl      the REPL shim runs (no main.py, after Ctrl-C, after the firmware ended)

Like a board: Ctrl-C (0x03) while the firmware runs is SIGINT (KeyboardInterrupt, the firmware
stops the motor and exits) and every byte after it goes to the REPL; a firmware that ends (exit,
crash) leaves the pen at the friendly REPL; a soft reset (Ctrl-D) in the raw REPL comes back in
the raw REPL without main.py, in the friendly REPL it boots main.py; `machine.reset()` (what
`mpremote reset` sends) restarts the pen as from power-on. Runs in the loop thread only.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from penctl.firmware.boards import rigproto
from pensim import interpreter as interp_mod
from pensim import shim_protocol as sp
from pensim.interpreter import FIRMWARE, SHIM_KIND, Interpreter
from pensim.loop import EventLoop
from pensim.ptyport import PtyPort
from pensim.world import FAULT_CARTRIDGE_OUT, World

Reply = Callable[[dict], None]

OFF, FIRMWARE_STATE, STOPPING, REPL = "off", "firmware", "stopping", "repl"
CTRL_C = b"\x03"
CRASH_WINDOW = 5               # the shim crashed this many times ...
CRASH_WINDOW_S = 5.0           # ... within this long: restart it slower
CRASH_RESTART_S = 0.05
CRASH_RESTART_SLOW_S = 0.5
PENDING_HOST_CAP = 64 * 1024   # host bytes queued while stopping before the host is held


class PenMachine:
    def __init__(self, loop: EventLoop, port: PtyPort, *, micropython: str, flash_dir: Path,
                 board_env: dict[str, str], plant_file: Path, rig_timeout: float,
                 identity: dict):
        self._loop = loop
        self._port = port
        self._micropython = micropython
        self._flash_dir = flash_dir
        self._board_env = board_env     # the sim board's environment (docs/board-interface.md)
        self._plant_file = plant_file   # where the sim board writes the plant state it leaves
        self._rig_timeout = rig_timeout
        self._identity = identity       # fixed fields of `status`
        self.state = OFF
        self.interpreter: Interpreter | None = None
        self.world = World()
        self._pending_host = bytearray()
        self._crashes: deque[float] = deque(maxlen=CRASH_WINDOW)
        self.counts = {"boots": 0, "resets": 0, "firmware_starts": 0, "shim_starts": 0, "power_cuts": 0}

    # ---- power ------------------------------------------------------------------------------

    def power_on(self) -> None:
        self.counts["boots"] += 1
        self._boot("friendly")

    def power_cut(self) -> None:
        self._lose_plant_outputs()   # no power: the motor and the UV stop
        self._stop_interpreter()
        self.counts["power_cuts"] += 1

    def shutdown(self) -> None:
        """The virtual pen is stopped for good."""
        self._stop_interpreter()
        self._plant_file.unlink(missing_ok=True)

    def _hard_reset(self) -> None:
        # machine.reset(): the MCU restarts, its outputs drop (motor and UV off) and bytes the
        # host sends meanwhile are lost, as while a board's USB re-enumerates.
        self._lose_plant_outputs()
        self._stop_interpreter()
        self.counts["resets"] += 1
        self.counts["boots"] += 1
        self._boot("friendly")

    def _stop_interpreter(self) -> None:
        interp = self.interpreter
        self.interpreter = None
        self.state = OFF
        self._pending_host.clear()
        self._port.hold_input(False)
        if interp is not None:
            interp.kill()

    def _lose_plant_outputs(self) -> None:
        self.world.learn(self._final_plant())  # the used mark is on the cartridge: it stays
        self._plant_file.unlink(missing_ok=True)

    # ---- boot -------------------------------------------------------------------------------

    def _boot(self, mode: str) -> None:
        """Start the interpreter the way a board comes out of (soft) reset: mode "friendly" boots
        main.py if there is one, "raw" the raw REPL, "repl" the friendly REPL without main.py."""
        pending = bytes(self._pending_host)
        self._pending_host.clear()
        self._port.hold_input(False)
        self.state = OFF   # until an interpreter runs: a failed spawn leaves the pen off, and says so
        if mode == "friendly" and (self._flash_dir / "main.py").is_file():
            interp = self._spawn(FIRMWARE)
            self.state = FIRMWARE_STATE
            assert interp.rig is not None
            for req in self.world.replay():
                interp.rig.request(req, None)
            if CTRL_C in pending:  # Ctrl-C typed while the pen was rebooting
                self.host_bytes(pending)
                return
        else:
            interp = self._spawn(SHIM_KIND, "raw" if mode == "raw" else "friendly")
            self.state = REPL
        interp.send(pending)

    def _spawn(self, kind: str, shim_mode: str = "friendly") -> Interpreter:
        env = dict(self._board_env)
        for name in ("PEN_SIM_RIG_IN", "PEN_SIM_RIG_OUT", "PEN_SIM_PLANT_FILE"):
            env.pop(name, None)
        if kind == FIRMWARE:
            # The plant outlives the interpreter: the sim board writes its final state here at exit
            # (a motor the firmware left running keeps running while the REPL is up).
            self._plant_file.unlink(missing_ok=True)
            env["PEN_SIM_PLANT_FILE"] = str(self._plant_file)
        interp = interp_mod.spawn(
            self._loop, kind, micropython=self._micropython, flash_dir=self._flash_dir, env=env,
            shim_mode=shim_mode, rig_timeout=self._rig_timeout, on_output=self._output,
            on_exit=self._exited, on_input_full=self._port.hold_input)
        self.counts["firmware_starts" if kind == FIRMWARE else "shim_starts"] += 1
        self.interpreter = interp
        if self._port.backlogged:
            interp.pause_output(True)
        return interp

    def _output(self, data: bytes) -> None:
        self._port.write(data)

    def output_backlog(self, on: bool) -> None:
        """The host is behind (True) or has caught up: pace the running interpreter's output."""
        if self.interpreter is not None:
            self.interpreter.pause_output(on)

    def _exited(self, interp: Interpreter, rc: int) -> None:
        if interp is not self.interpreter:
            return
        self.interpreter = None
        if self.state == OFF:
            return
        if interp.kind == FIRMWARE:
            self.world.learn(self._final_plant())
            self._boot("repl")  # like main.py ending: the friendly REPL
        elif interp.reset_requested or rc == sp.EXIT_HARD_RESET:
            self._hard_reset()
        elif rc == sp.EXIT_REBOOT_FRIENDLY:
            self._boot("friendly")
        elif rc == sp.EXIT_REBOOT_RAW:
            self._boot("raw")
        else:
            # the shim should not die: restart the REPL, slower if it keeps crashing
            now = time.monotonic()
            self._crashes.append(now)
            self.state = STOPPING
            slow = len(self._crashes) == CRASH_WINDOW and now - self._crashes[0] < CRASH_WINDOW_S
            self._loop.after(CRASH_RESTART_SLOW_S if slow else CRASH_RESTART_S, self._restart_after_crash)

    def _restart_after_crash(self) -> None:
        if self.state == STOPPING and self.interpreter is None:
            self._boot("repl")

    # ---- host bytes -------------------------------------------------------------------------

    def host_bytes(self, data: bytes) -> None:
        interp = self.interpreter
        if self.state == STOPPING:
            self._pending_host += data
            if len(self._pending_host) > PENDING_HOST_CAP:
                self._port.hold_input(True)
            return
        if self.state == OFF or interp is None:
            return  # no power: the bytes go nowhere
        if interp.kind == FIRMWARE:
            i = data.find(CTRL_C)
            if i < 0:
                interp.send(data)
                return
            interp.send(data[:i])
            self._pending_host += data[i + 1:]
            self.state = STOPPING
            interp.interrupt()
            return
        # REPL shim: a Ctrl-C while code runs is a keyboard interrupt, otherwise a byte
        while data:
            i = data.find(CTRL_C)
            if i < 0:
                interp.send(data)
                return
            if interp.busy and not interp.sigint_sent:
                interp.send(data[:i])
                interp.keyboard_interrupt()
            else:
                interp.send(data[: i + 1])
            data = data[i + 1:]

    # ---- rig ops ----------------------------------------------------------------------------

    def handle(self, req: dict, reply: Reply) -> None:
        """One rig request, already checked with rigproto.check_request."""
        op = req["op"]
        if op == rigproto.OP_STATUS:
            reply(self.status())
        elif op == rigproto.OP_POWER_CUT:
            was_on = self.state != OFF
            self.power_cut()
            reply({"ok": True, "powered": False, "was_powered": was_on})
        elif op == rigproto.OP_POWER_ON:
            already = self.state != OFF
            if not already:
                self.power_on()
            reply({"ok": True, "powered": True, "already_on": already,
                   "interpreter_pid": self.interpreter.pid if self.interpreter else None})
        else:
            self._plant_op(req, reply)

    def _plant_op(self, req: dict, reply: Reply) -> None:
        op = req["op"]
        if op == rigproto.OP_CARTRIDGE or (op == rigproto.OP_INJECT and req.get("fault") == FAULT_CARTRIDGE_OUT):
            # The sim board writes its plant file the moment it marks a cartridge (S19): learn
            # that mark while the marked cartridge is still the one in the world.
            self.world.learn(self._final_plant())
        self.world.apply(req)
        interp = self.interpreter
        plant = interp.rig if interp is not None and interp.rig is not None and interp.rig.open else None
        # While a Ctrl-C stops the firmware its plant still runs: a measure waits for the truth
        # (the plant's answer, or the state it leaves when it exits) instead of guessing.
        live = plant is not None and (self.state == FIRMWARE_STATE
                                      or (self.state == STOPPING and op == rigproto.OP_MEASURE))
        if plant is None or not live:
            powered = self.state != OFF
            if op == rigproto.OP_MEASURE:
                reply(self._measure_without_firmware())
            elif op in (rigproto.OP_CARTRIDGE, rigproto.OP_LID, rigproto.OP_CLEAR_INJECTIONS):
                reply({"ok": True, "powered": powered, "firmware": False})  # the world changed
            else:  # inject, hold_output: there is no plant model running to do it
                reply({"ok": False, "error": "firmware not running", "powered": powered})
            return
        assert interp is not None

        def answered(answer: dict) -> None:
            if op == rigproto.OP_MEASURE and not answer.get("ok") and not interp.alive:
                reply(self._measure_without_firmware())  # it exited first: what it left behind
                return
            self.world.applied_by_plant(req, answer)
            if answer.get("ok"):
                self.world.learn(answer)
            if op == rigproto.OP_MEASURE and answer.get("ok"):
                answer.setdefault("powered", True)
                answer.setdefault("firmware", True)
            reply(answer)

        plant.request(req, answered)

    def _final_plant(self) -> dict:
        """The plant state the last firmware wrote when it ended (empty if none)."""
        try:
            final = json.loads(self._plant_file.read_text())
        except (OSError, ValueError):
            return {}
        return final if isinstance(final, dict) else {}

    def _measure_without_firmware(self) -> dict:
        # No plant model runs: report what the last firmware left behind (every key it wrote:
        # a motor it left on is still on while the REPL runs), with the world as it is now.
        powered = self.state != OFF
        rep: dict = {"motor_on": False, "uv_on": False, "hz": 0, "depth_um": None}
        if powered:
            final = self._final_plant()
            self.world.learn(final)
            rep.update(final)
        rep.update(self.world.fields())
        rep.update({"ok": True, "powered": powered, "firmware": False})
        return rep

    def status(self) -> dict:
        interp = self.interpreter
        st = {
            "ok": True,
            "powered": self.state != OFF,
            "firmware": self.state == FIRMWARE_STATE,
            "mode": self.state,
            "repl": interp.repl if interp is not None and interp.kind == SHIM_KIND else None,
            "interpreter_pid": interp.pid if interp is not None else None,
        }
        st.update(self._identity)
        st.update(self.world.fields())
        st.update(self.counts)
        return st
