"""Profile TOML files (docs/design.md §4): validated on the host before anything is sent.

The boundaries below are written from the specification (docs/design.md §2.1 S1/S3/S8 and the
profile file format), not imported from pen.limits, so a wrong constant shows up here."""

import decimal
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penctl.errors import EXIT_USAGE, UsageError
from penctl.profiles import ProfileFileError, depth_mm_to_um, load_file, validate_profiles

ROOT = Path(__file__).resolve().parents[1]

# The spec, in micrometres / Hz / s.
DEPTH_MIN_UM, DEPTH_MAX_UM, DEPTH_GRID_UM = 250, 2500, 50
HZ_MIN, HZ_MAX = 50, 150
SESSION_MIN_S, SESSION_MAX_S = 10, 1800


def _toml(depth="0.5", hz="100", seconds="600", name='"p"', extra=""):
    return ('[[profile]]\nname = %s\ndepth_mm = %s\nstroke_hz = %s\nmax_session_s = %s\n%s'
            % (name, depth, hz, seconds, extra))


def _load_text(tmp_path, text, filename="p.toml"):
    path = tmp_path / filename
    path.write_text(text)
    return load_file(path)


def _error(tmp_path, text):
    with pytest.raises(UsageError) as info:
        _load_text(tmp_path, text)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.message


def test_scalp_example_file():
    profiles = load_file(ROOT / "profiles" / "scalp.toml")
    assert profiles == [
        {"name": "scalp-frontal", "depth_um": 500, "stroke_hz": 100, "max_session_s": 600},
        {"name": "scalp-crown", "depth_um": 1000, "stroke_hz": 110, "max_session_s": 900},
        {"name": "scalp-vertex", "depth_um": 1500, "stroke_hz": 120, "max_session_s": 900},
    ]
    for p in profiles:     # published scalp range 0.5-1.5 mm
        assert 500 <= p["depth_um"] <= 1500


def test_bad_depth_example_names_file_profile_and_field():
    with pytest.raises(ProfileFileError) as info:
        load_file("profiles/bad-depth.toml")
    assert info.value.message == "profiles/bad-depth.toml: profile 2 'crown': depth_mm 3.0 outside 0.25-2.5 mm"


@pytest.mark.parametrize("text,um", [("0.25", 250), ("2.5", 2500), ("0.5", 500), ("0.55", 550), ("1", 1000),
                                     ("1.05", 1050), ("2.45", 2450), ("0.3", 300), ("1.150", 1150)])
def test_depth_exact_micrometres(tmp_path, text, um):
    assert _load_text(tmp_path, _toml(depth=text))[0]["depth_um"] == um


@pytest.mark.parametrize("text,expected", [
    ("0.33", "depth_mm 0.33 is not on the 0.05 mm grid (nearest: 0.3 or 0.35 mm)"),
    ("0.30000000000000004", "is not on the 0.05 mm grid"),
    ("1.0001", "is not on the 0.05 mm grid"),
    ("0.2", "depth_mm 0.2 outside 0.25-2.5 mm"),
    ("0.2499", "outside 0.25-2.5 mm"),
    ("2.5001", "depth_mm 2.5001 outside 0.25-2.5 mm"),
    ("2.55", "depth_mm 2.55 outside 0.25-2.5 mm"),
    ("3.0", "depth_mm 3.0 outside 0.25-2.5 mm"),
    ("0", "outside"), ("-0.5", "outside"), ("inf", "outside"),
    ("nan", "must be a number"), ('"0.5"', "must be a number"), ("true", "must be a number"),
    ("[0.5]", "must be a number"),
])
def test_depth_rejected(tmp_path, text, expected):
    message = _error(tmp_path, _toml(depth=text))
    assert message.startswith(str(tmp_path / "p.toml") + ": profile 1 'p': depth_mm ")
    assert expected in message


@pytest.mark.parametrize("field,text,expected", [
    ("hz", "49", "stroke_hz 49 must be a whole number 50-150 Hz"),
    ("hz", "151", "stroke_hz 151"),
    ("hz", "100.0", "stroke_hz 100.0"),
    ("hz", '"100"', "stroke_hz '100'"),
    ("seconds", "9", "max_session_s 9 must be a whole number 10-1800 s"),
    ("seconds", "1801", "max_session_s 1801"),
    ("seconds", "600.5", "max_session_s 600.5"),
    ("name", '"Crown"', "name 'Crown' must be 1-24 characters of a-z, 0-9 and '-'"),
    ("name", '""', "name ''"),
    ("name", '"a_b"', "name 'a_b'"),
    ("name", '"%s"' % ("a" * 25), "name 'aaaa"),
    ("name", "7", "name 7"),
])
def test_other_fields_rejected(tmp_path, field, text, expected):
    message = _error(tmp_path, _toml(**{field: text}))
    assert expected in message
    assert ": profile 1" in message


