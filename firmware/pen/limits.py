# Every safety constant of the pen, in integer units, in one place.
# Units: um (micrometre), cHz (centi-hertz), bp (basis points, 1/10000), mA,
# cdegC (centi-degree C), mV, ms, us, pm (permille of nominal).
# Written in the subset common to MicroPython and CPython: the host imports it.
try:
    from micropython import const
except ImportError:  # CPython (host tool, tests)
    def const(value):
        return value

FIRMWARE_VERSION = "1.0.0"
PROTOCOL_VERSION = const(2)

# --- control tick (docs/design.md §2.3: 1 kHz on core 1, drift-free) ---
TICK_US = const(1000)
# Pen-time ms counters in the tick (sample times, fault times) wrap explicitly below
# 2**30, the RP2040's small-int limit (core 0 unwraps them for the wire).
MS_MASK = const(0x3FFFFFFF)
LATE_BUCKET_US = const(5)          # tick lateness histogram: 5 us buckets ...
LATE_BUCKETS = const(200)          # ... up to 1 ms; the last bucket counts everything later
CMD_ACK_WAIT_MS = const(50)        # core 1 acknowledges a command within a period; fail closed after this

# --- S1: needle depth set point ---
DEPTH_MIN_UM = const(250)
DEPTH_MAX_UM = const(2500)
DEPTH_STEP_UM = const(50)          # set-point grid
DEPTH_UM_PER_STEP = const(5)       # lead screw travel per actuator microstep
DEPTH_TRAVEL_UM = const(3000)      # mechanical travel from the retracted end-stop
DEPTH_HOME_MAX_STEPS = const(800)  # > travel/step: end-stop not found after this -> HOMING fault

# --- S2: depth verification ---
DEPTH_TOL_UM = const(50)           # |measured - set| allowed once settled
DEPTH_SETTLE_MS = const(20)        # sensor must agree this long after a move
DEPTH_JAM_TIMEOUT_MS = const(375)  # after the last step, the sensor must agree within this: else DEPTH_JAM

# --- S3: stroke frequency ---
HZ_MIN = const(50)
HZ_MAX = const(150)
SOFT_START_MS = const(150)         # set-point ramp length
SPEED_KP_BP_PER_CHZ_X10 = const(2)  # P: duty bp per 10 cHz of error
SPEED_KI_SHIFT = const(7)          # I: duty bp per (cHz * ms) >> shift
DUTY_MAX_BP = const(9500)
# Feed-forward from the stroke motor's datasheet model: volts needed for a
# frequency at nominal load, divided by the measured battery voltage.
MOTOR_FF_MV_PER_HZ = const(15)     # back-EMF 13.5 mV/Hz + load 1.5 mA/Hz * 1 ohm
MOTOR_FF_MV_OFFSET = const(100)    # no-load current 100 mA * 1 ohm
MOTOR_FF_MV_PER_HZ_S_X10 = const(5)  # accelerating the rotor: 0.5 mV per Hz/s of ramp slope
MOTOR_R_MOHM = const(1000)         # winding resistance: locked-rotor current = V / R

# --- S4: motor protection ---
# A reading beyond a limit is confirmed by a second reading later in the same tick
# (rejects a single conversion glitch) and acts at once: motor off within one period
# plus the tick's own time of the event, never two periods (docs/design.md §2.1 S4).
TACH_TIMEOUT_PERIODS = const(2)    # driven, no tach edge for 2 expected strokes -> STALL / TACH_LOSS
STALL_EMF_PCT = const(15)          # back-EMF below 15 % of the applied voltage: rotor not turning
STALL_MIN_MA = const(300)
OVERCURRENT_MA = const(1500)       # trips below the DRV8837's 1.8 A rating and the ADC's 3.3 A full scale
LOCKED_ROTOR_PCT = const(120)      # above 120 % of applied/R: more than a locked rotor draws -> OVERCURRENT
MOTOR_OFF_MAX_MA = const(100)      # commanded off yet drawing this much: MOTOR_STUCK_ON
MOTOR_OFF_SETTLE_MS = const(2)     # ... once the current had this long to decay after the off command
MOTOR_SPINDOWN_MS = const(1000)    # a tach edge later than this after the off command: turning while off
OVERTEMP_CDEGC = const(4100)       # handpiece >= 41 degC
BATTERY_MIN_MV = const(3300)

# --- S5: sterilisation ---
UV_MIN_PM = const(800)             # >= 80 % of nominal intensity, continuously
UV_DARK_MAX_PM = const(50)         # S12: the sensor with the LED off must read below this (before and after)
UV_MAX_PM = const(1300)            # S12: above this the reading is implausible (lamp 96 %, TIA saturates 1650)
UV_SETTLE_MS = const(10)           # LED / sensor settling after switching, before a reading counts
UV_DOSE_TARGET = const(60000000)   # 60 s at nominal: 60000 ms * 1000 pm
UV_TIMEOUT_MS = const(120000)      # cycle gives up (aborts) after this

# --- S6 / S8: sessions ---
SESSION_MIN_S = const(10)
SESSION_MAX_S = const(1800)
USED_CARTRIDGES_MAX = const(200)   # oldest forgotten first (IDs are random 64-bit)
CARTRIDGE_ID_HEX = const(16)       # a 1-Wire ROM ID: 8 bytes, 16 upper-case hex digits

# --- profiles ---
PROFILE_NAME_MAX = const(24)
PROFILES_MAX = const(16)

# --- session log ---
LOG_MAX_ENTRIES = const(50)

# --- telemetry ---
TELEMETRY_PERIOD_MS = const(20)    # 50 Hz
TELEMETRY_RING = const(64)         # samples kept
TELEMETRY_LEASE_DEFAULT = const(250)  # samples a subscription may send unless renewed (5 s)
TELEMETRY_LEASE_MAX = const(3000)  # 60 s

# --- wire ---
FRAME_MAX = const(2048)            # bytes per frame, newline excluded (16 profiles fit one reply)
RX_BYTES_PER_PASS = const(64)      # bounded protocol work per loop pass

# --- S16-S20: clinical safety (docs/clinical.md) ---
DEPTH_CEILING_DEFAULT_UM = const(500)  # factory-fresh pen: scalp depth
AUTH_NONCE_MS = const(30000)       # a nonce answers once, within 30 s of pen time
AUTH_FAILURES_MAX = const(5)       # failures in a row that lock privileged ops
AUTH_LOCK_S = const(60)            # first lock; doubles with each further lock ...
AUTH_LOCK_MAX_S = const(86400)     # ... up to a day (keeps the pen serviceable)
CLOCK_BACK_FREE_S = const(3600)    # setting the clock back further needs the key
INTERVAL_DAYS_MAX = const(90)      # profile min_interval_days 0..90
DAY_S = const(86400)
# Accepted wall-clock range (2020-01-01 .. 2100-01-01 UTC). Plain ints: above the RP2040's
# small-int range, so not const().
UTC_MIN_S = 1577836800
UTC_MAX_S = 4102444800
AUDIT_PAGES = const(8)             # audit ring: 8 records ...
AUDIT_PAGE_ENTRIES = const(8)      # ... of 8 entries: the newest 57-64 entries are kept
