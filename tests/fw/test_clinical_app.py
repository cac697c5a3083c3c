# The clinical module inside the application (S16-S20; docs/clinical.md §7): the request table,
# info, the ceiling at profile put / use / session start, the order of session start (every
# check before anything is written; the cartridge's mark before the motor), the interval given
# back when the motor never ran, BUSY while a session or a cycle runs. Runs on CPython and on
# the MicroPython unix port, on the simulated board at the fast clock.
import clinicalfix
import penfix
from pen import control as c

T0 = clinicalfix.T0          # 2026-01-01 00:00:00 UTC
DAY_S = 86400


def _pen(cart="2D000000000000A1", days=0, depth_um=500, tag="ca"):
    pen = penfix.unlocked_pen(tag)
    reply = pen.request("profile_put", profile={"name": "crown", "depth_um": depth_um, "stroke_hz": 100,
                                                "max_session_s": 60, "min_interval_days": days})
    assert reply["ok"], reply
    assert pen.request("profile_use", name="crown")["ok"]
    pen.insert(cart)
    return pen


def _unchanged(pen, log_entries, cart):
    """A refused session start wrote nothing and moved nothing."""
    info = pen.request("info")
    assert info["state"] == "READY" and info["unlocked"] is True, info
    assert info["counters"]["log_entries"] == log_entries
    assert cart not in pen.app.rec.used
    assert not pen.board.cartridge_marked(cart)
    assert pen.board.duty_bp == 0


def _relock_with_a_cycle(pen):
    """Power the pen off and put back the lockout record of a completed cycle (the flash of
    penfix's sterilised template, as its other pens get it): a new unlock without the 60 s cycle."""
    pen.app.poll_events()           # core 0 handles the session's end before the power goes
    data = penfix.read_file(penfix.sterilised_template()["folder"] + "/data/lockout.rec")
    penfix.write_file(pen.folder + "/data/lockout.rec", data)
    pen.power_on()
    assert pen.boot() == "READY"


def test_s16_info_has_the_clinical_fields_never_the_key():
    pen = _pen()
    info = pen.request("info")
    assert info["depth_ceiling_um"] == 500 and info["key_provisioned"] is False
    assert info["wall_clock_set"] is False and "utc_s" not in info and info["auth_locked_s"] == 0
    clinicalfix.clinician_sets_ceiling(pen.request, pen.board.serial, 1000)
    info = pen.request("info")
    assert info["depth_ceiling_um"] == 1000 and info["key_provisioned"] is True
    assert clinicalfix.hexs(clinicalfix.KEY) not in repr(info)
    assert pen.request("clock_set", utc_s=T0)["ok"]
    assert pen.request("info")["utc_s"] >= T0


def test_s16_ceiling_on_profile_put_use_and_session_start():
    pen = _pen(cart="2D000000000000B1")
    clinicalfix.clinician_sets_ceiling(pen.request, pen.board.serial, 1000)
    assert pen.request("profile_put", profile={"name": "deep", "depth_um": 1000, "stroke_hz": 100,
                                               "max_session_s": 60})["ok"]
    assert pen.request("profile_use", name="deep")["ok"]
    clinicalfix.clinician_sets_ceiling(pen.request, pen.board.serial, 500)
    entries = pen.request("info")["counters"]["log_entries"]
    reply = pen.request("session_start")
    assert reply["code"] == "DEPTH_CEILING" and "0.5 mm" in reply["msg"], reply
    _unchanged(pen, entries, "2D000000000000B1")
    reply = pen.request("profile_use", name="deep")
    assert reply["code"] == "DEPTH_CEILING" and reply["field"] == "depth_mm"
    reply = pen.request("profile_put", profile={"name": "deeper", "depth_um": 550, "stroke_hz": 100,
                                                "max_session_s": 60})
    assert reply["code"] == "DEPTH_CEILING"
    names = [p["name"] for p in pen.request("profile_list")["profiles"]]
    assert "deeper" not in names
    assert pen.request("session_start", profile="crown")["ok"]     # 0.5 mm: at the ceiling


def test_s19_mark_written_before_the_motor_and_before_the_records():
    pen = _pen(cart="2D000000000000C1")
    assert not pen.board.cartridge_marked("2D000000000000C1")
    reply = pen.request("session_start")
    assert reply["ok"], reply
    assert pen.board.cartridge_marked("2D000000000000C1")        # marked when the start is answered ...
    assert pen.board.duty_bp == 0                                 # ... the motor not driven yet
    assert "2D000000000000C1" in pen.app.rec.used                 # the pen's own list too (S6)
    penfix.wait_motor_start(pen)


def test_s19_cartridge_marked_elsewhere_refused_and_nothing_written():
    pen = _pen(cart="2D000000000000D1")
    pen.board.set_cartridge_mark("2D000000000000D1")             # used on another pen
    entries = pen.request("info")["counters"]["log_entries"]
    reply = pen.request("session_start")
    assert reply["code"] == "CARTRIDGE_USED" and "own memory" in reply["msg"], reply
    info = pen.request("info")
    assert info["state"] == "READY" and info["unlocked"] is True
    assert info["counters"]["log_entries"] == entries and "2D000000000000D1" not in pen.app.rec.used


