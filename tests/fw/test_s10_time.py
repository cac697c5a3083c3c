# S10: confirmations, timeouts, ramps, the session limit and the UV dose use elapsed pen
# time with wrap-safe arithmetic; they hold at any uptime, tested across 2**30 ms (12.4
# days) and 2**31 ms (24.9 days) of pen time, with the microsecond clock wrapping every
# 2**30 us as the RP2040's does (both wraps coincide there: 2**30 ms = 1000 * 2**30 us).
# Every integer the control core keeps stays below 2**30 in magnitude (the RP2040's
# small-int limit: beyond it each use allocates). Numbers from docs/design.md §2.1.
#
# The microsecond clock period comes from PEN_TICKS_PERIOD (pen/compat.py):
# tests/test_on_micropython.py runs this module with MP_ENV; on CPython each test runs
# itself again in a child interpreter that has it.
import fwtest
import penfix
from pen import compat

PEN_TICKS_PERIOD = 1 << 30         # the RP2040's ticks_us() wraps here
MP_ENV = {"PEN_TICKS_PERIOD": str(PEN_TICKS_PERIOD)}
SMALL_INT = 1 << 30
MS_2_30 = 1 << 30
MS_2_31 = 1 << 31
SESSION_S = 10                     # max_session_s
LIMIT_TOL_MS = 10                  # S8: ends at max_session_s within 10 ms
REACTION_US = 2000                 # S4: motor off within 2 ms of the event


def _pen_clock(test_name):
    """True when this interpreter's µs clock wraps like the pen's; on CPython otherwise the
    test runs in a child interpreter with it (and passes only if it passes there)."""
    if compat.TICKS_PERIOD == PEN_TICKS_PERIOD:
        return True
    if fwtest.on_micropython():
        fwtest.skip("run with PEN_TICKS_PERIOD=%d (tests/test_on_micropython.py does)" % PEN_TICKS_PERIOD)
    import os
    import subprocess
    import sys
    env = dict(os.environ, PEN_TICKS_PERIOD=str(PEN_TICKS_PERIOD))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__ + "::" + test_name], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return False


def _ints_of(obj, path, found):
    for name in sorted(obj.__dict__):
        value = obj.__dict__[name]
        if type(value) is int:
            found.append((path + name, value))
        elif type(value) in (list, tuple) or type(value).__name__ == "array":
            for index in range(len(value)):
                if type(value[index]) is int:
                    found.append(("%s%s[%d]" % (path, name, index), value[index]))


def _assert_small_ints(pen):
    found = []
    _ints_of(pen.ctl, "ctl.", found)
    _ints_of(pen.app.loop, "loop.", found)
    big = [(name, value) for name, value in found if not -SMALL_INT <= value < SMALL_INT]
    assert not big, big
    assert len(found) > 100            # the ring and the inputs are in the scan
    return len(found)


def _session_across(boundary_ms, tag):
    # Start 5 s before the boundary: the session's 10 s cross it.
    start_s = boundary_ms // 1000 - 5
    pen = penfix.ready_pen(max_session_s=SESSION_S, cartridge="CA%014X" % boundary_ms, tag=tag,
                           time_start_s=start_s)
    reply = pen.request("session_start")
    assert reply["ok"], reply
    started_ms = reply["t_ms"]
    assert started_ms < boundary_ms
    tm = pen.request("telemetry", on=True, lease=3000)
    assert tm["ok"], tm
    samples = []
    ends = []
    for _ in range(SESSION_S + 3):
        pen.run_ms(1000)
        events = pen.take_events()
        samples.extend([(e["s"][0], e["n"]) for e in events if e["ev"] == "tm"])
        ends.extend([e for e in events if e["ev"] == "session_end"])
        if pen.state() == "LOCKED":
            break
    assert pen.state() == "LOCKED" and len(ends) == 1
    end = ends[0]
    off_ms = pen.board.motor_off_us // 1000
    print("S10 across %d ms: session from %d ms, motor off at %d ms (%d ms), %s"
          % (boundary_ms, started_ms, off_ms, off_ms - started_ms, end))
    assert end["reason"] == "TIME_LIMIT", end
    assert off_ms > boundary_ms
    assert SESSION_S * 1000 - LIMIT_TOL_MS <= off_ms - started_ms <= SESSION_S * 1000 + LIMIT_TOL_MS
    assert abs(end["duration_ms"] - SESSION_S * 1000) <= LIMIT_TOL_MS
    # telemetry: full pen time on the wire, 50 Hz without a gap across the boundary
    times = [t for t, n in samples]
    assert times[0] < boundary_ms < times[-1]
    steps = [times[i + 1] - times[i] for i in range(len(times) - 1)]
    assert min(steps) == max(steps) == 20, (min(steps), max(steps))
    assert [n for t, n in samples] == list(range(samples[0][1], samples[0][1] + len(samples)))
    assert _assert_small_ints(pen)
    return pen


