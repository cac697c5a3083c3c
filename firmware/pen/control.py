# The 1 kHz control tick, run on core 1 (docs/design.md §2.3): stroke-motor speed loop,
# interlocks, depth actuator, sterilisation dose, session timer, telemetry samples.
#
# Rules (checked by tests): integer units only; no allocation at any uptime (the tick
# runs under micropython.heap_lock() in tests); every integer below 2**30 in magnitude
# (the RP2040's small-int limit; pen-time ms counters wrap at limits.MS_MASK); time only
# from the tick's pen time and the elapsed time the loop passes in (wrap-safe ticks_diff,
# ms accumulators that saturate or wrap), never tick counts; no flash writes. Each
# shared field has one writer:
#   core 0 writes cmd, cmd_a, cmd_b, cmd_c, then cmd_seq (the mailbox);
#   core 1 writes everything else: it executes a command at the start of its next tick,
#   checked against its own state, then publishes ack_result/ack_detail and ack_seq.
#   Core 1 tells core 0 about things through counters only it increments (ev_*) and the
#   telemetry ring (a sample is written before tm_count counts it).
# No attribute is created after __init__ (core 0 reads the object while core 1 writes).
#
# The tick and the interlocks use the native code emitter; `penctl flash` compiles this
# module for the pen's CPU. Each attribute access and each imported name costs a lookup
# per tick (measured: docs/performance.md), so the common path (a running session, depth
# held) is inlined here and reads every attribute once. Phases that run rarely or in other
# states are in pen.phases (class Phases, which Controller extends).
#
# The control core's vocabulary is defined here, once (states, fault causes, session end
# and sterilisation abort reasons, the mailbox commands and results, Board.sample()'s
# layout, the phases): MicroPython folds a const() only inside its own module.

# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
import micropython
from micropython import const

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

# Why a session ended. Index into END_NAMES. CTRL_C, CRASH and POWER_LOSS are written by
# core 0 (the control core is stopped, or was never told).
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
CMD_SESSION_START = const(1)     # a: depth_um, b: stroke Hz, c: the session's limit, ms (S8)
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

# Board.sample(buf) layout: every input the tick reads, in one call per tick (each call
# into the board costs as much as a dozen lines of the tick). `buf` is a list: the tach
# edge time is a ticks_us() value (up to 2**62 on the unix port).
SAMPLE_CURRENT_MA = const(0)
SAMPLE_BATTERY_MV = const(1)
SAMPLE_TEMP_CDEGC = const(2)
SAMPLE_DEPTH_UM = const(3)
SAMPLE_TACH_COUNT = const(4)     # tach edges since boot, wrapping at TACH_MASK ...
SAMPLE_TACH_US = const(5)        # ... and the ticks_us() time of that edge (one consistent pair)
SAMPLE_CARTRIDGE = const(6)      # 1: a cartridge is seated
SAMPLE_LID = const(7)            # 1: the dock lid is closed
SAMPLE_FIELDS = const(8)

# Depth actuator phases.
D_HOMING = const(0)
D_MOVING = const(1)
D_SETTLING = const(2)
D_HOLD = const(3)

# Motor phases within RUNNING.
M_OFF = const(0)
M_POSITIONING = const(1)
M_DRIVE = const(2)
M_RETRACT = const(3)

# Sterilisation phases (S5, S12): dark check, UV on (settling, then dose), dark check again.
U_DARK_BEFORE = const(0)
U_ON = const(1)
U_DARK_AFTER = const(2)
U_DONE = const(3)

# Tach edge counts wrap at 2**29 on the pen (a small int inside the hard IRQ): stroke
# counts are differences modulo this.
TACH_MASK = const(0x1FFFFFFF)

