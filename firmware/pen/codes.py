# The control core's vocabulary, defined once: states, fault causes, session end and
# sterilisation abort reasons (each an index into its names tuple, which is what goes on
# the wire and into the log), the command mailbox between the cores (docs/design.md
# §2.3) and the layout of Board.sample(). Used by pen.control, pen.phases, pen.app and
# the boards.
try:
    from micropython import const
except ImportError:  # CPython (host tool, tests)
    def const(value):
        return value

# States (docs/design.md §2.2). Index into STATE_NAMES (pen.wire: the host decodes them).
BOOT = const(0)
LOCKED = const(1)
STERILISING = const(2)
READY = const(3)
RUNNING = const(4)
FAULT = const(5)
from .wire import STATE_NAMES  # noqa: E402, F401 - the protocol's names for the indices above

# Fault causes. Index into FAULT_NAMES.
F_NONE = const(0)
F_STALL = const(1)
F_OVERCURRENT = const(2)
F_OVERTEMP = const(3)
F_TACH_LOSS = const(4)
F_OVER_DEPTH = const(5)
F_DEPTH_DEVIATION = const(6)
F_DEPTH_JAM = const(7)
F_HOMING = const(8)
F_LOW_BATTERY = const(9)
F_INTERNAL = const(10)
F_MOTOR_STUCK_ON = const(11)     # turning or drawing current while commanded off
FAULT_NAMES = ("NONE", "STALL", "OVERCURRENT", "OVERTEMP", "TACH_LOSS", "OVER_DEPTH",
               "DEPTH_DEVIATION", "DEPTH_JAM", "HOMING", "LOW_BATTERY", "INTERNAL", "MOTOR_STUCK_ON")

# Why a session ended. Index into END_NAMES. CTRL_C, CRASH and POWER_LOSS are written
# by core 0 (the control core is stopped or was never told).
END_NONE = const(0)
END_STOPPED = const(1)
END_TIME_LIMIT = const(2)
END_CARTRIDGE_OUT = const(3)
END_FAULT = const(4)
END_CTRL_C = const(5)
END_CRASH = const(6)
END_POWER_LOSS = const(7)
END_NAMES = ("NONE", "STOPPED", "TIME_LIMIT", "CARTRIDGE_OUT", "FAULT", "CTRL_C", "CRASH", "POWER_LOSS")
END_INTERRUPTED = "INTERRUPTED"   # a log entry's end while its session runs (docs/design.md §2.4)

# Why a sterilisation cycle aborted. Index into ABORT_NAMES.
ABORT_NONE = const(0)
ABORT_LID_OPEN = const(1)
ABORT_LOW_UV = const(2)
ABORT_TIMEOUT = const(3)
ABORT_CANCELLED = const(4)
ABORT_FAULT = const(5)
ABORT_UV_SENSOR_STUCK = const(6)   # S12: not dark with the LED off (stuck sensor or analogue switch)
ABORT_UV_LED_DEAD = const(7)       # S12: dark with the LED on
ABORT_UV_SENSOR_HIGH = const(8)    # S12: above the plausibility bound
ABORT_NAMES = ("NONE", "LID_OPEN", "LOW_UV", "TIMEOUT", "CANCELLED", "FAULT", "UV_SENSOR_STUCK",
               "UV_LED_DEAD", "UV_SENSOR_HIGH")

# Mailbox commands, core 0 -> core 1: Controller.cmd, with cmd_a/b/c as arguments.
CMD_NONE = const(0)
CMD_SESSION_START = const(1)     # a: depth_um, b: stroke Hz, c: max_session_s
CMD_SESSION_STOP = const(2)
CMD_STERILISE = const(3)
CMD_STERIL_CANCEL = const(4)
CMD_STERIL_FINISH = const(5)     # a: 1 the unlock is in flash (READY), 0 it is not (LOCKED)
CMD_FAULT_CLEAR = const(6)       # a: state after homing (LOCKED or READY)
CMD_FAULT = const(7)             # a: fault cause (core 0 latches a fault it found)

# Command results, core 1 -> core 0 (Controller.ack_result; ack_detail: a fault cause).
R_OK = const(0)
R_BUSY = const(1)
R_FAULT = const(2)
R_NO_FAULT = const(3)
R_FAULT_PRESENT = const(4)
R_LID_OPEN = const(5)
R_NOT_RUNNING = const(6)
R_NOT_STERILISING = const(7)
R_NO_CARTRIDGE = const(8)
R_LOCKED = const(9)
R_BAD_COMMAND = const(10)

# Board.sample(buf) layout: the analogue inputs, read in one call per tick.
SAMPLE_CURRENT_MA = const(0)
SAMPLE_BATTERY_MV = const(1)
SAMPLE_TEMP_CDEGC = const(2)
SAMPLE_DEPTH_UM = const(3)
SAMPLE_FIELDS = const(4)
