"""Telemetry rate and gaps; output that the host stops reading (S15); Ctrl-C stops the
motor first, then the needles retract (S9), and the session's end is recorded (S14)."""
import threading
import time

import pytest

from hil_tests.conftest import need_rig
from hil_tests.helpers import last_log, start_session, wait_for, wait_motor, wait_pen_seconds, wait_state
from hil_tests.rig import RigError
from penctl.errors import PenctlError

TELEMETRY_HZ = 50
SECONDS = 60
REACTION_MS = 2.0           # S4: motor off within 2 ms of the event
CTRL_C_MS = 50.0            # S9: Ctrl-C -> motor off, bounded by core 0's longest step
RETRACTED_MM = 0.05         # S9: needles at <= 0.05 mm ...
RETRACT_MS = 1500.0         # ... within 1.5 s
HOLD_MS = 20000             # the host stops reading for 20 s of pen time


def test_telemetry_60s_at_50hz_no_gaps(pen, recorder):
    started = time.monotonic()
    # A lease covering the window: a fast- or target-clock pen in a lab streams faster than
    # pyserial's RFC 2217 client reads (docs/lab.md), so renewals would arrive after the pen had
    # ended the lease. Leases and their renewal are tested in tests/test_penctl_fresh.py.
    result = pen.telemetry(SECONDS, lease=min(3000, (SECONDS + 5) * TELEMETRY_HZ))
    wall = time.monotonic() - started
    rows = result["rows"]
    span = rows[-1]["t_s"] - rows[0]["t_s"]
    # `telemetry --seconds N` records N s of pen time from its subscription (docs/design.md §3.4):
    # the first sample comes within one period of the start.
    recorder.check("telemetry span (pen time)", round(span, 3), "s", SECONDS - 1 / TELEMETRY_HZ, SECONDS + 0.1)
    recorder.check("telemetry samples", len(rows), "samples", SECONDS * TELEMETRY_HZ - 1, SECONDS * TELEMETRY_HZ + 2)
    recorder.check("telemetry rate (pen time)", round((len(rows) - 1) / span, 3), "Hz",
                   TELEMETRY_HZ * 0.99, TELEMETRY_HZ * 1.01)
    recorder.check("telemetry sample gaps", result["sample_gaps"], "samples", 0, 0)
    recorder.check("event sequence gaps", result["event_gaps"], "events", 0, 0)
    recorder.check("telemetry wall time", round(wall, 2), "s", 0, SECONDS * 1.5)


def _hold(rig, ms):
    request = getattr(rig, "request", None)
    if request is None:
        need_rig(rig.measure)
        pytest.skip("this rig cannot hold the pen's output (hold_output)")
    return request(op="hold_output", ms=ms)


def test_s15_held_output_drops_telemetry_not_the_interlocks(pen, rig, recorder):
    need_rig(rig.measure)
    start_session(pen, rig)
    wait_motor(rig, True)
    wait_pen_seconds(pen, 0.5)
    pen.telemetry_on(True)
    before = pen.info()["counters"]["tm_dropped"]
    _hold(rig, HOLD_MS)
    # An answer that cannot go out: the pen's core 0 blocks in its write, as on rp2.
    blocked = threading.Thread(target=lambda: _quiet(pen.request, "ping"), daemon=True)
    blocked.start()
    time.sleep(0.02)
    injected = rig.inject("overtemp")
    measured = wait_for(lambda: (lambda m: m if not m["motor_on"] else None)(rig.measure()), 30, "motor off")
    held = measured.get("output_held")
    blocked.join(30)
    wait_for(lambda: not rig.measure().get("output_held"), 60, "the hold to end")
    recorder.check("output held when the fault came", int(bool(held)), "bool", 1, 1)
    recorder.check("overtemp with the output held: motor off after injection",
                   round((measured["motor_off_us"] - injected["inject_us"]) / 1000, 3), "ms", 0, REACTION_MS)
    dropped = pen.info()["counters"]["tm_dropped"] - before
    recorder.check("telemetry samples dropped while the output was held", dropped, "samples", 1, None)
    _quiet(pen.telemetry_on, False)
    rig.clear_injections()
    wait_pen_seconds(pen, 0.2)
    pen.fault_clear("HIL: held-output test")


def _quiet(call, *args):
    try:
        return call(*args)
    except PenctlError:
        return None


def _plant(rig):
    try:
        return rig.measure()
    except RigError:
        return None                   # the firmware is just stopping: ask again


def _motor_off(rig):
    plant = _plant(rig)
    return plant if plant is not None and not plant["motor_on"] else None


def _retracted_or_final(target, rig):
    """The plant once the needles are back (S9), or, on a virtual pen, the state the firmware
    left when it stopped (its REPL runs: nothing moves any more, retracted or not)."""
    plant = _plant(rig)
    if plant is None:
        return None
    if plant.get("depth_um") is not None and plant["depth_um"] <= RETRACTED_MM * 1000:
        return plant
    if target.vpen is not None and target.vpen.status().get("mode") == "repl":
        return plant
    return None


def test_s9_ctrl_c_stops_the_motor(target, pen, rig, recorder):
    need_rig(rig.measure)
    start_session(pen, rig)
    wait_motor(rig, True)
    wait_pen_seconds(pen, 1.0)
    pen.link._write(b"\x03")                      # what mpremote sends to break in
    measured = wait_for(lambda: _motor_off(rig), 10, "motor off after Ctrl-C")
    recorder.check("motor powered after Ctrl-C", int(measured["motor_on"]), "bool", 0, 0)
    measured = wait_for(lambda: _retracted_or_final(target, rig), 10, "needles retracted after Ctrl-C")
    assert "interrupt_us" in measured, "the rig does not report when the firmware learned of the interrupt"
    recorder.check("Ctrl-C: motor off after the interrupt",
                   round((measured["motor_off_us"] - measured["interrupt_us"]) / 1000, 3), "ms", 0, CTRL_C_MS)
    recorder.check("Ctrl-C: needle depth after the retraction", measured["depth_um"] / 1000, "mm", 0, RETRACTED_MM)
    if "endstop_us" in measured:
        recorder.check("Ctrl-C: needles back within",
                       round((measured["endstop_us"] - measured["motor_off_us"]) / 1000, 1), "ms", 0, RETRACT_MS)
    pen.link._write(b"\x04")                      # soft reset at the REPL: the firmware boots again
    pen.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            handle = target.connect(timeout=2.0)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        assert wait_state(handle, ("LOCKED", "READY", "FAULT")) == "LOCKED"
        entry = last_log(handle, "session")
        # S14: the true end, duration and strokes of a session ended by Ctrl-C
        assert entry["end"] == "CTRL_C", entry
        recorder.check("Ctrl-C: recorded session duration", entry["duration_s"], "s", 1.0, None)
        recorder.check("Ctrl-C: recorded strokes", entry["strokes"], "strokes", 90, None)
    finally:
        handle.close()
