# S5: sterilisation-cycle lockout. Runs on CPython and MicroPython.
from fwtest import Pen


def test_s5_fresh_pen_is_locked():
    pen = Pen()
    assert pen.boot() == "LOCKED"
    reply = pen.request("session_start")
    assert reply["ok"] is False and reply["code"] == "LOCKED"


def test_s5_completed_cycle_unlocks_for_one_session():
    pen = Pen()
    pen.boot()
    pen.push_profile(max_session_s=10)
    assert pen.sterilise() == "READY"
    pen.insert("C0FFEE01")
    assert pen.request("session_start")["ok"]
    pen.run_ms(300)
    assert pen.request("session_stop")["ok"]
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    pen.insert("C0FFEE02")
    reply = pen.request("session_start")
    assert reply["code"] == "LOCKED"
