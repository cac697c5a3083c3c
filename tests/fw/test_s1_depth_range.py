# S1: depth set point range 0.25-2.5 mm on a 0.05 mm grid; anything else is
# rejected with a clear error, never clamped, and nothing changes on the pen.
# Boundary values are written here from the specification (docs/design.md §2.1), not
# imported from pen/limits.py. Runs on CPython and MicroPython.
import fwtest
import penfix


def _profile(depth_um, name="d"):
    return {"name": name, "depth_um": depth_um, "stroke_hz": 100, "max_session_s": 60}


def _pen_with_profile():
    pen = fwtest.Pen()
    pen.boot()
    pen.push_profile(name="keep", depth_um=1000, stroke_hz=100, max_session_s=60)
    return pen


def _flash(pen):
    return penfix.read_file(pen.folder + "/data/profiles.rec")


def test_s1_depth_boundaries_accepted():
    pen = _pen_with_profile()
    for depth_um in (250, 300, 1000, 2450, 2500):   # 0.25 mm, 0.30, 1.00, 2.45, 2.50 mm
        reply = pen.request("profile_put", profile=_profile(depth_um, "d%d" % depth_um))
        assert reply["ok"], (depth_um, reply)
        assert reply["profile"]["depth_um"] == depth_um      # stored as given, not rounded
    stored = {}
    for profile in pen.request("profile_list")["profiles"]:
        stored[profile["name"]] = profile["depth_um"]
    assert stored["d250"] == 250 and stored["d2500"] == 2500


def test_s1_depth_out_of_range_rejected_with_depth_range():
    pen = _pen_with_profile()
    for depth_um in (200, 245, 249, 0, -250, 2501, 2550, 3000):
        reply = pen.request("profile_put", profile=_profile(depth_um))
        assert reply["ok"] is False, (depth_um, reply)
        assert reply["code"] == "DEPTH_RANGE", (depth_um, reply)
        assert reply["field"] == "depth_mm"
        assert reply["msg"]


def test_s1_depth_off_grid_rejected_with_depth_grid():
    pen = _pen_with_profile()
    for depth_um in (270, 251, 299, 1025, 2499, 2475):
        reply = pen.request("profile_put", profile=_profile(depth_um))
        assert reply["ok"] is False, (depth_um, reply)
        assert reply["code"] == "DEPTH_GRID", (depth_um, reply)
        assert reply["field"] == "depth_mm"


def test_s1_depth_non_integer_rejected():
    pen = _pen_with_profile()
    for depth_um in (250.0, 500.5, "500", None, True, [500]):
        reply = pen.request("profile_put", profile=_profile(depth_um))
        assert reply["ok"] is False, (depth_um, reply)
        assert reply["code"] == "DEPTH_RANGE", (depth_um, reply)


def test_s1_rejected_depth_changes_nothing_on_the_pen():
    pen = _pen_with_profile()
    before_list = pen.request("profile_list")
    before_flash = _flash(pen)
    for depth_um in (200, 2550, 270):
        # also a rejected update of the existing, active profile
        for name in ("keep", "new"):
            reply = pen.request("profile_put", profile=_profile(depth_um, name))
            assert reply["ok"] is False
    assert pen.request("profile_list") == before_list
    assert _flash(pen) == before_flash
    assert pen.request("info")["profile"] == "keep"
    assert pen.state() == "LOCKED"


def test_s1_depth_never_clamped_at_session_start():
    # The profile that the session runs is the validated one: the set point the
    # controller receives is exactly the profile depth (2.5 mm), not clamped.
    pen = penfix.ready_pen(depth_um=2500, cartridge="CA01010000000000")
    penfix.start_session(pen)
    assert pen.ctl.depth_set_um == 2500
    penfix.wait_motor_start(pen)
    assert pen.ctl.depth_target_um == 2500
    assert pen.board.carriage_um == 2500
