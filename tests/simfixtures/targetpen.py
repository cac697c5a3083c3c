"""A virtual pen for the tests/test_target_*.py tests: the real interpreter running the
unchanged firmware behind a pty, on the target clock (the pen's CPU speed, docs/design.md
§5.2), with its rig socket. Requests go through penctl's library (penctl.client.Pen), rig
operations through the rig protocol (firmware/boards/rigproto.py).

A sterilised flash (one completed UV cycle, an active profile) is made once per test run
on the fast clock and copied into each pen's own flash folder: what a power cycle keeps.
"""
from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

from penctl.client import Pen
from penctl.firmware.boards import rigproto
from pensim.supervisor import VirtualPen

WAIT_S = 60.0          # wall-clock bound for anything that takes pen time (generous: a busy host)
PROFILE = "t"


def fresh_cartridge() -> str:
    return secrets.token_hex(8).upper()   # a 1-Wire ROM ID: 8 bytes


class TargetPen:
    """One virtual pen: `pen` (penctl.client.Pen), `rig(op=..., ...)`, power and clock."""

    def __init__(self, tmp: Path, template: Path | None = None, clock: str = "target", pen_time_start_s: int = 0):
        self.state = tmp / "flash"
        if template is not None:
            shutil.copytree(template, self.state)
        self._sockdir = Path(tempfile.mkdtemp(prefix="tp"))   # AF_UNIX paths are short
        self.sock = str(self._sockdir / "rig.sock")
        self.vpen = VirtualPen(state_dir=self.state, clock=clock, control=self.sock,
                               pen_time_start_s=pen_time_start_s)
        self.vpen.start()
        self.pen: Pen | None = None
        self.connect()

    def connect(self) -> Pen:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                self.pen = Pen(self.vpen.port, timeout=10, connect=False)
                self.pen.connect()
                return self.pen
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self.pen is not None:
            self.pen.close()
        self.vpen.stop()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    # ---- rig ----

    def rig(self, **req) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(self.sock)
            sock.sendall(rigproto.encode(req))
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError("rig socket closed")
                buf += chunk
        return rigproto.decode(buf.split(b"\n", 1)[0])

    def measure(self) -> dict:
        return self.rig(op="measure")

    def final_plant(self) -> dict:
        """The plant state the firmware left at exit (after Ctrl-C: once the REPL runs, the
        virtual pen's measure reports every key of it). Empty while the firmware still runs:
        between the Ctrl-C and its exit a measure is answered live (the needles still move)."""
        if self.vpen.status().get("mode") != "repl":
            return {}
        return self.measure()

    # ---- waits (pen time passes at the target clock's own pace) ----

    def wait(self, predicate, what: str, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("%s not reached within %.0f s" % (what, timeout_s))
            time.sleep(0.01)

    def wait_state(self, *states: str) -> str:
        return self.wait(lambda: self.pen.state() in states and self.pen.state(), "state " + "/".join(states))

    def pen_ms(self) -> int:
        return self.pen.request("info")["counters"]["uptime_ms"]

    def wait_pen_ms(self, ms: int) -> None:
        end = self.pen_ms() + ms
        self.wait(lambda: self.pen_ms() >= end, "%d ms of pen time" % ms)

    def start_session(self, stroke_hz: int = 100, max_session_s: int = 600, depth_mm: float = 1.0,
                      settle_ms: int = 500, run_ms: int | None = None) -> dict:
        """READY pen -> a session driving the motor, past its soft start."""
        assert self.wait_state("READY", "LOCKED", "FAULT") == "READY"   # homed after power-on
        name = "p%d-%d" % (stroke_hz, max_session_s)
        self.pen.profile_push([{"name": name, "depth_mm": depth_mm, "stroke_hz": stroke_hz,
                                "max_session_s": max_session_s}])
        self.pen.profile_use(name)
        self.rig(op="cartridge", id=fresh_cartridge())
        started = self.pen.session_start(run_ms=run_ms)
        self.wait(lambda: self.measure()["motor_on"], "motor on")
        self.wait_pen_ms(settle_ms)
        return started


def make_template(base: Path) -> Path:
    """A sterilised flash folder with an active profile (fast clock, to save wall time)."""
    tp = TargetPen(base, clock="fast")
    try:
        pen = tp.pen
        tp.wait_state("LOCKED", "READY")
        # A factory-fresh pen allows 0.5 mm (S16): its clinician opens the whole range first.
        from penctl import clinical
        key = clinical.new_key_file(base / "clinician.penkey")
        clinical.provision_key(pen, key)
        clinical.set_ceiling(pen, 2.5, key)
        pen.profile_push([{"name": PROFILE, "depth_mm": 1.0, "stroke_hz": 100, "max_session_s": 600}])
        pen.profile_use(PROFILE)
        pen.sterilise(wait=True)
        assert pen.state() == "READY"
    finally:
        tp.close()
    return tp.state