def _fault_across(boundary_ms, tag):
    start_s = boundary_ms // 1000 - 2
    pen = penfix.ready_pen(max_session_s=60, cartridge="CB%014X" % boundary_ms, tag=tag, time_start_s=start_s)
    assert pen.request("session_start")["ok"]
    pen.run_until(lambda: pen.board._core0_us // 1000 > boundary_ms + 500, 5000)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    assert pen.board.inject("overtemp")
    pen.run_until(lambda: pen.board.duty_bp == 0, 20)
    reaction_us = pen.board.motor_off_us - pen.board.inject_us
    print("S10 across %d ms: over-temperature, motor off %d us after the event" % (boundary_ms, reaction_us))
    assert 0 < reaction_us <= REACTION_US
    assert pen.request("info")["fault"] == "OVERTEMP"
    fault = pen.events("fault")[-1]
    assert boundary_ms < fault["t_ms"] <= pen.board.motor_off_us // 1000 + 1
    _assert_small_ints(pen)


def test_s10_session_limit_and_telemetry_across_2_30_ms():
    if _pen_clock("test_s10_session_limit_and_telemetry_across_2_30_ms"):
        _session_across(MS_2_30, "w30")


def test_s10_session_limit_and_telemetry_across_2_31_ms():
    if _pen_clock("test_s10_session_limit_and_telemetry_across_2_31_ms"):
        _session_across(MS_2_31, "w31")


def test_s10_fault_reaction_across_2_30_ms():
    if _pen_clock("test_s10_fault_reaction_across_2_30_ms"):
        _fault_across(MS_2_30, "f30")


def test_s10_fault_reaction_across_2_31_ms():
    if _pen_clock("test_s10_fault_reaction_across_2_31_ms"):
        _fault_across(MS_2_31, "f31")


def test_s10_sterilisation_dose_across_2_31_ms():
    # The UV dose and the cycle's timeout are elapsed time too: a cycle that crosses the
    # boundary takes the same pen time as one that does not.
    if not _pen_clock("test_s10_sterilisation_dose_across_2_31_ms"):
        return
    pen = fwtest.Pen(fwtest.fresh_dir("s31"), time_start_s=MS_2_31 // 1000 - 30)
    assert pen.boot() == "LOCKED"
    assert pen.request("sterilise_start")["ok"]
    start_us = pen.now_us()
    pen.run_until(lambda: pen.state() != "STERILISING", 100000)
    cycle_ms = (pen.now_us() - start_us) // 1000
    tpl = penfix.sterilised_template()
    print("S10 cycle across 2**31 ms: %d ms (the same cycle from 0: %d ms)" % (cycle_ms, tpl["cycle_ms"]))
    assert pen.state() == "READY"
    assert abs(cycle_ms - tpl["cycle_ms"]) <= 5
    _assert_small_ints(pen)


def test_s10_nothing_grows_past_small_ints_in_a_long_idle():
    # An idle pen for a while past 2**31 ms: counters and stamps stay small.
    if not _pen_clock("test_s10_nothing_grows_past_small_ints_in_a_long_idle"):
        return
    pen = fwtest.Pen(fwtest.fresh_dir("idle"), time_start_s=MS_2_31 // 1000 + 3)
    pen.boot()
    pen.run_ms(5000)
    assert pen.state() == "LOCKED"
    assert pen.request("info")["counters"]["uptime_ms"] >= MS_2_31 + 3000
    _assert_small_ints(pen)
    # the control core's ms counter is pen time wrapped below 2**30, in step with core 0's
    assert abs(pen.ctl.now_ms - (pen.board._core0_us // 1000) % SMALL_INT) <= 1
