# The 1 kHz control tick, run on core 1 (docs/design.md §2.3): stroke-motor speed loop,
# interlocks, depth actuator, sterilisation dose, session timer, telemetry samples.
#
# Rules (checked by tests): integer units only; no allocation at any uptime (the tick
# runs under micropython.heap_lock() in tests); every integer below 2**30 in magnitude
# (the RP2040's small-int limit; pen-time ms counters wrap at limits.MS_MASK); time only
# from the tick's own pen time `now_us` (wrap-safe ticks_diff) and accumulators of
# elapsed ms, never tick counts; no flash writes. Each shared field has one writer:
#   core 0 writes cmd, cmd_a, cmd_b, cmd_c, then cmd_seq (the mailbox);
#   core 1 writes everything else: it executes a command at the start of its next tick,
#   checked against its own state, then publishes ack_result/ack_detail and ack_seq.
#   Core 1 tells core 0 about things through counters only it increments (ev_*) and the
#   telemetry ring (a sample is written before tm_count counts it).
# No attribute is created after __init__ (core 0 reads the object while core 1 writes).
#
# The tick and the interlocks use the native code emitter (about 1.8x faster than
# bytecode on the unix port); `penctl flash` compiles this module for the pen's CPU.
# Phases that run rarely or in other states are in pen.phases (class Phases).
# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
import micropython
from micropython import const

from .codes import (  # noqa: F401 - re-exported: the app, the boards and the tests use these names
    ABORT_CANCELLED, ABORT_FAULT, ABORT_LID_OPEN, ABORT_LOW_UV, ABORT_NAMES, ABORT_NONE, ABORT_TIMEOUT,
    ABORT_UV_LED_DEAD, ABORT_UV_SENSOR_HIGH, ABORT_UV_SENSOR_STUCK, BOOT, CMD_FAULT, CMD_FAULT_CLEAR,
    CMD_NONE, CMD_SESSION_START, CMD_SESSION_STOP, CMD_STERIL_CANCEL, CMD_STERIL_FINISH, CMD_STERILISE,
    END_CARTRIDGE_OUT, END_CRASH, END_CTRL_C, END_FAULT, END_INTERRUPTED, END_NAMES, END_NONE,
    END_POWER_LOSS, END_STOPPED, END_TIME_LIMIT, F_DEPTH_DEVIATION, F_DEPTH_JAM, F_HOMING, F_INTERNAL,
    F_LOW_BATTERY, F_MOTOR_STUCK_ON, F_NONE, F_OVER_DEPTH, F_OVERCURRENT, F_OVERTEMP, F_STALL,
    F_TACH_LOSS, FAULT, FAULT_NAMES, LOCKED, R_BAD_COMMAND, R_BUSY, R_FAULT, R_FAULT_PRESENT,
    R_LID_OPEN, R_LOCKED, R_NO_CARTRIDGE, R_NO_FAULT, R_NOT_RUNNING, R_NOT_STERILISING, R_OK, READY,
    RUNNING, SAMPLE_BATTERY_MV, SAMPLE_CURRENT_MA, SAMPLE_DEPTH_UM, SAMPLE_FIELDS, SAMPLE_TEMP_CDEGC,
    STATE_NAMES, STERILISING,
)
from .compat import ticks_diff
from .limits import (
    BATTERY_MIN_MV, DEPTH_TOL_UM, DUTY_MAX_BP, LOCKED_ROTOR_PCT, MOTOR_FF_MV_OFFSET,
    MOTOR_FF_MV_PER_HZ, MOTOR_OFF_MAX_MA, MOTOR_OFF_SETTLE_MS, MOTOR_R_MOHM, MOTOR_SPINDOWN_MS, MS_MASK,
    OVERCURRENT_MA, OVERTEMP_CDEGC, SOFT_START_MS, SPEED_KI_SHIFT, SPEED_KP_BP_PER_CHZ_X10, STALL_EMF_PCT,
    STALL_MIN_MA, TELEMETRY_PERIOD_MS,
)
from .phases import (
    D_HOLD, D_HOMING, M_DRIVE, M_OFF, M_RETRACT, TACH_MASK, U_DONE, Phases,
)

_CHZ_US = const(100000000)   # cHz * us per stroke: hz_chz = _CHZ_US * strokes // period_us
_AGE_CAP_US = const(1000000)  # time since the last tach edge saturates here (stays a small int)
_INTEG_MAX = const(3000 << 6)
_MS_HALF = const(0x20000000)  # half the ms counter range: wrap-safe ms differences


def ms_since(now_ms, then_ms):
    """Elapsed ms between two wrapped pen-time ms stamps (less than 2**29 apart)."""
    return ((now_ms - then_ms + _MS_HALF) & MS_MASK) - _MS_HALF


