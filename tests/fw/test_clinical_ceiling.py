# S16: a depth ceiling per pen. A factory-fresh pen allows at most 0.5 mm; deeper profiles are
# refused when pushed, selected or used (DEPTH_CEILING, the message gives the ceiling). Only
# the clinician key changes the ceiling, 0.25-2.5 mm on the 0.05 mm grid. Runs on CPython and
# MicroPython.
from clinicalfix import OTHER_KEY, Rig


def _code(rig, call, *args):
    return rig.refusal(call, *args)


def test_s16_factory_ceiling_is_half_a_millimetre():
    rig = Rig()
    assert rig.clin.info()["depth_ceiling_um"] == 500
    assert _code(rig, rig.clin.check_profile, rig.profile("a", 500)) is None
    for depth in (550, 600, 1000, 2500):
        profile = rig.profile("deep", depth)
        try:
            rig.clin.check_profile(profile)
        except Exception as exc:
            assert exc.code == "DEPTH_CEILING" and exc.field == "depth_mm"
            assert "0.5 mm" in exc.message, exc.message
        else:
            raise AssertionError("profile of %d um accepted under a 500 um ceiling" % depth)


def test_s16_session_start_with_deeper_profile_refused():
    rig = Rig()
    profile = rig.profile("deep", 750)
    rig.board.insert("2D00000000000001")
    assert _code(rig, rig.clin.check_session, profile, "2D00000000000001") == "DEPTH_CEILING"
    assert rig.board.marks == {}       # nothing marked: refused before any side effect


def test_s16_ceiling_changes_only_with_the_key():
    rig = Rig()
    rig.provision()
    assert rig.request("ceiling_set", depth_um=1000)["code"] == "AUTH_REQUIRED"
    assert rig.privileged("ceiling_set", {"depth_um": 1000}, key=OTHER_KEY)["code"] == "AUTH_FAILED"
    assert rig.clin.info()["depth_ceiling_um"] == 500
    assert rig.privileged("ceiling_set", {"depth_um": 1000})["ok"]
    assert rig.clin.info()["depth_ceiling_um"] == 1000
    assert _code(rig, rig.clin.check_profile, rig.profile("mid", 1000)) is None
    assert _code(rig, rig.clin.check_profile, rig.profile("deeper", 1050)) == "DEPTH_CEILING"
    # lowering needs the key too
    assert rig.request("ceiling_set", depth_um=250)["code"] == "AUTH_REQUIRED"
    assert rig.privileged("ceiling_set", {"depth_um": 250})["ok"]
    assert _code(rig, rig.clin.check_profile, rig.profile("shallow", 300)) == "DEPTH_CEILING"


def test_s16_ceiling_range_and_grid():
    rig = Rig()
    rig.provision()
    for depth, code in ((200, "DEPTH_RANGE"), (2550, "DEPTH_RANGE"), (0, "DEPTH_RANGE"), (-500, "DEPTH_RANGE"),
                        (1025, "DEPTH_GRID"), (260, "DEPTH_GRID"), ("1000", "DEPTH_RANGE"), (True, "DEPTH_RANGE"),
                        (None, "DEPTH_RANGE")):
        reply = rig.privileged("ceiling_set", {"depth_um": depth})
        assert reply["code"] == code, (depth, reply)
    for depth in (250, 2500, 1550):
        assert rig.privileged("ceiling_set", {"depth_um": depth})["ok"], depth
        assert rig.clin.info()["depth_ceiling_um"] == depth


def test_s16_ceiling_survives_power_cut():
    rig = Rig()
    rig.provision()
    assert rig.privileged("ceiling_set", {"depth_um": 1500})["ok"]
    rig.power_cut()
    assert rig.clin.info()["depth_ceiling_um"] == 1500


def test_s16_unreadable_ceiling_reads_as_the_shallowest():
    rig = Rig()
    rig.provision()
    assert rig.privileged("ceiling_set", {"depth_um": 2000})["ok"]
    path = rig.folder + "/data/ceiling.rec"
    with open(path, "rb") as handle:
        good = handle.read()
    for cut in (len(good) - 1, len(good) // 2, 3):
        with open(path, "wb") as handle:
            handle.write(good[:cut])
        rig.power_cut()
        assert rig.clin.info()["depth_ceiling_um"] == 250, cut
    # an intact record with a value outside 250-2500 reads the same way
    rig.store.write("ceiling", {"depth_um": 5000})
    rig.power_cut()
    assert rig.clin.info()["depth_ceiling_um"] == 250


def test_s16_ceiling_change_not_applied_without_its_audit_entry():
    rig = Rig()
    rig.provision()
    fields = rig.signed("ceiling_set", {"depth_um": 1000})
    rig.store.fail = True
    assert rig.request("ceiling_set", **fields)["code"] == "STORE"
    rig.store.fail = False
    assert rig.clin.info()["depth_ceiling_um"] == 500
    rig.power_cut()
    assert rig.clin.info()["depth_ceiling_um"] == 500