from .compat import ticks_diff  # noqa: E402
from .limits import (  # noqa: E402
    BATTERY_MIN_MV,
    DEPTH_TOL_UM,
    DUTY_MAX_BP,
    HZ_MAX,
    LOCKED_ROTOR_PCT,
    MOTOR_FF_MV_OFFSET,
    MOTOR_FF_MV_PER_HZ,
    MOTOR_OFF_MAX_MA,
    MOTOR_OFF_SETTLE_MS,
    MOTOR_R_MOHM,
    MOTOR_SPINDOWN_MS,
    MS_MASK,
    OVERCURRENT_MA,
    OVERTEMP_CDEGC,
    SOFT_START_MS,
    SPEED_KI_SHIFT,
    SPEED_KP_BP_PER_CHZ_X10,
    STALL_EMF_PCT,
    STALL_MIN_MA,
    TACH_TIMEOUT_PERIODS,
    TELEMETRY_PERIOD_MS,
    TELEMETRY_RING,
)
from .phases import Phases  # noqa: E402 - it imports the names above
from .proto import (  # noqa: E402
    TM_BATTERY_MV,
    TM_CURRENT_MA,
    TM_DEPTH_SET_UM,
    TM_DEPTH_UM,
    TM_DUTY_BP,
    TM_FAULTS,
    TM_FIELDS,
    TM_HZ_CHZ,
    TM_HZ_SET_CHZ,
    TM_OVERRUNS,
    TM_STATE,
    TM_STROKES,
    TM_T_MS,
    TM_TEMP_CDEGC,
    TM_TICK_MAX_US,
)

# The telemetry sample's field positions (pen.proto), unpacked once per sample.
_TM_INDEX = (TM_T_MS, TM_STATE, TM_DEPTH_SET_UM, TM_DEPTH_UM, TM_HZ_SET_CHZ, TM_HZ_CHZ, TM_DUTY_BP,
             TM_CURRENT_MA, TM_TEMP_CDEGC, TM_BATTERY_MV, TM_STROKES, TM_FAULTS, TM_OVERRUNS, TM_TICK_MAX_US)
# The shortest tach timeout (at the highest frequency): below it the per-session one is not read.
_MIN_TACH_TIMEOUT_US = TACH_TIMEOUT_PERIODS * 1000000 // HZ_MAX

_CHZ_US = const(100000000)     # cHz * us per stroke: hz_chz = _CHZ_US * strokes // period_us
_CHZ_US_64 = const(1562500)    # the same, with the time in 64 us units (products stay small ints)
_AGE_CAP_US = const(1000000)   # time since the last tach edge saturates here
_INTEG_MAX = const(3000 << 6)
_MS_HALF = const(0x20000000)   # half the ms counter range: wrap-safe ms differences
_COUNT_MASK = const(0x3FFFFFFF)  # tm_count wraps below 2**30 (a multiple of TELEMETRY_RING)


def ms_since(now_ms, then_ms):
    """Elapsed ms between two wrapped pen-time ms stamps (less than 2**29 apart)."""
    return ((now_ms - then_ms + _MS_HALF) & MS_MASK) - _MS_HALF


