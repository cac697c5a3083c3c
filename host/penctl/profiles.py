"""Depth profiles from TOML files (docs/design.md §4), validated on the host before anything is sent.

A file holds one or more `[[profile]]` tables with the fields `name`, `depth_mm`, `stroke_hz`,
`max_session_s` and, optionally, `min_interval_days` (0-90, default 0: no interval). The rules are the pen's own
(`pen.profiles.check_*`, the same module the firmware runs); this module only
converts host units to wire units and words the errors for a person editing
the file: each names the file, the profile (1-based index and name) and the
field, e.g. ``profiles/x.toml: profile 2 'crown': depth_mm 3.0 outside 0.25-2.5 mm``.

Depth is converted to integer micrometres through the decimal text of the
value (never by float arithmetic), so 0.55 is exactly 550 um and an off-grid
value such as 0.33 or 0.30000000000000004 is rejected, never rounded.
"""

import decimal
import tomllib

from penctl.firmware.pen import limits as lim
from penctl.firmware.pen.intervals import check_min_interval_days
from penctl.firmware.pen.profiles import ProfileError, check_depth_um, check_hz, check_name, check_session_s
from penctl.errors import UsageError
from penctl.paths import read_input_file

FIELDS = ("name", "depth_mm", "stroke_hz", "max_session_s", "min_interval_days")
#: fields a profile may leave out, with the value the pen then uses
OPTIONAL = {"min_interval_days": 0}