def test_boundaries_accepted(tmp_path):
    text = (_toml(hz="50", seconds="10", name='"a"') + _toml(hz="150", seconds="1800", name='"%s"' % ("z" * 24))
            + _toml(name='"abc-123"'))
    assert [p["stroke_hz"] for p in _load_text(tmp_path, text)] == [50, 150, 100]


def test_unknown_missing_and_duplicate(tmp_path):
    assert "unknown field 'speed'" in _error(tmp_path, _toml(extra="speed = 3\n"))
    message = _error(tmp_path, '[[profile]]\nname = "a"\ndepth_mm = 0.5\nstroke_hz = 100\n')
    assert message.endswith("profile 1 'a': max_session_s is missing")
    message = _error(tmp_path, _toml(name='"same"') + _toml(name='"same"', depth="1.0"))
    assert "profile 2 'same': name 'same' already used by profile 1" in message


def test_every_problem_is_reported(tmp_path):
    message = _error(tmp_path, _toml(name='"ok"') + _toml(name='"crown"', depth="3.0", hz="20"))
    lines = message.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("profile 2 'crown': depth_mm 3.0 outside 0.25-2.5 mm")
    assert "profile 2 'crown': stroke_hz 20" in lines[1]


def test_file_level_errors(tmp_path):
    assert "no profiles" in _error(tmp_path, "# nothing\n")
    assert "unknown top-level key" in _error(tmp_path, 'name = "x"\n' + _toml())
    assert "not valid TOML" in _error(tmp_path, "[[profile]\nname=")
    assert "at most 16" in _error(tmp_path, "".join(_toml(name='"p%d"' % i) for i in range(17)))
    with pytest.raises(UsageError) as info:
        load_file(tmp_path / "missing.toml")
    assert "missing.toml: no such file" in info.value.message


def test_profile_not_a_table(tmp_path):
    assert "profile 1: must be a table" in _error(tmp_path, "profile = [1]\n")


# ---- properties ----


def _spec_ok_um(um):
    return DEPTH_MIN_UM <= um <= DEPTH_MAX_UM and um % DEPTH_GRID_UM == 0


@settings(max_examples=400, deadline=None)
@given(st.integers(-100, 4000))
def test_depth_grid_and_range_property(um):
    text = str(decimal.Decimal(um) / 1000)                     # exact decimal text, e.g. 0.55
    try:
        profiles = validate_profiles(tomllib.loads(_toml(depth=text))["profile"], source="f.toml")
    except ProfileFileError as exc:
        assert not _spec_ok_um(um), exc.message
        assert "f.toml: profile 1 'p': depth_mm" in exc.message
    else:
        assert _spec_ok_um(um)
        assert profiles[0]["depth_um"] == um


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=3, places=4, allow_nan=False, allow_infinity=False))
def test_depth_any_decimal_property(value):
    exact_um = value * 1000
    accepted = exact_um == exact_um.to_integral_value() and _spec_ok_um(int(exact_um))
    text = format(value, "f")
    try:
        profiles = validate_profiles(tomllib.loads(_toml(depth=text))["profile"])
    except ProfileFileError:
        assert not accepted, text
    else:
        assert accepted, text
        assert profiles[0]["depth_um"] == int(exact_um)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(0, 4000))
def test_hz_and_duration_property(hz, seconds):
    ok = HZ_MIN <= hz <= HZ_MAX and SESSION_MIN_S <= seconds <= SESSION_MAX_S
    try:
        validate_profiles([{"name": "p", "depth_mm": 0.5, "stroke_hz": hz, "max_session_s": seconds}])
    except ProfileFileError:
        assert not ok
    else:
        assert ok


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=3.0))
def test_float_depths_convert_without_rounding(value):
    # A float depth is taken at its shortest decimal text: accepted exactly when that text is on the grid.
    exact_um = decimal.Decimal(repr(value)) * 1000
    on_grid = exact_um == exact_um.to_integral_value() and _spec_ok_um(int(exact_um))
    try:
        um = depth_mm_to_um(value)
    except ValueError:
        assert not on_grid
        return
    assert um == exact_um
