"""The HIL harness itself, with the fake rig (labgrid style: the harness is testable)."""
import json

import pytest

from hil_tests.report import Recorder, write_report
from hil_tests.rig import FAULTS, FakeRig, NoRig, RigUnavailable


def test_recorder_check_passes_inside_limits_and_records(tmp_path):
    rec = Recorder(str(tmp_path), "fake")
    rec.current_test = "test_x"
    assert rec.check("depth error", 0.03, "mm", 0, 0.05) == 0.03
    assert rec.measurements[0].passed


@pytest.mark.parametrize("value,low,high", [(0.06, 0, 0.05), (-1, 0, None), (5, None, 4), (None, 0, 1),
                                             (float("nan"), 0, 1)])
def test_recorder_check_fails_outside_limits(tmp_path, value, low, high):
    rec = Recorder(str(tmp_path), "fake")
    with pytest.raises(AssertionError):
        rec.check("m", value, "u", low, high)
    assert rec.measurements[-1].passed is False


def test_report_lists_every_measurement_with_limits(tmp_path):
    rec = Recorder(str(tmp_path), "fake pen")
    rec.current_test = "test_depth"
    rec.check("depth 1.00 mm error", 0.01, "mm", 0, 0.05)
    with pytest.raises(AssertionError):
        rec.check("settle", 350, "ms", 0, 300)
    rec.record_outcome("hil::test_depth", "passed")
    rec.record_outcome("hil::test_power", "skipped", "needs a switchable power supply")
    rec.write()
    md = (tmp_path / "report.md").read_text()
    assert "| test_depth | depth 1.00 mm error | 0.01 | mm | 0 … 0.05 | pass | — |" in md
    assert "| test_depth | settle | 350 | ms | 0 … 300 | **FAIL** | — |" in md
    assert "needs a switchable power supply" in md
    html = (tmp_path / "report.html").read_text()
    assert "<td>settle</td>" in html and "FAIL" in html
    data = json.loads((tmp_path / "measurements.json").read_text())
    assert [m["outcome"] for m in data["measurements"]] == ["pass", "FAIL"]
    assert data["counts"] == {"passed": 1, "skipped": 1}


def test_report_merges_workers_and_names_place_and_serial_for_every_test(tmp_path):
    # Two pytest-xdist workers, each on its own lab place: one report names both, test by test.
    parts = []
    for place, serial, test in (("pen-1", "AAAA000000000001", "test_a"), ("pen-2", "BBBB000000000002", "test_b")):
        rec = Recorder(str(tmp_path), "lab place %s: pen serial %s" % (place, serial))
        rec.current_test, rec.current_place = test, place
        rec.check("%s value" % test, 1, "u", 0, 2)
        rec.record_outcome("hil::%s" % test, "passed", place=place, serial=serial)
        rec.notes.append("reclaimed %s" % place)
        parts.append(rec.part())
    summary = write_report(str(tmp_path), parts)
    md = (tmp_path / "report.md").read_text()
    assert "| hil::test_a | passed | pen-1 | AAAA000000000001 |  |" in md
    assert "| hil::test_b | passed | pen-2 | BBBB000000000002 |  |" in md
    assert "| test_b | test_b value | 1 | u | 0 … 2 | pass | pen-2 |" in md
    assert "- target: lab place pen-1: pen serial AAAA000000000001" in md
    assert "- reclaimed pen-2" in md
    assert summary["counts"] == {"passed": 2}
    html = (tmp_path / "report.html").read_text()
    assert "<td>pen-2</td><td>BBBB000000000002</td>" in html


@pytest.mark.parametrize("call", [lambda r: r.inject("stall"), lambda r: r.clear_injections(),
                                  lambda r: r.cartridge("AB"), lambda r: r.power_cut(), lambda r: r.power_on(),
                                  lambda r: r.measure()])
def test_norig_says_what_hardware_is_needed(call):
    with pytest.raises(RigUnavailable) as missing:
        call(NoRig())
    assert "needs " in str(missing.value) and "--rig-socket" in str(missing.value)


def test_fake_rig_records_calls_and_rejects_unknown_faults():
    rig = FakeRig(plant={"depth_um": 1000, "hz": 100.0, "motor_on": True, "uv_on": False})
    for fault in FAULTS:
        rig.inject(fault)
    rig.power_cut()
    assert rig.measure()["powered"] is False
    rig.power_on()
    assert [c[0] for c in rig.calls].count("inject") == len(FAULTS)
    with pytest.raises(ValueError):
        rig.inject("meteor")
    assert rig.measure()["depth_um"] == 1000
