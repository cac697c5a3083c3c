"""The world around the virtual pen (cartridge with its used mark, dock lid) and the plant
state the firmware leaves behind (docs/design.md §5.3).

A stand-in firmware records every rig request it gets, so the tests see exactly what the
supervisor forwards and replays after a start; the last test runs the real firmware.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from test_simpen import open_port, read_until, rig

from pensim.supervisor import VirtualPen

# A MicroPython main.py: a plant that records the rig requests it gets and answers `measure`
# with its state, the log, and a key no fixed list would know. Console commands: "mark" writes
# the used mark on the cartridge and the plant file (as the sim board does when the pen marks a
# cartridge), "mark-quiet" only changes the state. Ctrl-C writes the final plant state.
RECORDER_MAIN = r'''
import json, os, select, sys, time
out = sys.stdout.buffer
rin = open(os.getenv("PEN_SIM_RIG_IN"), "rb")
rout = open(os.getenv("PEN_SIM_RIG_OUT"), "wb")
plant_file = os.getenv("PEN_SIM_PLANT_FILE")
rig_poll = select.poll()
rig_poll.register(rin, select.POLLIN)
con_poll = select.poll()
con_poll.register(sys.stdin, select.POLLIN)
state = {"cartridge": None, "cartridge_used": False, "lid_closed": True}
log = []

def plant():
    d = {"ok": True, "motor_on": True, "uv_on": False, "hz": 150, "depth_um": 1234,
         "recorder_only_key": 42, "strokes": 7, "log": log}
    d.update(state)
    return d

def write_plant():
    with open(plant_file, "w") as f:
        f.write(json.dumps(plant()))

def answer(req):
    log.append(req)
    op = req.get("op")
    if op == "cartridge":
        state["cartridge"] = req.get("id")
        state["cartridge_used"] = req.get("used", False)
    elif op == "lid":
        state["lid_closed"] = req.get("closed")
    elif op == "inject" and req.get("fault") == "lid_open":
        state["lid_closed"] = False
    elif op == "inject" and req.get("fault") == "cartridge_out":
        state["cartridge"] = None
    elif op == "clear_injections":
        state["lid_closed"] = True
    elif op == "measure":
        return plant()
    return {"ok": True, "op": op}

out.write(b"recorder: boot\n")
line = b""
try:
    while True:
        while rig_poll.poll(0):
            rout.write((json.dumps(answer(json.loads(rin.readline()))) + "\n").encode())
        while con_poll.poll(0):
            c = sys.stdin.buffer.read(1)
            if c in (b"\r", b"\n"):
                if line in (b"mark", b"mark-quiet"):
                    state["cartridge_used"] = True
                    if line == b"mark":
                        write_plant()
                    out.write(b"recorder: " + line + b"\n")
                line = b""
            else:
                line += c
        time.sleep_ms(5)
except KeyboardInterrupt:
    write_plant()
    out.write(b"recorder: stopped\n")
'''

# Fault names of docs/design.md §5.3, written here from the specification.
DESIGN_FAULTS = ("stall", "overcurrent", "overtemp", "tach_loss", "depth_jam", "cartridge_out", "lid_open",
                 "low_battery", "uv_sensor_stuck", "uv_led_dead", "motor_stuck_on")


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vpen")  # short: AF_UNIX paths are limited to ~100 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rec_pen(tmp_path, sockdir):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(RECORDER_MAIN)
    with VirtualPen(blank=True, state_dir=flash, control=sockdir / "rig.sock", clock="fast") as pen:
        pen.wait_for(lambda s: s["firmware"])
        yield pen


def log_of(pen: VirtualPen) -> list[dict]:
    """The rig requests the running recorder got, without the measure that asks for them."""
    rep = pen.measure()
    assert rep["ok"] and rep["firmware"], rep
    return rep["log"][:-1]


def power_cycle(pen: VirtualPen) -> None:
    assert pen.power_cut()["ok"]
    assert pen.power_on()["ok"]
    pen.wait_for(lambda s: s["firmware"])


def stop_firmware(pen: VirtualPen) -> None:
    with open_port(pen) as ser:
        ser.write(b"\x03")
        read_until(ser, b">>> ")
    pen.wait_for(lambda s: s["mode"] == "repl")


# ---- forwarding -----------------------------------------------------------------------------

def test_plant_ops_forwarded_as_sent(rec_pen):
    reqs = [{"op": "cartridge", "id": "0123456789ABCDEF", "used": True},
            {"op": "lid", "closed": False},
            {"op": "hold_output", "ms": 250},
            {"op": "clear_injections"}]
    for req in reqs:
        assert rec_pen.rig_request(req)["ok"]
    assert log_of(rec_pen) == reqs


def test_every_fault_of_the_design_is_forwarded(rec_pen):
    replies = rig(rec_pen.control, *({"op": "inject", "fault": f} for f in DESIGN_FAULTS))
    assert all(r["ok"] for r in replies), replies
    assert log_of(rec_pen) == [{"op": "inject", "fault": f} for f in DESIGN_FAULTS]


BAD_REQUESTS = [
    {"op": "inject", "fault": "gremlins"},
    {"op": "inject"},
    {"op": "cartridge"},
    {"op": "cartridge", "id": 1234},
    {"op": "cartridge", "id": "ABCD", "used": "yes"},
    {"op": "lid"},
    {"op": "lid", "closed": 1},
    {"op": "hold_output"},
    {"op": "hold_output", "ms": -1},
    {"op": "hold_output", "ms": 600001},     # the design's longest hold is 10 min
    {"op": "hold_output", "ms": 1.5},
    {"op": "hold_output", "ms": True},
    {"op": "reboot"},
    {"op": None},
    {},
]


@pytest.mark.parametrize("via", ["socket", "python"])
def test_malformed_requests_are_refused_and_not_forwarded(rec_pen, via):
    if via == "socket":
        replies = rig(rec_pen.control, *BAD_REQUESTS, b"[1, 2]\n", b"{not json\n")
    else:
        replies = [rec_pen.rig_request(req) for req in BAD_REQUESTS]
    for req, rep in zip(BAD_REQUESTS, replies, strict=False):
        assert rep["ok"] is False and rep["error"], (req, rep)
    assert log_of(rec_pen) == []                        # nothing reached the plant
    st = rec_pen.status()
    assert st["cartridge"] is None and st["lid_closed"] is True   # nor the world


def test_without_firmware_world_ops_are_kept_plant_ops_refused(rec_pen):
    stop_firmware(rec_pen)
    assert rec_pen.cartridge("00000000000000AA", used=True) == {"ok": True, "powered": True, "firmware": False}
    assert rec_pen.lid(False)["ok"]
    assert rec_pen.inject("stall") == {"ok": False, "error": "firmware not running", "powered": True}
    assert rec_pen.hold_output(100) == {"ok": False, "error": "firmware not running", "powered": True}
    st = rec_pen.status()
    assert st["cartridge"] == "00000000000000AA" and st["cartridge_used"] is True and st["lid_closed"] is False
    rec_pen.power_cut()
    assert rec_pen.hold_output(100) == {"ok": False, "error": "firmware not running", "powered": False}


# ---- the world across starts ----------------------------------------------------------------

def test_world_replayed_after_a_power_cut(rec_pen):
    rec_pen.cartridge("00000000000000C1", used=True)
    rec_pen.lid(False)
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000C1", "used": True},
                               {"op": "lid", "closed": False}]
    # closing the lid and a fresh cartridge, also while the pen is off
    rec_pen.power_cut()
    rec_pen.lid(True)
    rec_pen.cartridge("00000000000000C2")
    rec_pen.power_on()
    rec_pen.wait_for(lambda s: s["firmware"])
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000C2", "used": False}]


def test_injected_lid_open_and_cartridge_out_are_the_world(rec_pen):
    rec_pen.cartridge("00000000000000C3")
    assert rec_pen.inject("lid_open")["ok"] and rec_pen.inject("cartridge_out")["ok"]
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": None, "used": False}, {"op": "lid", "closed": False}]
    assert rec_pen.clear_injections()["ok"]             # closes the lid
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": None, "used": False}]


def test_used_mark_written_by_the_pen_survives_a_power_cut(rec_pen):
    rec_pen.cartridge("00000000000000D1")
    with open_port(rec_pen) as ser:
        ser.write(b"mark\r")
        read_until(ser, b"recorder: mark\n")
    power_cycle(rec_pen)   # SIGKILL: only the plant file the sim board wrote tells of the mark
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000D1", "used": True}]
    assert rec_pen.status()["cartridge_used"] is True


def test_used_mark_seen_in_a_measure_survives_a_power_cut(rec_pen):
    rec_pen.cartridge("00000000000000D2")
    with open_port(rec_pen) as ser:
        ser.write(b"mark-quiet\r")
        read_until(ser, b"recorder: mark-quiet\n")
    assert rec_pen.measure()["cartridge_used"] is True
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000D2", "used": True}]


def test_used_mark_stays_with_its_cartridge_when_another_is_inserted(rec_pen):
    # The mark is in cartridge D3's own memory: swapping in D4, a power cut, and D3 back (the
    # rig saying nothing of a mark) must not make D3 fresh.
    rec_pen.cartridge("00000000000000D3")
    with open_port(rec_pen) as ser:
        ser.write(b"mark\r")
        read_until(ser, b"recorder: mark\n")
    rec_pen.cartridge("00000000000000D4")
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000D4", "used": False}]
    rec_pen.cartridge("00000000000000D3")
    power_cycle(rec_pen)
    assert log_of(rec_pen) == [{"op": "cartridge", "id": "00000000000000D3", "used": True}]
    assert rec_pen.status()["cartridge_used"] is True


# ---- the plant state the firmware leaves -----------------------------------------------------

def test_measure_at_the_repl_reports_every_key_the_firmware_wrote(rec_pen):
    rec_pen.cartridge("00000000000000E1")
    stop_firmware(rec_pen)
    meas = rec_pen.measure()
    assert meas["ok"] and meas["powered"] is True and meas["firmware"] is False
    # every key of the recorder's final state, including one no fixed list knows
    assert meas["recorder_only_key"] == 42 and meas["strokes"] == 7
    assert meas["motor_on"] is True and meas["hz"] == 150 and meas["depth_um"] == 1234
    assert meas["log"][0] == {"op": "cartridge", "id": "00000000000000E1", "used": False}
    # the world as it is now, not as the firmware left it
    rec_pen.lid(False)
    rec_pen.cartridge(None)
    meas = rec_pen.measure()
    assert meas["lid_closed"] is False and meas["cartridge"] is None and meas["recorder_only_key"] == 42
    # a power cut stops what the firmware left running
    rec_pen.power_cut()
    meas = rec_pen.measure()
    assert meas["powered"] is False and meas["motor_on"] is False and "recorder_only_key" not in meas


def test_real_firmware_final_plant_has_every_measured_key(tmp_path):
    # The sim board writes its final plant state at exit; at the REPL, measure reports all of it.
    with VirtualPen(state_dir=tmp_path / "flash", clock="fast") as pen:
        pen.wait_for(lambda s: s["firmware"])
        running = pen.measure()
        assert running["ok"] and running["firmware"] is True, running
        stop_firmware(pen)
        at_repl = pen.measure()
    assert at_repl["firmware"] is False and at_repl["powered"] is True
    missing = set(running) - set(at_repl)
    assert not missing, f"keys the firmware measured but the REPL-time measure lost: {sorted(missing)}"


# A MicroPython main.py that takes a while to stop after Ctrl-C, with the motor still on, and
# never answers the rig channel.
SLOW_STOP_MAIN = r'''
import json, os, sys, time
try:
    sys.stdout.write("slow-stop: ready\n")   # Ctrl-C before this line would miss the handler
    while True:
        time.sleep_ms(5)
except KeyboardInterrupt:
    time.sleep_ms(400)
    with open(os.getenv("PEN_SIM_PLANT_FILE"), "w") as f:
        f.write(json.dumps({"ok": True, "motor_on": True, "hz": 120, "slow_stop": True}))
'''


def test_measure_while_the_firmware_stops_waits_for_the_truth(tmp_path):
    # Between Ctrl-C and the REPL the plant still runs: a measure then must not report the
    # motor off by default, but what the plant says (here: what it leaves when it exits).
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(SLOW_STOP_MAIN)
    with VirtualPen(blank=True, state_dir=flash, clock="fast") as pen:
        pen.wait_for(lambda s: s["firmware"])
        with open_port(pen) as ser:
            read_until(ser, b"slow-stop: ready")   # on a loaded machine the interpreter starts late
            ser.write(b"\x03")
            pen.wait_for(lambda s: s["mode"] == "stopping", timeout=2)
            meas = pen.measure()
            assert meas["ok"] and meas["slow_stop"] is True and meas["motor_on"] is True and meas["hz"] == 120
            assert meas["powered"] is True and meas["firmware"] is False
            read_until(ser, b">>> ")
