"""Handshake, protocol version, flashing, profiles (docs/design.md §3, 4)."""
import pytest

from hil_tests.helpers import recover
from penctl.errors import PenRefused, UsageError

PROTOCOL_VERSION = 2   # docs/design.md §3: the version this host speaks


def test_fresh_pen_is_locked(pen):
    # First test of the run: the pen was just flashed (virtual) or is as delivered.
    from hil_tests.helpers import wait_state
    assert wait_state(pen, ("LOCKED", "READY", "FAULT")) == "LOCKED"
    assert pen.info()["unlocked"] is False


def test_handshake_and_protocol_version(pen, recorder):
    reply = pen.ping()
    recorder.check("protocol version", reply["protocol"], "", PROTOCOL_VERSION, PROTOCOL_VERSION)
    info = pen.info()
    for key in ("firmware", "protocol", "board", "serial", "state", "depth_mm", "stroke_hz", "profile", "limits"):
        assert key in info, key
    limits = info["limits"]
    # S1 / S3 from the specification, not from the firmware
    recorder.check("depth_min_mm", limits["depth_min_mm"], "mm", 0.25, 0.25)
    recorder.check("depth_max_mm", limits["depth_max_mm"], "mm", 2.5, 2.5)
    recorder.check("depth_step_mm", limits["depth_step_mm"], "mm", 0.05, 0.05)
    recorder.check("hz_min", limits["hz_min"], "Hz", 50, 50)
    recorder.check("hz_max", limits["hz_max"], "Hz", 150, 150)


def test_flash_wrote_the_firmware(target, recorder):
    if target.flash_report is None:
        pytest.skip("real pen: flashed before the run with `make flash` (not by the suite)")
    report = target.flash_report
    recorder.check("files written by flash", report["files_written"], "files", 1)
    recorder.check("flash time (full)", report["seconds"], "s", 0, 30)
    assert report["protocol"] == PROTOCOL_VERSION


def test_profile_round_trip(pen, rig):
    recover(pen, rig)
    profile = {"name": "hil-round-trip", "depth_mm": 1.25, "stroke_hz": 120, "max_session_s": 900}
    pen.profile_push([profile])
    listed = {p["name"]: p for p in pen.profile_list()["profiles"]}
    got = listed["hil-round-trip"]
    assert got["depth_mm"] == 1.25 and got["stroke_hz"] == 120 and got["max_session_s"] == 900
    pen.profile_use("hil-round-trip")
    assert pen.profile_list()["active"] == "hil-round-trip"
    pen.profile_rm("hil-round-trip")
    assert "hil-round-trip" not in {p["name"] for p in pen.profile_list()["profiles"]}


# Each bad value sent straight to the pen (defence in depth: the host would refuse it
# before sending), with the code the pen must answer. Limits from docs/design.md §2.1 / 4.
BAD_ON_PEN = [
    ({"depth_um": 200}, "DEPTH_RANGE"),
    ({"depth_um": 2550}, "DEPTH_RANGE"),
    ({"depth_um": 270}, "DEPTH_GRID"),
    ({"stroke_hz": 49}, "HZ_RANGE"),
    ({"stroke_hz": 151}, "HZ_RANGE"),
    ({"max_session_s": 9}, "DURATION_RANGE"),
    ({"max_session_s": 1801}, "DURATION_RANGE"),
    ({"name": "Bad Name"}, "NAME_INVALID"),
]


@pytest.mark.parametrize("change,code", BAD_ON_PEN, ids=[c for _, c in BAD_ON_PEN])
def test_bad_profile_rejected_by_pen_nothing_changed(pen, change, code):
    before = pen.profile_list()
    profile = {"name": "hil-bad", "depth_um": 1000, "stroke_hz": 100, "max_session_s": 600}
    profile.update(change)
    with pytest.raises(PenRefused) as refused:
        pen.request("profile_put", profile=profile)
    assert refused.value.code == code
    assert pen.profile_list() == before


def test_bad_profile_rejected_by_host_nothing_sent(pen, target):
    before = pen.profile_list()
    sent_before = len([line for line in target.recent if " > " in line])
    with pytest.raises(UsageError):
        pen.profile_push([{"name": "hil-host-bad", "depth_mm": 0.33, "stroke_hz": 100, "max_session_s": 600}])
    assert len([line for line in target.recent if " > " in line]) == sent_before
    assert pen.profile_list() == before
