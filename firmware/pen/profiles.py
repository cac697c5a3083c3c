# Profile validation (S1, S3, S8, S18). The host validates the same rules from its
# TOML files before sending; the pen validates again (defence in depth). The
# wire carries integer units: depth_um, stroke_hz, max_session_s, min_interval_days.
from . import proto
from .intervals import check_min_interval_days
from .limits import (
    DEPTH_MAX_UM,
    DEPTH_MIN_UM,
    DEPTH_STEP_UM,
    HZ_MAX,
    HZ_MIN,
    PROFILE_NAME_MAX,
    SESSION_MAX_S,
    SESSION_MIN_S,
)

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
FIELDS = ("name", "depth_um", "stroke_hz", "max_session_s", "min_interval_days")   # the wire profile


class ProfileError(Exception):
    """`code` is the stable wire error code, `field` the offending field."""

    def __init__(self, code, field, message):
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_name(name):
    if not isinstance(name, str) or not 1 <= len(name) <= PROFILE_NAME_MAX:
        raise ProfileError(proto.E_NAME_INVALID, "name",
                           "name must be 1-%d characters of a-z, 0-9 and '-'" % PROFILE_NAME_MAX)
    for ch in name:
        if ch not in _NAME_CHARS:
            raise ProfileError(proto.E_NAME_INVALID, "name",
                               "name must be 1-%d characters of a-z, 0-9 and '-'" % PROFILE_NAME_MAX)
    return name


def check_depth_um(depth_um):
    if not _is_int(depth_um):
        raise ProfileError(proto.E_DEPTH_RANGE, "depth_mm", "depth must be a number of micrometres")
    if depth_um < DEPTH_MIN_UM or depth_um > DEPTH_MAX_UM:
        raise ProfileError(proto.E_DEPTH_RANGE, "depth_mm", "depth %d um outside %d-%d um"
                           % (depth_um, DEPTH_MIN_UM, DEPTH_MAX_UM))
    if depth_um % DEPTH_STEP_UM:
        raise ProfileError(proto.E_DEPTH_GRID, "depth_mm", "depth %d um is not on the %d um grid"
                           % (depth_um, DEPTH_STEP_UM))
    return depth_um


def check_hz(hz):
    if not _is_int(hz) or hz < HZ_MIN or hz > HZ_MAX:
        raise ProfileError(proto.E_HZ_RANGE, "stroke_hz", "stroke frequency must be an integer %d-%d Hz"
                           % (HZ_MIN, HZ_MAX))
    return hz


def check_session_s(seconds):
    if not _is_int(seconds) or seconds < SESSION_MIN_S or seconds > SESSION_MAX_S:
        raise ProfileError(proto.E_DURATION_RANGE, "max_session_s",
                           "max_session_s must be an integer %d-%d s" % (SESSION_MIN_S, SESSION_MAX_S))
    return seconds


def check_profile(profile):
    """Validate a wire profile dict; returns a clean copy with exactly the known keys."""
    if not isinstance(profile, dict):
        raise ProfileError(proto.E_BAD_REQUEST, "profile", "profile must be an object")
    for key in profile:
        if key not in FIELDS:
            raise ProfileError(proto.E_BAD_REQUEST, key, "unknown profile field '%s'" % key)
    clean = {
        "name": check_name(profile.get("name")),
        "depth_um": check_depth_um(profile.get("depth_um")),
        "stroke_hz": check_hz(profile.get("stroke_hz")),
        "max_session_s": check_session_s(profile.get("max_session_s")),
    }
    if "min_interval_days" in profile:
        # S18, optional: kept only when given (absent = 0, no interval), so a profile without it
        # is stored, echoed and re-validated exactly as before S18.
        clean["min_interval_days"] = check_min_interval_days(profile["min_interval_days"])
    return clean
