# S7: lockout state, used cartridges, profiles and the session log survive a
# power cycle; a corrupt, truncated or missing lockout record reads as LOCKED.
# (Power cuts at random instants of a write: tests/test_power_loss.py.)
# Runs on CPython and MicroPython.
import os

from fwtest import Pen

import penfix


def _lockout_path(pen):
    return pen.folder + "/data/lockout.rec"


def test_s7_records_survive_power_on():
    pen = penfix.ready_pen(cartridge="CA07010000000000", max_session_s=10)
    pen.push_profile(name="crown", depth_um=750, stroke_hz=120, max_session_s=300)
    assert pen.request("session_start")["ok"]
    pen.run_ms(500)
    assert pen.request("session_stop")["ok"]
    pen.run_until(lambda: pen.state() == "LOCKED", 3000)
    profiles = pen.request("profile_list")
    log = penfix.log_entries(pen)
    info = pen.request("info")
    pen.power_on()                                  # a new pen on the same flash
    assert pen.boot() == "LOCKED"
    assert pen.request("profile_list") == profiles
    assert profiles["active"] == "crown" and len(profiles["profiles"]) == 2
    assert penfix.log_entries(pen) == log
    kinds = [e["kind"] for e in log]
    assert "sterilise" in kinds and "session" in kinds
    session = [e for e in log if e["kind"] == "session"][0]
    assert session["end"] == "STOPPED" and session["cartridge"] == "CA07010000000000" and session["strokes"] > 0
    after = pen.request("info")["counters"]
    assert after["used_cartridges"] == 1 and after["cycles"] == info["counters"]["cycles"] == 1
    assert after["log_entries"] == info["counters"]["log_entries"]
    # the used cartridge stays used after the power cycle
    assert pen.sterilise() == "READY"
    assert pen.request("session_start")["code"] == "CARTRIDGE_USED"


def test_s7_unlock_survives_power_on():
    pen = penfix.unlocked_pen()
    pen.power_on()
    assert pen.boot() == "READY"
    assert pen.request("info")["unlocked"] is True


def test_s7_corrupt_lockout_record_reads_as_locked():
    from pen.store import Store
    pen = penfix.unlocked_pen()
    good = penfix.read_file(_lockout_path(pen))
    assert b'"unlocked": true' in good
    store = Store(pen.folder + "/data")
    original = store.read("lockout")
    crc_from = good.index(b"\n") - 8         # "PENREC <schema> <length> <crc32 hex>"
    equivalent = 0
    for pos in range(len(good)):
        for mask in (0x01, 0x20, 0x80):
            bad = bytearray(good)
            bad[pos] ^= mask
            penfix.write_file(_lockout_path(pen), bytes(bad))
            pen.power_on()
            state = pen.boot()
            if store.read("lockout") == original:
                # only the case of a CRC hex digit changed: the same record
                equivalent += 1
                assert crc_from <= pos < crc_from + 8 and mask == 0x20
                continue
            assert state == "LOCKED", (pos, mask, bytes(bad))
            assert pen.app.rec.unlocked is False
    assert equivalent <= 8                  # 8 hex digits of the CRC in the header
    penfix.write_file(_lockout_path(pen), good)
    pen.power_on()
    assert pen.boot() == "READY"


def test_s7_truncated_lockout_record_reads_as_locked():
    pen = penfix.unlocked_pen()
    good = penfix.read_file(_lockout_path(pen))
    for length in range(len(good)):
        penfix.write_file(_lockout_path(pen), good[:length])
        pen.power_on()
        assert pen.boot() == "LOCKED", length
    # extra bytes appended: also not intact
    penfix.write_file(_lockout_path(pen), good + b" ")
    pen.power_on()
    assert pen.boot() == "LOCKED"


def test_s7_missing_lockout_record_reads_as_locked():
    pen = penfix.unlocked_pen()
    os.remove(_lockout_path(pen))
    pen.power_on()
    assert pen.boot() == "LOCKED"


def test_s7_unfinished_write_does_not_unlock():
    # A power cut after the temp file was written but before the rename leaves
    # "lockout.rec.tmp" holding an unlock: it is not the record.
    pen = penfix.unlocked_pen()
    good = penfix.read_file(_lockout_path(pen))
    os.remove(_lockout_path(pen))
    penfix.write_file(_lockout_path(pen) + ".tmp", good)
    pen.power_on()
    assert pen.boot() == "LOCKED"


def test_s7_lockout_record_must_say_unlocked_true():
    # intact records whose value is not exactly `true` (wrong type) read as LOCKED
    from pen.store import Store
    pen = Pen()
    pen.boot()
    store = Store(pen.folder + "/data")
    for value in (1, "true", None, [True], {"x": True}):
        store.write("lockout", {"unlocked": value, "cycles": 1})
        pen.power_on()
        assert pen.boot() == "LOCKED", value
    store.write("lockout", {"cycles": 1})
    pen.power_on()
    assert pen.boot() == "LOCKED"


def test_s7_corrupt_profile_and_log_records_read_as_absent():
    pen = penfix.ready_pen(cartridge="CA07020000000000")
    assert pen.request("session_start")["ok"]
    pen.run_ms(200)
    pen.power_on()
    pen.boot()
    data = pen.folder + "/data/"
    penfix.write_file(data + "profiles.rec", penfix.read_file(data + "profiles.rec")[:-3])
    for name in os.listdir(pen.folder + "/data"):
        if name.startswith("log-"):
            raw = bytearray(penfix.read_file(data + name))
            raw[-2] ^= 0x01
            penfix.write_file(data + name, bytes(raw))
    pen.power_on()
    assert pen.boot() == "LOCKED"
    assert pen.request("profile_list")["profiles"] == []
    assert penfix.log_entries(pen) == []
    # the pen still works: a new profile can be stored and read back
    pen.push_profile(name="again")
    pen.power_on()
    pen.boot()
    assert [p["name"] for p in pen.request("profile_list")["profiles"]] == ["again"]
