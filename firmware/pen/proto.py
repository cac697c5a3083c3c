# The pen protocol's vocabulary, defined once (docs/design.md §3): the stable error codes
# and the telemetry sample layout. Shared by the firmware (MicroPython) and the host
# (CPython imports it as penctl.firmware.pen.proto): written in the common subset.
try:
    from micropython import const
except ImportError:  # CPython (host tool, tests)
    def const(value):
        return value

# ---- error codes: {"ok": false, "code": CODE, "msg": ...} ----
# Frame level (pen.wire raises these while decoding).
E_FRAME_LONG = "FRAME_LONG"
E_FRAME_SYNTAX = "FRAME_SYNTAX"
E_FRAME_CRC = "FRAME_CRC"
E_FRAME_VERSION = "FRAME_VERSION"
E_FRAME_CHARS = "FRAME_CHARS"
E_FRAME_BODY = "FRAME_BODY"
# Request level.
E_UNKNOWN_OP = "UNKNOWN_OP"
E_BAD_REQUEST = "BAD_REQUEST"
E_RESPONSE_UNENCODABLE = "RESPONSE_UNENCODABLE"
E_INTERNAL = "INTERNAL"
E_STORE = "STORE"
E_STORE_CORRUPT = "STORE_CORRUPT"
# Refusals: the pen said no (penctl exit 1).
E_BUSY = "BUSY"
E_LOCKED = "LOCKED"
E_FAULT = "FAULT"
E_NO_FAULT = "NO_FAULT"
E_FAULT_PRESENT = "FAULT_PRESENT"
E_LID_OPEN = "LID_OPEN"
E_NOT_STERILISING = "NOT_STERILISING"
E_NOT_RUNNING = "NOT_RUNNING"
E_NO_PROFILE = "NO_PROFILE"
E_UNKNOWN_PROFILE = "UNKNOWN_PROFILE"
E_PROFILES_FULL = "PROFILES_FULL"
E_NO_CARTRIDGE = "NO_CARTRIDGE"
E_CARTRIDGE_USED = "CARTRIDGE_USED"
E_CARTRIDGE_INVALID = "CARTRIDGE_INVALID"
E_NO_SUBSCRIPTION = "NO_SUBSCRIPTION"
# Profile validation (pen.profiles; the reply also names the field).
E_NAME_INVALID = "NAME_INVALID"
E_DEPTH_RANGE = "DEPTH_RANGE"
E_DEPTH_GRID = "DEPTH_GRID"
E_HZ_RANGE = "HZ_RANGE"
E_DURATION_RANGE = "DURATION_RANGE"
# Clinical safety (S16-S20, docs/design.md §3.5, docs/clinical.md).
E_DEPTH_CEILING = "DEPTH_CEILING"          # deeper than the pen's depth ceiling (S16)
E_AUTH_REQUIRED = "AUTH_REQUIRED"          # the op needs the clinician key; no answer was sent (S17)
E_AUTH_FAILED = "AUTH_FAILED"              # wrong, replayed, expired or mismatched answer (S17)
E_AUTH_LOCKED = "AUTH_LOCKED"              # privileged ops locked after repeated failures (S17)
E_NO_KEY = "NO_KEY"                        # no clinician key provisioned on this pen (S17)
E_CLOCK_UNSET = "CLOCK_UNSET"              # the pen's wall clock is not set (S18)
E_TOO_SOON = "TOO_SOON"                    # inside the profile's minimum interval (S18)
E_INTERVAL_RANGE = "INTERVAL_RANGE"        # min_interval_days not an integer 0-90 (S18)
E_CARTRIDGE_MEMORY = "CARTRIDGE_MEMORY"    # the cartridge's used mark cannot be read or written (S19)

# ---- telemetry: {"ev": "tm", "sub": SUB, "n": INDEX, "s": [ints in this order]} ----
# Index of each field in a sample (the control tick writes them).
TM_T_MS = const(0)
TM_STATE = const(1)
TM_DEPTH_SET_UM = const(2)
TM_DEPTH_UM = const(3)
TM_HZ_SET_CHZ = const(4)
TM_HZ_CHZ = const(5)
TM_DUTY_BP = const(6)
TM_CURRENT_MA = const(7)
TM_TEMP_CDEGC = const(8)
TM_BATTERY_MV = const(9)
TM_STROKES = const(10)
TM_FAULTS = const(11)
TM_OVERRUNS = const(12)
TM_TICK_MAX_US = const(13)
TM_FIELDS = const(14)

# (wire name, host column, divisor from the wire's integer unit to the host unit; 0: the value is
# an index into STATE_NAMES). The order is the sample order above; the pen sends the wire names
# in the `telemetry` reply ("fields") and the host maps the samples by those names.
TM_LAYOUT = (
    ("t_ms", "t_s", 1000),
    ("state", "state", 0),
    ("depth_set_um", "depth_set_mm", 1000),
    ("depth_um", "depth_mm", 1000),
    ("hz_set_chz", "hz_set", 100),
    ("hz_chz", "hz", 100),
    ("duty_bp", "duty", 10000),
    ("current_ma", "current_ma", 1),
    ("temp_cdegc", "temp_c", 100),
    ("battery_mv", "battery_v", 1000),
    ("strokes", "strokes", 1),
    ("faults", "faults", 1),
    ("overruns", "overruns", 1),
    ("tick_max_us", "tick_max_us", 1),
)
