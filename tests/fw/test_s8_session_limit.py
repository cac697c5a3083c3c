# S8: a session stops by itself at its profile's max_session_s (10-1800 s).
# Numbers from docs/design.md §2.1 / 4. Runs on CPython and MicroPython.
import fwtest
import penfix


def _profile(seconds, name="t"):
    return {"name": name, "depth_um": 500, "stroke_hz": 100, "max_session_s": seconds}


def test_s8_duration_boundaries():
    pen = fwtest.Pen()
    for seconds in (10, 11, 600, 1799, 1800):
        reply = pen.request("profile_put", profile=_profile(seconds, "t%d" % seconds))
        assert reply["ok"], (seconds, reply)
    for seconds in (9, 0, -10, 1801, 3600, 10.0, 60.5, "60", None, False):
        reply = pen.request("profile_put", profile=_profile(seconds))
        assert reply["ok"] is False and reply["code"] == "DURATION_RANGE", (seconds, reply)
        assert reply["field"] == "max_session_s"


def test_s8_session_stops_at_max_session_s():
    pen = penfix.ready_pen(max_session_s=10, cartridge="CA08010000000000")
    assert pen.request("session_start")["ok"]
    started = pen.ctl.now_ms
    pen.run_ms(9990)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    ticks = pen.run_until(lambda: pen.board.duty_bp == 0, 100)
    stopped_ms = pen.ctl.now_ms - started
    print("S8 max_session_s=10: motor off %d ms after session start" % stopped_ms)
    assert 10000 - 1 <= stopped_ms <= 10000 + 1
    assert ticks >= 9
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    end = pen.events("session_end")
    assert len(end) == 1 and end[0]["reason"] == "TIME_LIMIT"
    assert 9999 <= end[0]["duration_ms"] <= 10001 + 600     # incl. retracting the needles
    assert pen.board.carriage_um == 0
    session = [e for e in penfix.log_entries(pen) if e["kind"] == "session"][-1]
    assert session["end"] == "TIME_LIMIT" and session["max_session_s"] == 10


def test_s8_session_ends_at_the_run_ms_the_host_asked():
    # session_start's run_ms (docs/design.md §3.1): the pen ends the session itself, with S8's
    # precision, so a host that lags or dies cannot make it longer than asked.
    pen = penfix.ready_pen(max_session_s=600, cartridge="CA08020000000000")
    reply = pen.request("session_start", run_ms=2500)
    assert reply["ok"] and reply["limit_ms"] == 2500, reply
    started = pen.ctl.now_ms
    pen.run_ms(2490)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    pen.run_until(lambda: pen.board.duty_bp == 0, 100)
    stopped_ms = pen.ctl.now_ms - started
    assert 2500 - 1 <= stopped_ms <= 2500 + 1
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    end = pen.events("session_end")
    assert len(end) == 1 and end[0]["reason"] == "TIME_LIMIT"
    session = [e for e in penfix.log_entries(pen) if e["kind"] == "session"][-1]
    assert session["end"] == "TIME_LIMIT" and session["limit_ms"] == 2500 and session["max_session_s"] == 600


def test_s8_run_ms_beyond_the_profile_keeps_the_profile_limit():
    pen = penfix.ready_pen(max_session_s=10, cartridge="CA08030000000000")
    reply = pen.request("session_start", run_ms=20000)
    assert reply["ok"] and reply["limit_ms"] == 10000, reply
    started = pen.ctl.now_ms
    pen.run_ms(9990)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    pen.run_until(lambda: pen.board.duty_bp == 0, 100)
    assert 10000 - 1 <= pen.ctl.now_ms - started <= 10000 + 1


def test_s8_run_ms_out_of_range_is_refused_before_anything_changes():
    pen = penfix.ready_pen(max_session_s=600, cartridge="CA08040000000000")
    log_before = penfix.log_entries(pen)
    for bad in (0, -1, 1800001, 2.5, "100", True, [1000]):
        reply = pen.request("session_start", run_ms=bad)
        assert reply["ok"] is False and reply["code"] == "DURATION_RANGE", (bad, reply)
        assert pen.state() == "READY"
    assert penfix.log_entries(pen) == log_before
    # the unlock and the cartridge were not used up: the largest run_ms still starts it
    assert pen.request("session_start", run_ms=1800000)["ok"]