def _mm(um):
    return ("%.3f" % (um / 1000)).rstrip("0").rstrip(".")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def depth_mm_to_um(value):
    """Depth in mm (int/float/Decimal/str) -> integer um, exactly; ValueError if not a whole um."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        exact = decimal.Decimal(str(value)) if not isinstance(value, decimal.Decimal) else value
    except decimal.InvalidOperation:
        raise ValueError("not a number") from None
    if not exact.is_finite():
        raise ValueError("not a finite number")
    um = exact * 1000
    if um != um.to_integral_value():
        raise ValueError("not a whole number of micrometres")
    return int(um)


def _nearest_grid(um_exact):
    step = lim.DEPTH_STEP_UM
    low = (um_exact // step) * step
    return [_mm(v) for v in (low, low + step) if lim.DEPTH_MIN_UM <= v <= lim.DEPTH_MAX_UM]


def _depth_error(value):
    """None if `value` (depth_mm from the file) is valid, else the message.

    The decision is check_depth_um's: a value that is not a whole number of um
    is tested as its two neighbouring whole um (the range bounds are whole um,
    so if either neighbour is out of range, so is the value; otherwise it is
    off the grid).
    """
    if not _is_number(value):
        return "depth_mm %r must be a number of millimetres" % (value,)
    exact = decimal.Decimal(str(value))
    if exact.is_nan():
        return "depth_mm %r must be a number of millimetres" % (value,)
    span = "%s-%s mm" % (_mm(lim.DEPTH_MIN_UM), _mm(lim.DEPTH_MAX_UM))
    if exact.is_infinite():
        return "depth_mm %r outside %s" % (value, span)
    um_exact = exact * 1000
    low = int(um_exact.to_integral_value(rounding=decimal.ROUND_FLOOR))
    high = int(um_exact.to_integral_value(rounding=decimal.ROUND_CEILING))
    codes = []
    for um in {low, high}:
        try:
            check_depth_um(um)
        except ProfileError as exc:
            codes.append(exc.code)
    if "DEPTH_RANGE" in codes:
        return "depth_mm %r outside %s" % (value, span)
    if codes or low != high:
        near = _nearest_grid(low)
        return ("depth_mm %r is not on the %s mm grid" % (value, _mm(lim.DEPTH_STEP_UM))
                + (" (nearest: %s mm)" % " or ".join(near) if near else ""))
    return None


def _field_error(field, value):
    """None if valid, else the message for one field (never decides a rule itself)."""
    try:
        if field == "name":
            check_name(value)
        elif field == "stroke_hz":
            check_hz(value)
        elif field == "max_session_s":
            check_session_s(value)
        elif field == "depth_mm":
            return _depth_error(value)
        elif field == "min_interval_days":
            check_min_interval_days(value)
    except ProfileError:
        if field == "min_interval_days":
            return "min_interval_days %r must be a whole number of days 0-%d" % (value, lim.INTERVAL_DAYS_MAX)
        if field == "name":
            return "name %r must be 1-%d characters of a-z, 0-9 and '-'" % (value, lim.PROFILE_NAME_MAX)
        if field == "stroke_hz":
            return "stroke_hz %r must be a whole number %d-%d Hz" % (value, lim.HZ_MIN, lim.HZ_MAX)
        return "max_session_s %r must be a whole number %d-%d s" % (value, lim.SESSION_MIN_S,
                                                                   lim.SESSION_MAX_S)
    return None


class ProfileFileError(UsageError):
    """One or more problems in a profile file; `problems` lists (profile_index, field, message)."""

    code = "PROFILE_FILE"

    def __init__(self, message, problems):
        super().__init__(message)
        self.problems = problems


def validate_profiles(tables, source="profiles"):
    """Validate a list of profile dicts in host units; return wire dicts (integer units).

    Raises ProfileFileError naming `source`, the profile and the field of every problem.
    """
    problems = []

    def add(index, label, field, message):
        problems.append((index, field, "%s: %s%s" % (source, label, message)))

    if not isinstance(tables, list) or not tables:
        add(None, "", None, "no profiles: add one or more [[profile]] tables "
                            "(fields: %s)" % ", ".join(FIELDS))
    elif len(tables) > lim.PROFILES_MAX:
        add(None, "", None, "%d profiles, the pen holds at most %d" % (len(tables), lim.PROFILES_MAX))
    out = []
    seen = {}
    for index, table in enumerate(tables if isinstance(tables, list) else [], start=1):
        if not isinstance(table, dict):
            add(index, "profile %d: " % index, None, "must be a table")
            continue
        name = table.get("name")
        label = "profile %d %r: " % (index, name) if isinstance(name, str) else "profile %d: " % index
        for key in table:
            if key not in FIELDS:
                add(index, label, key, "unknown field '%s' (allowed: %s)" % (key, ", ".join(FIELDS)))
        ok = True
        for field in FIELDS:
            if field not in table and field in OPTIONAL:
                continue
            if field not in table:
                add(index, label, field, "%s is missing" % field)
                ok = False
                continue
            message = _field_error(field, table[field])
            if message:
                add(index, label, field, message)
                ok = False
        if isinstance(name, str):
            if name in seen:
                add(index, label, "name", "name '%s' already used by profile %d" % (name, seen[name]))
                ok = False
            else:
                seen[name] = index
        if ok:
            wire_profile = {
                "name": name,
                "depth_um": depth_mm_to_um(table["depth_mm"]),
                "stroke_hz": table["stroke_hz"],
                "max_session_s": table["max_session_s"],
            }
            # Sent only when the file sets it: the pen's default is the same, and a pen from before
            # S18 still takes a profile without an interval.
            for field in OPTIONAL:
                if field in table:
                    wire_profile[field] = table[field]
            out.append(wire_profile)
    if problems:
        raise ProfileFileError("\n".join(p[2] for p in problems), problems)
    return out


def load_file(path):
    """Read and validate one TOML profile file; return the wire profiles (integer units).

    Only a regular file of at most penctl.paths.INPUT_MAX_BYTES is read (UsageError otherwise,
    decided from its size before reading)."""
    path = str(path)
    raw = read_input_file(path, "profile file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileFileError("%s: not valid TOML: %s" % (path, exc), [(None, None, str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise UsageError("%s: cannot read: not UTF-8 text (%s)" % (path, exc), code="FILE") from None
    extra = [key for key in data if key != "profile"]
    if extra:
        raise ProfileFileError("%s: unknown top-level key(s) %s: a profile file holds only "
                               "[[profile]] tables" % (path, ", ".join(repr(k) for k in extra)),
                               [(None, extra[0], "unknown key")])
    return validate_profiles(data.get("profile"), source=path)


def to_host(profile):
    """Wire profile (integer units) -> host units."""
    return {
        "name": profile.get("name"),
        "depth_mm": profile["depth_um"] / 1000 if isinstance(profile.get("depth_um"), int) else None,
        "stroke_hz": profile.get("stroke_hz"),
        "max_session_s": profile.get("max_session_s"),
        # a pen before S18 sends no interval: it has none
        "min_interval_days": profile.get("min_interval_days", OPTIONAL["min_interval_days"]),
    }
