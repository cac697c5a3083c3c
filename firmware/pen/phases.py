# The control core's phases outside the tick's common path (pen.control.Controller
# inherits them): the depth actuator (homing, moves, settling), a session's positioning
# and retraction, the sterilisation cycle (S5, S12) and the telemetry sample. Same rules
# as pen.control: run on core 1, no allocation, integers below 2**30, time from elapsed
# pen time (dt_ms) only.
import micropython

# pen.control imports this module after it defined these names (they are its vocabulary).
from .control import (
    ABORT_LID_OPEN,
    ABORT_LOW_UV,
    ABORT_NONE,
    ABORT_TIMEOUT,
    ABORT_UV_LED_DEAD,
    ABORT_UV_SENSOR_HIGH,
    ABORT_UV_SENSOR_STUCK,
    BOOT,
    D_HOLD,
    D_HOMING,
    D_MOVING,
    D_SETTLING,
    END_CARTRIDGE_OUT,
    END_NONE,
    END_STOPPED,
    END_TIME_LIMIT,
    F_DEPTH_JAM,
    F_HOMING,
    F_NONE,
    FAULT,
    LOCKED,
    M_DRIVE,
    M_OFF,
    M_POSITIONING,
    M_RETRACT,
    RUNNING,
    SAMPLE_CARTRIDGE,
    SAMPLE_DEPTH_UM,
    SAMPLE_FIELDS,
    SAMPLE_LID,
    STERILISING,
    TACH_MASK,
    U_DARK_AFTER,
    U_DARK_BEFORE,
    U_DONE,
    U_ON,
)
from .limits import (
    DEPTH_HOME_MAX_STEPS,
    DEPTH_JAM_TIMEOUT_MS,
    DEPTH_SETTLE_MS,
    DEPTH_TOL_UM,
    DEPTH_UM_PER_STEP,
    MOTOR_FF_MV_OFFSET,
    MOTOR_FF_MV_PER_HZ,
    MOTOR_FF_MV_PER_HZ_S_X10,
    SOFT_START_MS,
    STALL_MIN_MA,
    TACH_TIMEOUT_PERIODS,
    TELEMETRY_RING,
    UV_DARK_MAX_PM,
    UV_DOSE_TARGET,
    UV_MAX_PM,
    UV_MIN_PM,
    UV_SETTLE_MS,
    UV_TIMEOUT_MS,
)
from .compat import zeros
from .proto import TM_FIELDS


