"""Telemetry rate and gaps; Ctrl-C stops the motor (S9)."""
import time

from hil_tests.conftest import need_rig
from hil_tests.helpers import start_session, wait_for, wait_motor, wait_state
from hil_tests.rig import RigError

TELEMETRY_HZ = 50
SECONDS = 60


def test_telemetry_60s_at_50hz_no_gaps(pen, recorder):
    started = time.monotonic()
    result = pen.telemetry(SECONDS)
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


def _motor_stopped(rig):
    try:
        plant = rig.measure()
    except RigError:
        return None               # the firmware is just stopping: ask again
    return plant if not plant["motor_on"] else None


def test_s9_ctrl_c_stops_the_motor(target, pen, rig, recorder):
    need_rig(rig.measure)
    start_session(pen, rig)
    wait_motor(rig, True)
    pen.link._write(b"\x03")                      # what mpremote sends to break in
    measured = wait_for(lambda: _motor_stopped(rig), 5, "motor off after Ctrl-C")
    recorder.check("motor powered after Ctrl-C", int(measured["motor_on"]), "bool", 0, 0)
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
    finally:
        handle.close()