class Controller(Phases):
    # Over 400 lines with pen.phases split off, because the tick's common path is inlined
    # here on purpose: each method call and attribute access counts against the tick budget.

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
        self._last_us = 0          # the previous tick's pen time (us)
        self._rem_us = 0           # us of elapsed time not yet counted in ms
        # event counters, core 1 -> core 0 (only core 1 increments them)
        self.ev_state = 0          # the state changed
        self.ev_fault = 0          # a fault latched (fault, fault_ms)
        self.ev_session_end = 0    # a session ended (end_reason, session_ms, strokes, end_fault)
        self.ev_steril_done = 0    # dose reached, checked dark again, UV off: waits for CMD_STERIL_FINISH
        self.ev_steril_abort = 0   # a cycle aborted (abort_reason)
        # stroke motor
        self.motor_on = False      # commanded on
        self.hz_set_chz = 0
        self.hz_ref_chz = 0
        self.duty_bp = 0
        self._integ = 0
        self._drive_ms = 0         # time driven this session, saturating
        self._tach_timeout_us = 1000000
        self._ff_mv = 0
        self._ff_accel_mv = 0
        self._tach_last_count = board.tach_count()
        self._tach_last_us = board.tach_edge_us()
        self._edge_age_us = _AGE_CAP_US  # time since the last tach edge (or drive start), saturating
        self._off_at_ms = 0        # pen time (wrapped ms) the motor was last commanded off
        self.session_tach_start = 0
        self.strokes = 0
        self.uv_on = False
        self._tm_left_ms = 0       # ms until the next telemetry sample

    def depth_um(self):
        # A method, not a property: a property on the class slows every attribute
        # store in MicroPython (each store then looks for a setter).
        return self._samples[SAMPLE_DEPTH_UM]

    def sample(self, index):
        """The latest reading of one analogue input (SAMPLE_* index)."""
        return self._samples[index]

    # ---- set-up by core 0 before core 1 runs ----

    def boot(self, now_us, now_ms, fault_cause, after_home):
        """Pen time of the start, a fault latched in flash (F_NONE: none) and the state to
        enter once homed (LOCKED or READY). Called before the control loop starts."""
        self._last_us = now_us
        self.now_ms = now_ms & MS_MASK
        self._off_at_ms = self.now_ms
        self._start_homing(after_home)
        if fault_cause != F_NONE:
            self.state = FAULT
            self.fault = fault_cause
            self.fault_ms = self.now_ms

    # ---- the tick (core 1) ----

    @micropython.native
    def tick(self, now_us):
        """One control period at pen time `now_us` (the loop's deadline, board.ticks_us clock)."""
        board = self.board
        dt_us = ticks_diff(now_us, self._last_us) + self._rem_us
        self._last_us = now_us
        if dt_us < 0:
            dt_us = 0
        dt_ms = dt_us // 1000
        self._rem_us = dt_us - dt_ms * 1000
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
            count = board.tach_count()
            last = self._tach_last_count
            edge = count != last
            if edge:
                edge_us = board.tach_edge_us()
                period_us = ticks_diff(edge_us, self._tach_last_us)
                strokes = (count - last) & TACH_MASK
                if period_us > 0:
                    if strokes == 1:
                        self.hz_chz = _CHZ_US // period_us
                    elif strokes < 9:
                        self.hz_chz = _CHZ_US * strokes // period_us
                self._tach_last_count = count
                self._tach_last_us = edge_us
                age = ticks_diff(now_us, edge_us)
                if age < 0:
                    age = 0
            else:
                age = self._edge_age_us
                if age < _AGE_CAP_US:
                    age = ticks_diff(now_us, self._tach_last_us)
                    if age > _AGE_CAP_US:
                        age = _AGE_CAP_US
                if age > 0:
                    # No new edge: the speed is at most one stroke per time since the last one.
                    bound = _CHZ_US // age
                    if self.hz_chz > bound:
                        self.hz_chz = bound
            self._edge_age_us = age
            # Interlocks (S4): every tick; the work is in the rare branches.
            if self.state != FAULT:
                if self.motor_on:
                    if current >= STALL_MIN_MA or age >= self._tach_timeout_us:
                        self._motor_interlocks(current, battery, age)
                elif current >= MOTOR_OFF_MAX_MA or edge:
                    self._motor_off_check(now_ms, current, edge)
                if samples[SAMPLE_TEMP_CDEGC] >= OVERTEMP_CDEGC:
                    self._confirm_temp()
                if battery < BATTERY_MIN_MV:
                    self._confirm_battery()
            # Depth (S2): measured depth must follow the set point once settled.
            if self.depth_phase == D_HOLD:
                error = samples[SAMPLE_DEPTH_UM] - self.depth_target_um
                if (error > DEPTH_TOL_UM or error < -DEPTH_TOL_UM) and self.state != FAULT:
                    self._confirm_depth()
            else:
                self._depth_tick(board, dt_ms)
            state = self.state
            if state == RUNNING:
                if self.motor_phase == M_DRIVE:
                    session_ms = self.session_ms + dt_ms
                    self.session_ms = session_ms
                    if not board.cartridge_present():
                        self._end_session(END_CARTRIDGE_OUT)      # S6
                    elif self._stop_request:
                        self._end_session(END_STOPPED)
                    elif session_ms >= self.session_max_ms:
                        self._end_session(END_TIME_LIMIT)         # S8
                    else:
                        # Speed loop (S3).
                        drive_ms = self._drive_ms
                        if drive_ms < 0x10000000:
                            drive_ms += dt_ms
                            self._drive_ms = drive_ms
                        if battery < 1000:
                            battery = 1000
                        if drive_ms < SOFT_START_MS:
                            # Soft start: the reference ramps linearly to the set point, open
                            # loop: feed-forward of the voltage this frequency and this
                            # acceleration need, over the measured battery voltage.
                            ref = self.hz_set_chz * drive_ms // SOFT_START_MS
                            duty = ((MOTOR_FF_MV_OFFSET + ref * MOTOR_FF_MV_PER_HZ // 100 + self._ff_accel_mv)
                                    * 10000 // battery)
                        else:
                            # Feed-forward plus PI on the tach-measured frequency once the
                            # ramp is done (during it the tach, one edge per stroke, lags).
                            ref = self.hz_set_chz
                            error = ref - self.hz_chz
                            integ = self._integ + error * dt_ms
                            if integ > _INTEG_MAX:
                                integ = _INTEG_MAX
                            elif integ < -_INTEG_MAX:
                                integ = -_INTEG_MAX
                            duty = (self._ff_mv * 10000 // battery + error * SPEED_KP_BP_PER_CHZ_X10 // 10
                                    + (integ >> SPEED_KI_SHIFT))
                            if 0 < duty < DUTY_MAX_BP:
                                self._integ = integ    # anti-windup: integrate only when not saturated
                        if duty > DUTY_MAX_BP:
                            duty = DUTY_MAX_BP
                        elif duty < 1:
                            duty = 1
                        self.hz_ref_chz = ref
                        self.duty_bp = duty
                        board.motor_drive(duty)
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

    # ---- interlocks (rare paths of the tick) ----

    @micropython.native
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

    @micropython.native
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

    @micropython.native
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

    @micropython.native
    def _confirm_temp(self):
        confirm = self._confirm
        self.board.sample(confirm)
        if confirm[SAMPLE_TEMP_CDEGC] >= OVERTEMP_CDEGC:
            self.fault_now(F_OVERTEMP)

    @micropython.native
    def _confirm_battery(self):
        confirm = self._confirm
        self.board.sample(confirm)
        if confirm[SAMPLE_BATTERY_MV] < BATTERY_MIN_MV:
            self.fault_now(F_LOW_BATTERY)

    @micropython.native
    def _confirm_depth(self):
        confirm = self._confirm
        self.board.sample(confirm)
        first = self._samples[SAMPLE_DEPTH_UM] - self.depth_target_um
        error = confirm[SAMPLE_DEPTH_UM] - self.depth_target_um
        if error > DEPTH_TOL_UM and first > 0:
            self.fault_now(F_OVER_DEPTH)
        elif error < -DEPTH_TOL_UM and first < 0:
            self.fault_now(F_DEPTH_DEVIATION)

    @micropython.native
    def fault_now(self, cause):
        board = self.board
        board.motor_coast()     # first: power off
        board.uv_set(False)
        if self.motor_on:
            self._off_at_ms = self.now_ms
        self.motor_on = False
        self.uv_on = False
        self.duty_bp = 0
        self.hz_ref_chz = 0
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

    def _read_now(self):
        self.board.sample(self._confirm)     # readings of this instant, not of the last tick
        return True

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
            if state != RUNNING or self.motor_phase == M_RETRACT:
                result = R_NOT_RUNNING
            else:
                self._stop_request = True
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
            elif self._read_now() and self.fault_present(self._confirm):
                result = R_FAULT_PRESENT
                detail = self.fault
            else:
                detail = self.fault
                self.fault = F_NONE
                self._start_homing(a)      # BOOT checks again (docs/design.md §2.2)
        elif cmd == CMD_FAULT:
            self.fault_now(a)
        else:
            result = R_BAD_COMMAND
        self.ack_result = result
        self.ack_detail = detail
        self.ack_seq = seq                 # published last
