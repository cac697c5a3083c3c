# S6: a session needs a cartridge present whose ID is not in the used list;
# the ID is recorded as used when the session starts; removing the cartridge
# mid-session stops the motor. Runs on CPython and MicroPython.
from pen.store import Store

import penfix


def _used_in_flash(pen):
    record = Store(pen.folder + "/data").read("cartridges")
    return record["used"] if record else []


def test_s6_no_cartridge_refused():
    pen = penfix.ready_pen(cartridge=None)
    lockout_before = penfix.read_file(pen.folder + "/data/lockout.rec")
    reply = pen.request("session_start")
    assert reply["ok"] is False and reply["code"] == "NO_CARTRIDGE"
    # nothing consumed: still READY and unlocked, in RAM and in flash
    pen.run_ms(100)
    assert pen.state() == "READY" and pen.board.duty_bp == 0
    assert pen.request("info")["unlocked"] is True
    assert penfix.read_file(pen.folder + "/data/lockout.rec") == lockout_before
    assert _used_in_flash(pen) == []
    pen.insert("CA06010000000000")
    assert pen.request("session_start")["ok"]


def test_s6_cartridge_recorded_when_session_starts():
    pen = penfix.ready_pen(cartridge="CA06020000000000")
    assert _used_in_flash(pen) == []
    assert pen.request("session_start")["ok"]
    # in flash before the first tick, i.e. before the motor can run
    assert _used_in_flash(pen) == ["CA06020000000000"]
    assert pen.board.duty_bp == 0
    # a power cut in the session: still recorded, and the pen is LOCKED
    penfix.wait_motor_start(pen)
    pen.run_ms(200)
    pen.power_on()
    assert pen.boot() == "LOCKED"
    assert _used_in_flash(pen) == ["CA06020000000000"]
    assert pen.request("info")["counters"]["used_cartridges"] == 1


def test_s6_used_cartridge_refused_also_after_power_cycle():
    pen = penfix.ready_pen(cartridge="CA06030000000000", max_session_s=10)
    assert pen.request("session_start")["ok"]
    pen.run_ms(300)
    assert pen.request("session_stop")["ok"]
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    pen.power_on()
    assert pen.boot() == "LOCKED"
    assert pen.sterilise() == "READY"          # a second real cycle, after the power cycle
    lockout_before = penfix.read_file(pen.folder + "/data/lockout.rec")
    reply = pen.request("session_start")       # the same cartridge is still inserted
    assert reply["ok"] is False and reply["code"] == "CARTRIDGE_USED"
    assert "CA06030000000000" in reply["msg"]
    # refusal consumes nothing
    assert pen.state() == "READY" and pen.request("info")["unlocked"] is True
    assert penfix.read_file(pen.folder + "/data/lockout.rec") == lockout_before
    pen.insert("CA06040000000000")
    assert pen.request("session_start")["ok"]
    assert _used_in_flash(pen) == ["CA06030000000000", "CA06040000000000"]


def test_s6_cartridge_removal_mid_session_stops_motor():
    pen = penfix.running_pen(cartridge="CA06050000000000")
    pen.board.inject("cartridge_out")
    pen.cartridge = None
    ticks = penfix.ticks_until(pen, lambda: pen.board.duty_bp == 0, 20)
    print("S6 cartridge out: motor off after %d ticks" % ticks)
    assert 1 <= ticks <= 2
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    assert pen.board.carriage_um == 0
    ends = pen.events("session_end")
    assert len(ends) == 1 and ends[0]["reason"] == "CARTRIDGE_OUT"
    sessions = [e for e in penfix.log_entries(pen) if e["kind"] == "session"]
    assert sessions[-1]["end"] == "CARTRIDGE_OUT" and sessions[-1]["cartridge"] == "CA06050000000000"


def test_s6_cartridge_removal_while_positioning_never_drives():
    pen = penfix.ready_pen(depth_um=2500, cartridge="CA06060000000000")
    assert pen.request("session_start")["ok"]
    pen.run_ms(50)                              # still moving the needles out
    assert pen.board.duty_bp == 0 and pen.state() == "RUNNING"
    pen.board.inject("cartridge_out")
    for _ in range(3000):
        pen.run_ms(1)
        assert pen.board.duty_bp == 0
    assert pen.state() == "LOCKED"
    assert pen.events("session_end")[-1]["reason"] == "CARTRIDGE_OUT"


def test_s6_unreadable_used_list_refuses_sessions():
    pen = penfix.ready_pen(cartridge="CA06070000000000")
    penfix.write_file(pen.folder + "/data/cartridges.rec", b"PENREC 1 12 00000000\n{\"used\": []}")
    pen.power_on()
    assert pen.boot() == "READY"
    reply = pen.request("session_start")
    assert reply["ok"] is False and reply["code"] == "STORE_CORRUPT"
    assert pen.board.duty_bp == 0


def test_s6_malformed_cartridge_id_refused_before_anything_changes():
    # A 1-Wire ROM ID is 8 bytes: 16 upper-case hex digits. Anything else is refused
    # (CARTRIDGE_INVALID) before any state changes, and never reaches a record or a reply whole.
    pen = penfix.ready_pen(cartridge=None)
    lockout_before = penfix.read_file(pen.folder + "/data/lockout.rec")
    log_before = penfix.log_entries(pen)
    for cart in ("A" * 2000, "0123456789ABCDE", "0123456789ABCDEF0", "0123456789abcdef", "0123456789ABCDEG",
                 "", " 123456789ABCDEF"):
        pen.insert(cart)
        reply = pen.request("session_start")
        assert reply["ok"] is False and reply["code"] == "CARTRIDGE_INVALID", (cart[:20], reply)
        assert len(reply["msg"]) < 100
    pen.run_ms(100)
    assert pen.state() == "READY" and pen.board.duty_bp == 0
    assert pen.request("info")["unlocked"] is True
    assert penfix.read_file(pen.folder + "/data/lockout.rec") == lockout_before
    assert _used_in_flash(pen) == []
    assert penfix.log_entries(pen) == log_before
    pen.insert("0123456789ABCDEF")
    assert pen.request("session_start")["ok"]
