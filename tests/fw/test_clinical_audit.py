# S20: every privileged operation, refused authentication, clock change, ceiling change and
# interval override is logged persistently with pen time and wall time (null while unset);
# audit entries are never dropped silently: the ring keeps the newest 57-64 entries, the ids
# say how many older ones were overwritten, per-kind totals count every entry ever written, and
# an entry that could not be written is counted (`lost`) and its operation refused. Runs on
# CPython and MicroPython.
from clinicalfix import DAY_S, KEY_ID, OTHER_KEY, T0, Rig


def _kinds(entries):
    return [entry["kind"] for entry in entries]


def test_s20_each_clinical_event_is_logged_with_pen_and_wall_time():
    rig = Rig()
    rig.provision()
    rig.clock.advance_ms(1500)
    assert rig.privileged("ceiling_set", {"depth_um": 1000})["ok"]
    assert rig.privileged("ceiling_set", {"depth_um": 1500}, key=OTHER_KEY)["code"] == "AUTH_FAILED"
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.clock.advance_s(5)
    rig.profile("crown", days=7)
    assert rig.privileged("interval_override", {"profile": "crown"})["ok"]
    assert rig.privileged("clock_set", {"utc_s": T0 - DAY_S})["ok"]
    entries = rig.audit()
    assert _kinds(entries) == ["key_provision", "ceiling_set", "auth_failed", "clock_set", "interval_override",
                               "clock_set"]
    assert [e["id"] for e in entries] == [0, 1, 2, 3, 4, 5]
    provision, ceiling, failed, clock, override, clock_back = entries
    assert provision["key_id"] == KEY_ID and provision["first"] is True and provision["utc_s"] is None
    assert ceiling["from_um"] == 500 and ceiling["to_um"] == 1000 and ceiling["utc_s"] is None
    assert ceiling["t_ms"] == 1500
    assert failed["op"] == "ceiling_set" and failed["reason"] == "wrong answer" and failed["failures"] == 1
    assert clock["from_s"] is None and clock["to_s"] == T0 and clock["auth"] is False
    assert override["profile"] == "crown" and override["utc_s"] == T0 + 5 and override["t_ms"] == 6500
    assert clock_back["auth"] is True and clock_back["from_s"] == T0 + 5 and clock_back["to_s"] == T0 - DAY_S
    for entry in entries:
        assert type(entry["t_ms"]) is int


def test_s20_lock_and_refusals_while_locked_are_logged_without_flooding():
    rig = Rig()
    rig.provision()
    for _ in range(5):
        rig.privileged("ceiling_set", {"depth_um": 750}, key=OTHER_KEY)
    for _ in range(10):
        assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    entries = rig.audit()
    assert _kinds(entries) == ["key_provision"] + ["auth_failed"] * 5 + ["auth_lock", "auth_locked"]
    assert entries[-2]["seconds"] == 60
    assert entries[-1]["count"] == 10
    totals = rig.request("audit_read")["totals"]
    assert totals["auth_locked"] == 10 and totals["auth_failed"] == 5


def test_s20_ring_is_bounded_and_says_what_it_overwrote():
    rig = Rig()
    for n in range(100):
        assert rig.request("clock_set", utc_s=T0 + n)["ok"]
    entries = rig.audit()
    reply = rig.request("audit_read")
    assert reply["end"] == 100 and rig.clin.info()["audit_next"] == 100
    # 100 = 12 full pages of 8 + 4: the 7 other pages and the 4 newest are kept
    assert len(entries) == 60 and reply["oldest"] == 40
    assert [e["id"] for e in entries] == list(range(40, 100))
    assert [e["to_s"] for e in entries] == [T0 + n for n in range(40, 100)]
    assert reply["totals"] == {"clock_set": 100} and reply["lost"] == 0
    # reading from an overwritten id starts at the oldest kept one
    assert rig.request("audit_read", **{"from": 3})["entries"][0]["id"] == 40
    rig.power_cut()
    assert rig.audit() == entries
    assert rig.request("audit_read")["totals"] == {"clock_set": 100}


def test_s20_pages_fit_a_frame():
    from pen import wire
    rig = Rig()
    rig.provision()
    rig.profile("a-rather-long-name-24ch", days=7)
    for _ in range(12):
        assert rig.privileged("interval_override", {"profile": "a-rather-long-name-24ch"})["ok"]
    start = 0
    while start < 13:
        reply = rig.request("audit_read", **{"from": start, "count": 100})
        assert 1 <= len(reply["entries"]) <= 4
        reply["ok"] = True
        assert len(wire.encode("R", 1, reply)) <= 2048
        start = reply["next"]


def test_s20_entry_that_cannot_be_written_is_counted_and_reported():
    rig = Rig()
    rig.provision()
    # a privileged change without its entry is refused
    fields = rig.signed("ceiling_set", {"depth_um": 750})
    rig.store.fail = True
    assert rig.request("ceiling_set", **fields)["code"] == "STORE"
    assert rig.clin.info()["audit_lost"] == 1 and rig.clin.ceiling_um == 500
    # a refused authentication stands even if it cannot be logged; the failure that cannot be
    # written locks at once, so two entries are lost: the failure and the lock
    assert rig.privileged("ceiling_set", {"depth_um": 750}, key=OTHER_KEY)["code"] == "AUTH_FAILED"
    assert rig.clin.info()["audit_lost"] == 3
    rig.store.fail = False
    assert rig.request("clock_set", utc_s=T0)["ok"]          # the next page written carries the count
    rig.power_cut()
    assert rig.clin.info()["audit_lost"] == 3
    assert rig.request("audit_read")["lost"] == 3


def test_s20_change_that_fails_after_its_entry_is_marked_not_applied():
    rig = Rig()
    rig.provision()

    class Once:
        armed = True

    store = rig.store
    original = store.write

    def write(name, value):
        if name == "ceiling" and Once.armed:
            Once.armed = False
            from pen.store import StoreError
            raise StoreError("cannot write ceiling: injected")
        return original(name, value)
    store.write = write
    assert rig.privileged("ceiling_set", {"depth_um": 2000})["code"] == "STORE"
    entries = rig.audit()
    assert _kinds(entries)[-2:] == ["ceiling_set", "not_applied"]
    assert entries[-1]["ref"] == entries[-2]["id"]
    assert rig.clin.ceiling_um == 500


def test_s20_corrupt_page_is_reported():
    rig = Rig()
    for n in range(20):
        assert rig.request("clock_set", utc_s=T0 + n)["ok"]
    path = rig.folder + "/data/audit-0.rec"
    with open(path, "rb") as handle:
        raw = bytearray(handle.read())
    raw[-5] ^= 0x04
    with open(path, "wb") as handle:
        handle.write(raw)
    rig.power_cut()
    info = rig.clin.info()
    assert info["audit_corrupt_pages"] == 1 and info["audit_next"] == 20
    ids = [e["id"] for e in rig.audit()]
    assert ids == list(range(8, 20))          # entries 0-7 are gone, and the gap shows it
