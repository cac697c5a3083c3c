"""`penctl session stop` returns only when the session has ended (issue 9 item 4, docs/design.md §4):
motor off, needles retracted (depth <= 0.05 mm, S9), state LOCKED or FAULT, within --stop-timeout.
A 2.0 mm profile on the real clock: retracting takes 0.4 s of pen time (5 um per 1 ms step)."""

import pytest
from test_cli import ok, refused, rig, run, wait_motor, wait_state
from test_penctl_guard import unlocked_state

from pensim.supervisor import VirtualPen

DEEP_PROFILE = '[[profile]]\nname = "deep"\ndepth_mm = 2.0\nstroke_hz = 100\nmax_session_s = 1800\n'


@pytest.fixture
def deep_session(tmp_path):
    state = unlocked_state(tmp_path, DEEP_PROFILE, "deep")
    with VirtualPen(state_dir=state, clock="real") as pen:
        wait_state(pen, ("READY",))
        rig(pen, {"op": "cartridge", "id": "570BCAFE00000001"})
        ok(run("session", "start", port=pen.port))
        wait_motor(pen, True)
        yield pen


def test_stop_returns_once_the_session_has_ended(deep_session):
    pen = deep_session
    stopped = ok(run("session", "stop", port=pen.port))
    info = ok(run("info", port=pen.port))                        # straight after: it is over
    assert info["state"] == "LOCKED" and info["stroke_hz"] == 0 and info["depth_mm"] <= 0.05, info
    plant = rig(pen, {"op": "measure"})
    assert plant["motor_on"] is False and plant["depth_um"] <= 50, plant
    assert stopped["state"] == "LOCKED" and stopped["depth_mm"] <= 0.05
    assert stopped["session_end"]["reason"] == "STOPPED" and stopped["session_end"]["id"] == stopped["session"]
    status = ok(run("sterilise", "--no-wait", port=pen.port))    # not BUSY: the pen is free again
    assert status["state"] == "STERILISING"


def test_stop_no_wait_returns_at_once(deep_session):
    pen = deep_session
    stopped = ok(run("session", "stop", "--no-wait", port=pen.port))
    assert "session_end" not in stopped and "state" not in stopped
    wait_state(pen, ("LOCKED",))


def test_stop_that_is_not_confirmed_in_time_is_exit_3(deep_session):
    pen = deep_session
    result = run("session", "stop", "--stop-timeout", "0.001", port=pen.port)
    assert result.rc == 3, result
    assert "did not confirm the end" in result.stderr and "--stop-timeout" in result.stderr
    wait_state(pen, ("LOCKED",))
    refused(run("session", "stop", port=pen.port), "NOT_RUNNING")