class Phases:
    def __init__(self, board):
        self.board = board
        # measured inputs, refreshed every tick; a second buffer for confirmation readings
        self._samples = [0] * SAMPLE_FIELDS
        self._confirm = [0] * SAMPLE_FIELDS
        self.now_ms = 0            # pen time of the current tick, ms wrapped at MS_MASK
        self.faults = 0            # faults latched since boot
        # timing statistics of the control loop (pen.loop writes them, on core 1)
        self.overruns = 0
        self.tick_max_us = 0
        self.hz_chz = 0
        # telemetry ring: TELEMETRY_RING samples of TM_FIELDS ints, written here
        self.tm_ring = zeros("i", TELEMETRY_RING * TM_FIELDS)
        self.tm_count = 0          # samples written since boot (index = count % RING), wraps at 2**30
        # depth actuator
        self.depth_phase = D_HOMING
        self.depth_steps = 0       # commanded position in actuator steps from the end-stop
        self.depth_set_um = 0
        self.depth_target_um = 0
        self._home_steps = 0
        self._depth_ms = 0         # time in the settling phase
        self._depth_good_ms = 0    # time the sensor agreed with the target, in a row
        self.homed = False
        self._after_home = LOCKED  # state entered once homed (core 0 says, through boot / fault clear)
        # session
        self.motor_phase = M_OFF
        self.session_ms = 0
        self.session_start_ms = 0  # pen time (wrapped ms) the session started
        self.session_max_ms = 0
        self.end_reason = END_NONE
        self.end_fault = F_NONE    # a fault that hit the session's end or its retraction
        self._stop_request = False
        # sterilisation
        self.uv_phase = U_DONE
        self._uv_phase_ms = 0
        self.uv_dose = 0
        self.uv_pm = 0
        self.steril_ms = 0
        self.abort_reason = ABORT_NONE

    def fault_now(self, cause):
        raise NotImplementedError   # pen.control.Controller's

    # ---- depth actuator ----

    def _start_homing(self, after_home):
        self.state = BOOT
        self.ev_state += 1
        self.depth_phase = D_HOMING
        self._home_steps = 0
        self.homed = False
        self._after_home = after_home

    def _move_depth(self, target_um):
        self.depth_target_um = target_um
        self.depth_phase = D_MOVING
        self._depth_ms = 0
        self._depth_good_ms = 0

    @micropython.native
    def _depth_tick(self, board, dt_ms):
        # Homing, moving and settling (the held phase is checked in tick()).
        phase = self.depth_phase
        if phase == D_HOMING:
            if board.depth_endstop():
                self.depth_steps = 0
                depth_um = self._samples[SAMPLE_DEPTH_UM]
                if depth_um > DEPTH_TOL_UM or depth_um < -DEPTH_TOL_UM:
                    self.fault_now(F_HOMING)
                    return
                self.homed = True
                self.depth_target_um = 0
                self.depth_phase = D_HOLD
                return
            self._home_steps += 1
            if self._home_steps > DEPTH_HOME_MAX_STEPS:
                self.fault_now(F_HOMING)
                return
            board.depth_step(-1)
            return
        if phase == D_MOVING:
            # Moves only with the motor stopped (S2). One step per tick.
            if self.motor_on:
                return
            target_steps = self.depth_target_um // DEPTH_UM_PER_STEP
            if self.depth_steps < target_steps:
                board.depth_step(1)
                self.depth_steps += 1
            elif self.depth_steps > target_steps:
                board.depth_step(-1)
                self.depth_steps -= 1
            else:
                self.depth_phase = D_SETTLING
                self._depth_ms = 0
                self._depth_good_ms = 0
            return
        # Settling: the sensor must agree with the target for DEPTH_SETTLE_MS in a row.
        error = self._samples[SAMPLE_DEPTH_UM] - self.depth_target_um
        self._depth_ms += dt_ms
        if error > DEPTH_TOL_UM or error < -DEPTH_TOL_UM:
            self._depth_good_ms = 0
            if self._depth_ms > DEPTH_JAM_TIMEOUT_MS:
                if self.state != FAULT:
                    self.fault_now(F_DEPTH_JAM)   # the carriage did not follow the steps
                else:
                    self.depth_phase = D_HOLD       # already faulted: stop trying
            return
        self._depth_good_ms += dt_ms
        if self._depth_good_ms >= DEPTH_SETTLE_MS:
            self.depth_phase = D_HOLD

    # ---- session ----

    def _start_session(self, depth_um, hz, limit_ms):
        self.depth_set_um = depth_um
        self.hz_set_chz = hz * 100
        self._tach_timeout_us = TACH_TIMEOUT_PERIODS * 1000000 // hz   # expected strokes, us
        # Feed-forward voltages for this set point, computed once instead of every tick.
        self._ff_mv = MOTOR_FF_MV_OFFSET + hz * MOTOR_FF_MV_PER_HZ
        self._ff_accel_mv = hz * 100 * 10 // SOFT_START_MS * MOTOR_FF_MV_PER_HZ_S_X10 // 10
        self.session_max_ms = limit_ms
        self.session_ms = 0
        self.session_start_ms = self.now_ms
        self.end_reason = END_NONE
        self.end_fault = F_NONE
        self._stop_request = False
        self.session_tach_start = self.board.tach_count()
        self.strokes = 0
        self.motor_phase = M_POSITIONING
        self._move_depth(depth_um)
        self.state = RUNNING
        self.ev_state += 1

    @micropython.native
    def _running_tick(self, board, now_us, dt_ms):
        # Positioning and retraction phases of a session (driving is in tick()).
        phase = self.motor_phase
        if phase == M_POSITIONING:
            self.session_ms += dt_ms
            if not self._samples[SAMPLE_CARTRIDGE]:
                self._end_session(END_CARTRIDGE_OUT)
            elif self._stop_request:
                self._end_session(END_STOPPED)
            elif self.session_ms >= self.session_max_ms:
                self._end_session(END_TIME_LIMIT)
            elif self.depth_phase == D_HOLD:
                self.motor_phase = M_DRIVE
                self._drive_ms = 0
                self._integ = 0
                self._tach_last_us = now_us      # the tach timeout counts from the drive start
                self._tach_fresh = True          # ... but no speed from a part of a stroke
                self._edge_age_us = 0
                self._current_alarm_ma = STALL_MIN_MA   # the soft start: every current above this is looked at
                self.motor_on = True
        elif phase == M_RETRACT:
            if self.depth_phase == D_HOLD and self.depth_target_um == 0:
                self.state = LOCKED
                self.motor_phase = M_OFF
                self.ev_state += 1
                self.ev_session_end += 1

    def _end_session(self, reason):
        board = self.board
        board.motor_coast()
        if self.motor_on:
            self._off_at_ms = self.now_ms
        self.strokes = (board.tach_count() - self.session_tach_start) & TACH_MASK   # strokes while driven
        self.motor_on = False
        self.duty_bp = 0
        self.end_reason = reason
        self.motor_phase = M_RETRACT
        self._move_depth(0)

    # ---- sterilisation (S5, S12) ----

    def _start_sterilising(self):
        self.uv_dose = 0
        self.steril_ms = 0
        self.uv_pm = 0
        self.abort_reason = ABORT_NONE
        self.uv_phase = U_DARK_BEFORE
        self._uv_phase_ms = 0
        self.state = STERILISING
        self.ev_state += 1

    @micropython.native
    def _steril_tick(self, board, dt_ms):
        phase = self.uv_phase
        if phase == U_DONE:
            return                   # done; waiting for core 0 to persist the unlock
        if not self._samples[SAMPLE_LID]:
            self._abort_steril(ABORT_LID_OPEN)   # UV off within this tick
            return
        steril_ms = self.steril_ms + dt_ms
        self.steril_ms = steril_ms
        if steril_ms >= UV_TIMEOUT_MS:
            self._abort_steril(ABORT_TIMEOUT)
            return
        pm = board.uv_intensity_pm()
        self.uv_pm = pm
        phase_ms = self._uv_phase_ms + dt_ms
        self._uv_phase_ms = phase_ms
        if phase == U_ON:
            if phase_ms <= UV_SETTLE_MS:
                return               # the LED and the sensor settle: not counted
            if pm > UV_MAX_PM:
                self._abort_steril(ABORT_UV_SENSOR_HIGH)
            elif pm <= UV_DARK_MAX_PM:
                self._abort_steril(ABORT_UV_LED_DEAD)
            elif pm < UV_MIN_PM:
                self._abort_steril(ABORT_LOW_UV)
            else:
                dose = self.uv_dose + pm * dt_ms
                self.uv_dose = dose
                if dose >= UV_DOSE_TARGET:
                    board.uv_set(False)
                    self.uv_on = False
                    self.uv_phase = U_DARK_AFTER
                    self._uv_phase_ms = 0
            return
        # U_DARK_BEFORE / U_DARK_AFTER: the LED is off; once settled the sensor must read dark.
        if phase_ms < UV_SETTLE_MS:
            return
        if pm > UV_DARK_MAX_PM:
            self._abort_steril(ABORT_UV_SENSOR_STUCK)
        elif phase == U_DARK_BEFORE:
            board.uv_set(True)
            self.uv_on = True
            self.uv_phase = U_ON
            self._uv_phase_ms = 0
        else:
            self.uv_phase = U_DONE
            self.ev_steril_done += 1

    def _abort_steril(self, reason):
        self.board.uv_set(False)
        self.uv_on = False
        self.uv_phase = U_DONE
        self.abort_reason = reason
        self.state = LOCKED
        self.ev_state += 1
        self.ev_steril_abort += 1