class Controller(Phases):
    # Over 400 lines (the phases are already in pen.phases) because the tick's common path
    # is inlined here on purpose and its interlocks share its folded constants (see the top
    # of this file).

    def __init__(self, board):
        Phases.__init__(self, board)       # board, inputs, telemetry ring, phases
        # ---- written by core 0 only: the command mailbox ----
        self.cmd = CMD_NONE
        self.cmd_a = 0
        self.cmd_b = 0
        self.cmd_c = 0
        self.cmd_seq = 0
        # ---- written by core 1 only ----
        self.ack_seq = 0
        self.ack_result = R_OK
        self.ack_detail = 0
        self.state = BOOT
        self.fault = F_NONE
        self.fault_ms = 0          # pen time (ms, wrapped at MS_MASK) at which the fault latched
        # event counters, core 1 -> core 0 (only core 1 increments them)
        self.ev_state = 0          # the state changed
        self.ev_fault = 0          # a fault latched (fault, fault_ms)
        self.ev_session_end = 0    # a session ended (end_reason, session_ms, strokes, end_fault)
        self.ev_steril_done = 0    # dose reached, checked dark again, UV off: waits for CMD_STERIL_FINISH
        self.ev_steril_abort = 0   # a cycle aborted (abort_reason)
        # stroke motor
        self.motor_on = False      # commanded on
        self.hz_set_chz = 0
        self.duty_bp = 0
        self._integ = 0
        self._drive_ms = 0         # time driven this session; stops counting once past the soft start
        self._tach_timeout_us = 1000000
        self._current_alarm_ma = STALL_MIN_MA   # above it the tick checks the current closely
        self._ff_mv = 0
        self._ff_accel_mv = 0
        self._tach_last_count = board.tach_count()
        self._tach_last_us = board.tach_edge_us()
        self._edge_age_us = _AGE_CAP_US  # time since the last tach edge (or drive start), saturating
        self._tach_fresh = False   # the next edge starts the measurement (the rotor came from rest)
        self._off_at_ms = 0        # pen time (wrapped ms) the motor was last commanded off
        self.session_tach_start = 0
        self.strokes = 0
        self.uv_on = False
        self._tm_left_ms = 0       # ms until the next telemetry sample
        self._pi_at_ms = 0         # pen time (wrapped ms) of the last speed loop update

    def depth_um(self):
        # A method, not a property: a property on the class slows every attribute
        # store in MicroPython (each store then looks for a setter).
        return self._samples[SAMPLE_DEPTH_UM]

    def sample(self, index):
        """The latest reading of one analogue input (SAMPLE_* index)."""
        return self._samples[index]

    # ---- set-up by core 0 before core 1 runs ----

    def boot(self, fault_cause, after_home):
        """A fault latched in flash (F_NONE: none) and the state to enter once homed
        (LOCKED or READY). Called before the control loop starts."""
        self._start_homing(after_home)
        if fault_cause != F_NONE:
            self.state = FAULT
            self.fault = fault_cause

    def start_clock(self, now_ms):
        """Pen time (ms since power-on) when the control loop starts. The motor counts as
        commanded off from now: a rotor still coasting from before a reset gets its
        spin-down time."""
        self.now_ms = now_ms & MS_MASK
        self._off_at_ms = self.now_ms
        self._pi_at_ms = self.now_ms

    # ---- the tick (core 1) ----

    @micropython.native
    def tick(self, now_us, dt_ms):
        """One control period at pen time `now_us` (the loop's deadline, on the board's
        ticks_us clock), `dt_ms` after the previous one."""
        board = self.board
        now_ms = (self.now_ms + dt_ms) & MS_MASK
        self.now_ms = now_ms
        try:
            if self.cmd_seq != self.ack_seq:
                self._execute()
            samples = self._samples
            board.sample(samples)          # all analogue inputs in one call
            current = samples[SAMPLE_CURRENT_MA]
            battery = samples[SAMPLE_BATTERY_MV]
            # Stroke frequency from the tach: strokes over the time between edges.
            count = samples[SAMPLE_TACH_COUNT]
            last = self._tach_last_count
            edge = count != last
            if edge:
                edge_us = samples[SAMPLE_TACH_US]
                period_us = ticks_diff(edge_us, self._tach_last_us)
                strokes = (count - last) & TACH_MASK
                if period_us > 0 and strokes < 9:
                    if self._tach_fresh:
                        self._tach_fresh = False     # the first edge after the drive start: a reference only
                    else:
                        self.hz_chz = _CHZ_US * strokes // period_us
                self._tach_last_count = count
                self._tach_last_us = edge_us
                age = ticks_diff(now_us, edge_us)
                if age < 0:
                    age = 0
            else:
                age = self._edge_age_us + dt_ms * 1000
                if age > _AGE_CAP_US:
                    age = _AGE_CAP_US
                hz = self.hz_chz
                if hz * (age >> 6) > _CHZ_US_64:
                    # No new edge: the speed is at most one stroke per time since the last one.
                    self.hz_chz = _CHZ_US // age
            self._edge_age_us = age
            # Interlocks (S4): every tick; the work is in the rare branches (which may latch
            # a fault: the state is read again after each).
            state = self.state
            if state != FAULT:
                if self.motor_on:
                    if current >= self._current_alarm_ma or (age >= _MIN_TACH_TIMEOUT_US
                                                             and age >= self._tach_timeout_us):
                        self._motor_interlocks(current, battery, age)
                        state = self.state
                elif current >= MOTOR_OFF_MAX_MA or edge:
                    self._motor_off_check(now_ms, current, edge)
                    state = self.state
                if samples[SAMPLE_TEMP_CDEGC] >= OVERTEMP_CDEGC:
                    self._confirm_temp()
                    state = self.state
                if battery < BATTERY_MIN_MV:
                    self._confirm_battery()
                    state = self.state
            # Depth (S2): measured depth must follow the set point once settled.
            if self.depth_phase == D_HOLD:
                error = samples[SAMPLE_DEPTH_UM] - self.depth_target_um
                if (error > DEPTH_TOL_UM or error < -DEPTH_TOL_UM) and state != FAULT:
                    self._confirm_depth()
                    state = self.state
            else:
                self._depth_tick(board, dt_ms)
                state = self.state
            if state == RUNNING:
                if self.motor_phase == M_DRIVE:
                    session_ms = self.session_ms + dt_ms
                    self.session_ms = session_ms
                    if not samples[SAMPLE_CARTRIDGE]:
                        self._end_session(END_CARTRIDGE_OUT)      # S6
                    elif session_ms >= self.session_max_ms:       # S8 (a stop request sets the limit to 0)
                        self._end_session(END_STOPPED if self._stop_request else END_TIME_LIMIT)
                    elif edge or self._drive_ms < SOFT_START_MS:
                        self._speed_loop(board, battery, now_ms, dt_ms)   # S3
                else:
                    self._running_tick(board, now_us, dt_ms)
            elif state == STERILISING:
                self._steril_tick(board, dt_ms)
            elif state == BOOT:
                if self.homed and self.depth_phase == D_HOLD:
                    self.state = self._after_home
                    self.ev_state += 1
            left = self._tm_left_ms - dt_ms
            if left <= 0:
                self._telemetry_sample()
                left += TELEMETRY_PERIOD_MS
                if left <= 0:
                    left = TELEMETRY_PERIOD_MS   # after an overrun: resume the grid from now
            self._tm_left_ms = left
        except Exception:
            # A failing update coasts the motor and latches (pybricks).
            self.fault_now(F_INTERNAL)

    @micropython.native
    def _speed_loop(self, board, battery, now_ms, dt_ms):
        """S3: every ms of the soft start, then at each new speed reading (a tach edge:
        the measurement changes only there, so the PI runs only there)."""
        if battery < 1000:
            battery = 1000
        drive_ms = self._drive_ms
        ramp = drive_ms < SOFT_START_MS
        if ramp:
            drive_ms += dt_ms
            if drive_ms < SOFT_START_MS:
                self._drive_ms = drive_ms
            else:
                self._drive_ms = SOFT_START_MS + 1   # ramp over: the count stops here
                ramp = False                         # and the PI takes over in this very tick
        if ramp:
            # Soft start: the reference ramps linearly to the set point, open loop:
            # feed-forward of the voltage this frequency and this acceleration need, over
            # the measured battery voltage.
            ref = self.hz_set_chz * drive_ms // SOFT_START_MS
            duty = (MOTOR_FF_MV_OFFSET + ref * MOTOR_FF_MV_PER_HZ // 100 + self._ff_accel_mv) * 10000 // battery
        else:
            # Feed-forward plus PI on the tach-measured frequency once the ramp is done
            # (during it the tach, one edge per stroke, lags). The integral counts the
            # time since the previous update.
            elapsed = ((now_ms - self._pi_at_ms + _MS_HALF) & MS_MASK) - _MS_HALF
            if elapsed > 1000:
                elapsed = 1000
            error = self.hz_set_chz - self.hz_chz
            integ = self._integ + error * elapsed
            if integ > _INTEG_MAX:
                integ = _INTEG_MAX
            elif integ < -_INTEG_MAX:
                integ = -_INTEG_MAX
            duty = (self._ff_mv * 10000 // battery + error * SPEED_KP_BP_PER_CHZ_X10 // 10
                    + (integ >> SPEED_KI_SHIFT))
            if 0 < duty < DUTY_MAX_BP:
                self._integ = integ    # anti-windup: integrate only when not saturated
        self._pi_at_ms = now_ms
        if duty > DUTY_MAX_BP:
            duty = DUTY_MAX_BP
        elif duty < 1:
            duty = 1
        if duty != self.duty_bp:
            self.duty_bp = duty
            board.motor_drive(duty)
            if drive_ms >= SOFT_START_MS:
                # The lowest current that can be a fault at this voltage: what a rotor with
                # less than STALL_EMF_PCT back-EMF draws, or the over-current limit. The tick
                # looks closer only above it (_motor_interlocks).
                alarm = battery * duty // 10000 * (100 - STALL_EMF_PCT) * 10 // MOTOR_R_MOHM
                if alarm > OVERCURRENT_MA:
                    alarm = OVERCURRENT_MA
                elif alarm < STALL_MIN_MA:
                    alarm = STALL_MIN_MA
                self._current_alarm_ma = alarm

    @micropython.native
    def _telemetry_sample(self):
        ring = self.tm_ring
        count = self.tm_count
        base = (count % TELEMETRY_RING) * TM_FIELDS
        (i_t, i_state, i_depth_set, i_depth, i_hz_set, i_hz, i_duty, i_current, i_temp, i_battery,
         i_strokes, i_faults, i_overruns, i_tick_max) = _TM_INDEX
        state = self.state
        samples = self._samples
        ring[base + i_t] = self.now_ms
        ring[base + i_state] = state
        ring[base + i_depth_set] = self.depth_target_um
        ring[base + i_depth] = samples[SAMPLE_DEPTH_UM]
        ring[base + i_hz_set] = self.hz_set_chz if state == RUNNING else 0
        ring[base + i_hz] = self.hz_chz
        ring[base + i_duty] = self.duty_bp
        ring[base + i_current] = samples[SAMPLE_CURRENT_MA]
        ring[base + i_temp] = samples[SAMPLE_TEMP_CDEGC]
        ring[base + i_battery] = samples[SAMPLE_BATTERY_MV]
        if state == RUNNING and self.motor_on:
            self.strokes = (samples[SAMPLE_TACH_COUNT] - self.session_tach_start) & TACH_MASK
        ring[base + i_strokes] = self.strokes
        ring[base + i_faults] = self.faults
        ring[base + i_overruns] = self.overruns
        ring[base + i_tick_max] = self.tick_max_us
        self.tm_count = (count + 1) & _COUNT_MASK   # published after the sample is complete

    # ---- interlocks (rare paths of the tick) ----

    def _motor_interlocks(self, current, battery, age):
        applied_mv = battery * self.duty_bp // 10000
        if current >= STALL_MIN_MA:
            cause = self._current_fault(current, applied_mv)
            if cause != F_NONE:
                # Confirm with a second reading later in this tick (a conversion glitch is gone).
                confirm = self._confirm
                self.board.sample(confirm)
                if self._current_fault(confirm[SAMPLE_CURRENT_MA], applied_mv) != F_NONE:
                    self.fault_now(cause)
                    return
        # Driven but no tach edge for TACH_TIMEOUT_PERIODS expected strokes: stall
        # (rotor not turning) or a lost tach signal (rotor turning).
        if age >= self._tach_timeout_us and self._drive_ms > SOFT_START_MS:
            if (applied_mv - current * MOTOR_R_MOHM // 1000) * 100 < applied_mv * STALL_EMF_PCT:
                self.fault_now(F_STALL)
            else:
                self.fault_now(F_TACH_LOSS)

    def _current_fault(self, current, applied_mv):
        """The fault a motor current reading shows while driven (F_NONE: none). Over the
        limit is a fault whatever its cause; it is named STALL when the reading is what a
        locked rotor draws at this voltage, OVERCURRENT when it is more (a short)."""
        locked_ma = applied_mv * 1000 // MOTOR_R_MOHM
        if current * 100 > locked_ma * LOCKED_ROTOR_PCT:
            return F_OVERCURRENT if current >= OVERCURRENT_MA else F_NONE
        # Back-EMF (applied voltage - I*R) near zero while driven: the rotor is not
        # turning. Checked once the soft start is over (at rest it is zero).
        stalled = (self._drive_ms > SOFT_START_MS
                   and (applied_mv - current * MOTOR_R_MOHM // 1000) * 100 < applied_mv * STALL_EMF_PCT)
        if stalled:
            return F_STALL
        if current >= OVERCURRENT_MA:
            return F_OVERCURRENT if self._drive_ms > SOFT_START_MS else F_STALL
        return F_NONE

    def _motor_off_check(self, now_ms, current, edge):
        # Commanded off: no current once it had time to decay, no strokes after spin-down.
        off_ms = ms_since(now_ms, self._off_at_ms)
        if edge and off_ms > MOTOR_SPINDOWN_MS:
            self.fault_now(F_MOTOR_STUCK_ON)
            return
        if current >= MOTOR_OFF_MAX_MA and off_ms >= MOTOR_OFF_SETTLE_MS:
            confirm = self._confirm
            self.board.sample(confirm)
            if confirm[SAMPLE_CURRENT_MA] >= MOTOR_OFF_MAX_MA:
                self.fault_now(F_MOTOR_STUCK_ON)

    def _confirm_temp(self):
        confirm = self._confirm
        self.board.sample(confirm)
        if confirm[SAMPLE_TEMP_CDEGC] >= OVERTEMP_CDEGC:
            self.fault_now(F_OVERTEMP)

    def _confirm_battery(self):
        confirm = self._confirm
        self.board.sample(confirm)
        if confirm[SAMPLE_BATTERY_MV] < BATTERY_MIN_MV:
            self.fault_now(F_LOW_BATTERY)

    def _confirm_depth(self):
        confirm = self._confirm
        self.board.sample(confirm)
        first = self._samples[SAMPLE_DEPTH_UM] - self.depth_target_um
        error = confirm[SAMPLE_DEPTH_UM] - self.depth_target_um
        if error > DEPTH_TOL_UM and first > 0:
            self.fault_now(F_OVER_DEPTH)
        elif error < -DEPTH_TOL_UM and first < 0:
            self.fault_now(F_DEPTH_DEVIATION)

    def fault_now(self, cause):
        board = self.board
        board.motor_coast()     # first: power off
        board.uv_set(False)
        if self.motor_on:
            self._off_at_ms = self.now_ms
        self.motor_on = False
        self.uv_on = False
        self.duty_bp = 0
        self._integ = 0
        state = self.state
        if state == RUNNING:
            if self.end_reason == END_NONE:
                self.strokes = (board.tach_count() - self.session_tach_start) & TACH_MASK
                self.end_reason = END_FAULT
            self.end_fault = cause        # also a fault during the retraction (S14)
            self.ev_session_end += 1
        elif state == STERILISING:
            self.abort_reason = ABORT_FAULT
            self.ev_steril_abort += 1
        if state != FAULT:
            self.fault = cause
            self.fault_ms = self.now_ms
            self.faults += 1
            self.state = FAULT
            self.ev_state += 1
            self.ev_fault += 1
        self.motor_phase = M_OFF
        if self.homed and self.depth_phase != D_HOMING:
            self._move_depth(0)   # retract the needles

    def fault_present(self, samples):
        """The latched fault's cause can still be seen in these readings (S11):
        over-temperature, low battery, a motor drawing current while commanded off. The
        other causes show only in use, and homing (after a clear) checks the depth again."""
        fault = self.fault
        if fault == F_OVERTEMP:
            return samples[SAMPLE_TEMP_CDEGC] >= OVERTEMP_CDEGC
        if fault == F_LOW_BATTERY:
            return samples[SAMPLE_BATTERY_MV] < BATTERY_MIN_MV
        if fault == F_MOTOR_STUCK_ON:
            return samples[SAMPLE_CURRENT_MA] >= MOTOR_OFF_MAX_MA
        return False

    # ---- the command mailbox (core 1 executes, at the start of a tick) ----

    def _execute(self):
        seq = self.cmd_seq                 # the sequence number first: its arguments were written before it
        cmd = self.cmd
        a = self.cmd_a
        result = R_OK
        detail = 0
        state = self.state
        if cmd == CMD_SESSION_START:
            if state == FAULT:
                result = R_FAULT
            elif state == LOCKED:
                result = R_LOCKED
            elif state != READY:
                result = R_BUSY
            elif not self.board.cartridge_present():
                result = R_NO_CARTRIDGE
            else:
                self._start_session(a, self.cmd_b, self.cmd_c)
        elif cmd == CMD_SESSION_STOP:
            if state != RUNNING:
                result = R_NOT_RUNNING
            else:
                self._stop_request = True
                self.session_max_ms = 0    # the drive path checks one limit
        elif cmd == CMD_STERILISE:
            if state == FAULT:
                result = R_FAULT
            elif state != LOCKED and state != READY:
                result = R_BUSY
            elif not self.board.lid_closed():
                result = R_LID_OPEN
            else:
                self._start_sterilising()
        elif cmd == CMD_STERIL_CANCEL:
            if state != STERILISING:
                result = R_NOT_STERILISING
            else:
                self._abort_steril(ABORT_CANCELLED)
        elif cmd == CMD_STERIL_FINISH:
            if state != STERILISING or self.uv_phase != U_DONE:
                result = R_BUSY
            else:
                self.state = READY if a else LOCKED
                self.ev_state += 1
        elif cmd == CMD_FAULT_CLEAR:
            if state != FAULT:
                result = R_NO_FAULT
            else:
                confirm = self._confirm
                self.board.sample(confirm)     # readings of this instant, not of the last tick
                if self.fault_present(confirm):
                    result = R_FAULT_PRESENT
                    detail = self.fault
                else:
                    detail = self.fault
                    self.fault = F_NONE
                    self._off_at_ms = self.now_ms   # a rotor still coasting gets its spin-down time
                    self._start_homing(a)      # BOOT checks again (docs/design.md §2.2)
        elif cmd == CMD_FAULT:
            self.fault_now(a)
        else:
            result = R_BAD_COMMAND
        self.ack_result = result
        self.ack_detail = detail
        self.ack_seq = seq                 # published last
