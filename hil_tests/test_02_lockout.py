"""Sterilisation lockout and cartridges (S5, S6, S8)."""
import pytest

from hil_tests.conftest import need_rig
from hil_tests.helpers import (
    fresh_cartridge, last_log, make_ready, recover, start_session, use_profile, wait_for, wait_motor,
    wait_state,
)
from penctl.errors import PenRefused


def test_s5_cycle_aborted_by_lid_open_stays_locked(pen, rig, recorder):
    need_rig(rig.measure)
    recover(pen, rig)
    if pen.state() == "READY":
        # consume an earlier unlock so the abort is visible as LOCKED
        use_profile(pen)
        rig.cartridge(fresh_cartridge())
        pen.session_start()
        pen.session_stop()
        wait_state(pen, "LOCKED")
    pen.sterilise(wait=False)
    wait_for(lambda: rig.measure()["uv_on"], 30, "UV on")
    rig.inject("lid_open")
    measured = rig.measure()
    wait_state(pen, "LOCKED")
    assert not rig.measure()["uv_on"]
    status = pen.sterilise_status()
    assert status["result"] == "aborted" and status["reason"] == "LID_OPEN"
    assert pen.info()["unlocked"] is False
    rig.clear_injections()
    with pytest.raises(PenRefused) as refused:
        pen.session_start()
    assert refused.value.code == "LOCKED"
    recorder.check("UV on after lid opened", int(measured["uv_on"]), "bool", 0, 0)


def test_s5_completed_cycle_allows_exactly_one_session(pen, rig):
    need_rig(rig.measure)
    start_session(pen, rig)
    pen.session_stop()
    assert wait_state(pen, ("LOCKED", "FAULT")) == "LOCKED"
    rig.cartridge(fresh_cartridge())
    with pytest.raises(PenRefused) as refused:
        pen.session_start()
    assert refused.value.code == "LOCKED"


def test_s6_used_cartridge_refused(pen, rig):
    need_rig(rig.measure)
    used = start_session(pen, rig)
    pen.session_stop()
    wait_state(pen, "LOCKED")
    make_ready(pen, rig)
    rig.cartridge(used)
    with pytest.raises(PenRefused) as refused:
        pen.session_start()
    assert refused.value.code == "CARTRIDGE_USED"
    assert pen.state() == "READY"        # refusal changed nothing


def test_s6_no_cartridge_refused(pen, rig):
    need_rig(rig.measure)
    use_profile(pen)
    make_ready(pen, rig)
    rig.cartridge(None)
    with pytest.raises(PenRefused) as refused:
        pen.session_start()
    assert refused.value.code == "NO_CARTRIDGE"
    assert pen.state() == "READY"


def test_s6_cartridge_removal_stops_motor(pen, rig, recorder):
    need_rig(rig.measure)
    start_session(pen, rig)
    wait_motor(rig, True)
    injected = rig.inject("cartridge_out")
    wait_state(pen, ("LOCKED", "FAULT"))
    measured = rig.measure()
    assert not measured["motor_on"]
    # S6: the motor stops within 2 ms of pen time of the removal
    recorder.check("motor off after cartridge removal",
                   round((measured["motor_off_us"] - injected["inject_us"]) / 1000, 3), "ms", 0, 2.0)
    entry = last_log(pen, "session")
    assert entry["end"] == "CARTRIDGE_OUT"


def test_s8_session_stops_at_max_session_s(pen, rig, recorder):
    need_rig(rig.measure)
    start_session(pen, rig, max_session_s=10)
    assert wait_state(pen, ("LOCKED", "FAULT"), timeout_s=120) == "LOCKED"
    entry = last_log(pen, "session")
    assert entry["end"] == "TIME_LIMIT"
    recorder.check("session duration at max_session_s=10", entry["duration_s"], "s", 9.99, 10.01)
    assert not rig.measure()["motor_on"]


@pytest.mark.parametrize("fault,reason", [("uv_sensor_stuck", "UV_SENSOR_STUCK"), ("uv_led_dead", "UV_LED_DEAD")])
def test_s12_uv_fault_aborts_the_cycle_and_the_pen_stays_locked(pen, rig, recorder, fault, reason):
    # S12: a dark reading with the LED off (a stuck sensor or analogue switch fails it) and
    # a reading with it on (a dead LED fails it): the cycle aborts, naming the cause.
    from hil_tests.test_04_faults import inject
    need_rig(rig.measure)
    recover(pen, rig)
    inject(rig, fault)
    try:
        with pytest.raises(PenRefused) as refused:
            pen.sterilise(wait=True)
        assert refused.value.code == reason
        status = pen.sterilise_status()
        recorder.check("%s: cycle result" % fault, int(status["result"] == "aborted"), "aborted", 1, 1)
        assert status["reason"] == reason and pen.state() == "LOCKED"
        assert pen.info()["unlocked"] is False
        assert not rig.measure()["uv_on"]
    finally:
        rig.clear_injections()
