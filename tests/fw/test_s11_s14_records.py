# S11: a latched fault is recorded before anything else and survives a power cycle; only
# `fault clear` leaves it, refused while the cause is present (FAULT_PRESENT, naming it).
# S13: profiles read from flash are validated again before use.
# S14: every session end is recorded with its true duration and strokes (stop, time limit,
# cartridge out, a fault, a fault during the retraction); a power cut is closed as
# POWER_LOSS at the next boot.
# Numbers from docs/design.md §2.1 / §2.4. Runs on CPython and MicroPython.
import penfix
from pen.store import Store


def _sessions(pen):
    return [e for e in penfix.log_entries(pen) if e["kind"] == "session"]


# ---- S11 ----

def test_s11_fault_latch_survives_power_cycle():
    pen = penfix.unlocked_pen("l1")
    pen.board.inject("overtemp")
    pen.run_until(lambda: pen.state() == "FAULT", 10)
    pen.run_ms(2)                                   # core 0 writes the latch at its next pass
    latch = Store(pen.folder + "/data").read("fault")
    assert latch["latched"] is True and latch["fault"] == "OVERTEMP"
    pen.board.clear_injections()
    pen.power_on()                                  # a power cut: RAM is gone, flash stays
    pen.run_ms(50)
    assert pen.state() == "FAULT" and pen.request("info")["fault"] == "OVERTEMP"
    pen.run_ms(2000)                                # homing does not leave FAULT
    assert pen.state() == "FAULT"
    assert pen.board.carriage_um == 0               # needles retracted all the same
    reply = pen.request("session_start")
    assert reply["ok"] is False and reply["code"] == "FAULT"
    assert pen.request("fault_clear", reason="cooled")["cleared"] == "OVERTEMP"
    assert pen.boot() == "READY"                    # no session ran: the unlock is still in flash
    assert Store(pen.folder + "/data").read("fault")["latched"] is False
    pen.power_on()
    assert pen.boot() == "READY"


def test_s11_fault_clear_refused_while_the_cause_is_present():
    pen = penfix.unlocked_pen("l2")
    pen.board.inject("low_battery")
    pen.run_until(lambda: pen.state() == "FAULT", 10)
    reply = pen.request("fault_clear", reason="too early")
    assert reply["ok"] is False and reply["code"] == "FAULT_PRESENT" and "LOW_BATTERY" in reply["msg"]
    pen.run_ms(100)
    assert pen.state() == "FAULT"                   # not "cleared" and latched again
    assert pen.events("fault") and len(pen.events("fault")) == 1
    assert [e for e in penfix.log_entries(pen) if e["kind"] == "fault_clear"] == []
    pen.board.clear_injections()
    pen.run_ms(5)
    assert pen.request("fault_clear", reason="charged")["cleared"] == "LOW_BATTERY"


def test_s11_corrupt_fault_record_reads_as_a_latched_fault():
    pen = penfix.unlocked_pen("l3")
    penfix.write_file(pen.folder + "/data/fault.rec", b"PENREC 1 2 00000000\n{}")
    pen.power_on()
    pen.run_ms(50)
    assert pen.state() == "FAULT" and pen.request("info")["fault"] == "INTERNAL"
    assert pen.request("fault_clear", reason="record rewritten")["cleared"] == "INTERNAL"
    assert pen.boot() == "READY"


# ---- S13 ----

def _profiles_record(pen, profiles, active):
    Store(pen.folder + "/data").write("profiles", {"profiles": profiles, "active": active})


def test_s13_invalid_profile_in_flash_is_never_used():
    pen = penfix.unlocked_pen("p1")
    good = {"name": "good", "depth_um": 500, "stroke_hz": 100, "max_session_s": 60}
    bad_depth = {"name": "deep", "depth_um": 9000, "stroke_hz": 100, "max_session_s": 60}
    bad_hz = {"name": "fast", "depth_um": 500, "stroke_hz": 400, "max_session_s": 60}
    _profiles_record(pen, [good, bad_depth, bad_hz], "deep")   # a valid CRC over invalid values
    pen.power_on()
    assert pen.boot() == "READY"
    listed = pen.request("profile_list")
    assert [p["name"] for p in listed["profiles"]] == ["good"] and listed["active"] is None
    assert pen.request("info")["counters"]["profiles_dropped"] == 2
    pen.insert("CA13000000000001")
    start = pen.board.carriage_um
    for name in ("deep", "fast", None):
        reply = pen.request("session_start", profile=name) if name else pen.request("session_start")
        assert reply["ok"] is False and reply["code"] in ("UNKNOWN_PROFILE", "NO_PROFILE"), reply
    pen.run_ms(500)
    assert pen.board.duty_bp == 0 and pen.board.carriage_um == start     # nothing moved
    assert pen.request("info")["unlocked"] is True


def test_s13_profile_corrupted_in_ram_is_refused_before_it_drives():
    pen = penfix.ready_pen(cartridge="CA13000000000002", tag="p2")
    pen.app.rec.profiles[0]["depth_um"] = 2600          # e.g. a bit flip after loading
    reply = pen.request("session_start")
    assert reply["ok"] is False and reply["code"] == "STORE_CORRUPT", reply
    pen.run_ms(500)
    assert pen.board.duty_bp == 0 and pen.board.carriage_um == 0
    assert pen.request("info")["unlocked"] is True and pen.state() == "READY"


# ---- S14 ----

def test_s14_fault_during_retraction_is_recorded():
    pen = penfix.running_pen(depth_um=2000, cartridge="CA14000000000001")
    assert pen.request("session_stop")["ok"]
    pen.run_ms(50)                                       # the needles are on their way back
    assert pen.state() == "RUNNING" and pen.board.duty_bp == 0 and pen.board.carriage_um > 500
    pen.board.inject("overtemp")
    pen.run_until(lambda: pen.state() == "FAULT", 10)
    pen.run_ms(2)
    entry = _sessions(pen)[-1]
    assert entry["end"] == "STOPPED" and entry["fault"] == "OVERTEMP", entry
    assert entry["duration_ms"] >= 600 and entry["strokes"] > 50
    end = pen.events("session_end")
    assert len(end) == 1 and end[0]["fault"] == "OVERTEMP"


def test_s14_true_duration_and_strokes_for_every_end():
    for index, (how, end) in enumerate((("stop", "STOPPED"), ("cartridge_out", "CARTRIDGE_OUT"),
                                        ("overcurrent", "FAULT"))):
        pen = penfix.running_pen(cartridge="CA1400000000001%d" % index, settle_ms=1000)
        strokes_before = pen.board.strokes
        if how == "stop":
            pen.request("session_stop")
        else:
            pen.board.inject(how)
        pen.run_until(lambda pen=pen: pen.state() in ("LOCKED", "FAULT"), 3000)
        pen.run_ms(2)
        entry = _sessions(pen)[-1]
        print("S14 %s: %s" % (how, entry))
        assert entry["end"] == end
        assert 1000 <= entry["duration_ms"] <= 1300           # positioning (0.5 mm) + 1 s of drive
        assert abs(entry["strokes"] - strokes_before) <= 3      # strokes the plant counted while driven


def test_s14_power_cut_closes_the_session_as_power_loss():
    pen = penfix.running_pen(cartridge="CA14000000000009")
    pen.power_on()                                      # cut mid-session
    pen.boot()
    entry = _sessions(pen)[-1]
    assert entry["end"] == "POWER_LOSS" and entry["duration_ms"] is None and entry["strokes"] is None
    assert pen.state() == "LOCKED"