def test_s19_unreadable_memory_refused_and_nothing_written():
    pen = _pen(cart="2D000000000000E1")
    entries = pen.request("info")["counters"]["log_entries"]
    pen.board.inject("cartridge_memory_fail")
    reply = pen.request("session_start")
    assert reply["code"] == "CARTRIDGE_MEMORY", reply
    _unchanged(pen, entries, "2D000000000000E1")
    pen.board.clear_injections()
    assert pen.request("session_start")["ok"]


def test_s19_mark_that_cannot_be_written_refuses_with_nothing_written():
    pen = _pen(cart="2D000000000000F1")
    entries = pen.request("info")["counters"]["log_entries"]

    def mark_fails():
        raise OSError("1-Wire: copy scratchpad not confirmed")
    pen.board.cartridge_mark_used = mark_fails      # the read works, the write does not
    reply = pen.request("session_start")
    assert reply["code"] == "CARTRIDGE_MEMORY" and "2D000000000000F1" in reply["msg"], reply
    _unchanged(pen, entries, "2D000000000000F1")


def test_s6_pen_list_is_the_second_barrier():
    # A cartridge this pen used whose memory lost the mark (a counterfeit): the list still refuses it.
    pen = _pen(cart="2D00000000000101")
    assert pen.request("session_start")["ok"]
    assert pen.request("session_stop")["ok"]
    pen.run_until(lambda: pen.ctl.state == c.LOCKED, 5000)
    _relock_with_a_cycle(pen)
    pen.board.cartridge_marks.clear()
    pen.insert("2D00000000000101")
    reply = pen.request("session_start")
    assert reply["code"] == "CARTRIDGE_USED" and "on this pen" in reply["msg"], reply


def test_s18_too_soon_after_a_session_that_drove_the_motor():
    pen = _pen(cart="2D00000000000201", days=14)
    entries = pen.request("info")["counters"]["log_entries"]
    reply = pen.request("session_start")
    assert reply["code"] == "CLOCK_UNSET", reply
    _unchanged(pen, entries, "2D00000000000201")
    assert pen.request("clock_set", utc_s=T0)["ok"]
    assert pen.request("session_start")["ok"]
    penfix.wait_motor_start(pen)
    pen.run_ms(200)
    assert pen.request("session_stop")["ok"]
    pen.run_until(lambda: pen.ctl.state == c.LOCKED, 5000)
    _relock_with_a_cycle(pen)
    assert pen.request("clock_set", utc_s=T0 + 13 * DAY_S)["ok"]
    pen.insert("2D00000000000202")
    entries = pen.request("info")["counters"]["log_entries"]
    reply = pen.request("session_start")
    assert reply["code"] == "TOO_SOON" and "2026-01-15 00:00" in reply["msg"], reply
    _unchanged(pen, entries, "2D00000000000202")
    assert pen.request("clock_set", utc_s=T0 + 14 * DAY_S + 5)["ok"]
    assert pen.request("session_start")["ok"]


def test_s18_session_that_never_drove_the_motor_gives_its_interval_back():
    pen = _pen(cart="2D00000000000301", days=14)
    assert pen.request("clock_set", utc_s=T0)["ok"]
    assert pen.request("session_start")["ok"]
    assert pen.request("session_stop")["ok"]        # before the needles reached depth: no stroke
    pen.run_until(lambda: pen.ctl.state == c.LOCKED, 5000)
    assert pen.board.duty_bp == 0 and pen.board.strokes == 0
    _relock_with_a_cycle(pen)
    assert pen.request("clock_set", utc_s=T0 + 60)["ok"]
    pen.insert("2D00000000000302")
    assert pen.request("session_start")["ok"]      # not TOO_SOON: no treatment was given


def test_s17_clinical_ops_busy_while_a_session_runs():
    pen = _pen(cart="2D00000000000401")
    assert pen.request("session_start")["ok"]
    penfix.wait_motor_start(pen)
    for op, fields in (("auth_nonce", {}), ("clock_set", {"utc_s": T0}),
                       ("key_provision", {"key": clinicalfix.hexs(clinicalfix.KEY), "key_id": clinicalfix.KEY_ID})):
        reply = pen.request(op, **fields)
        assert reply["code"] == "BUSY", (op, reply)
    assert pen.request("audit_read")["ok"]          # reading the trail writes nothing
    assert pen.request("info")["key_provisioned"] is False


def test_s18_profiles_carry_min_interval_days_and_old_records_still_load():
    pen = _pen(cart="2D00000000000501", days=30)
    listed = pen.request("profile_list")["profiles"]
    assert [p["min_interval_days"] for p in listed if p["name"] == "crown"] == [30]
    reply = pen.request("profile_put", profile={"name": "far", "depth_um": 500, "stroke_hz": 100,
                                                "max_session_s": 60, "min_interval_days": 91})
    assert reply["code"] == "INTERVAL_RANGE" and reply["field"] == "min_interval_days"
    # a profiles record written before S18 (no min_interval_days) still loads: no interval
    from pen.store import Store
    Store(pen.folder + "/data").write("profiles", {"active": "old", "profiles": [
        {"name": "old", "depth_um": 500, "stroke_hz": 100, "max_session_s": 60}]})
    pen.power_on()
    pen.boot()
    listed = pen.request("profile_list")
    assert listed["active"] == "old" and "min_interval_days" not in listed["profiles"][0]   # none: 0
    assert pen.request("info")["counters"]["profiles_dropped"] == 0
