# The 1 kHz control tick: stroke-motor speed loop, depth actuator, interlocks,
# sterilisation dose, session timer, telemetry sampling.
#
# Rules: integer units only, no allocation (a test runs tick() under
# micropython.heap_lock()), no flash writes (the app does those outside the
# tick, motor off). Anything the app must act on is signalled through the
# integer bit field `pending`. The tick's methods use the native code emitter
# (about 1.8x faster than bytecode on the unix port); `penctl flash` compiles
# them for the pen's architecture.
from array import array

from .limits import (
    BATTERY_MIN_MV, DEPTH_HOME_MAX_STEPS, DEPTH_MOVE_TIMEOUT_TICKS,
    DEPTH_SETTLE_TICKS, DEPTH_TOL_UM, DEPTH_UM_PER_STEP, DUTY_MAX_BP, FAULT_CONFIRM_SAMPLES,
    MOTOR_FF_MV_OFFSET, MOTOR_FF_MV_PER_HZ, MOTOR_FF_MV_PER_HZ_S_X10, MOTOR_R_MOHM, OVERCURRENT_MA, OVERTEMP_CDEGC,
    SOFT_START_MS, SPEED_KI_SHIFT, SPEED_KP_BP_PER_CHZ_X10, STALL_EMF_PCT, STALL_MIN_MA,
    TACH_TIMEOUT_PERIODS, TELEMETRY_PERIOD_MS, TELEMETRY_RING, UV_DOSE_TARGET, UV_MIN_PM,
    UV_TIMEOUT_MS,
)

# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
import micropython
from micropython import const

from .compat import ticks_diff

# States (docs/design.md §2.2). Index into STATE_NAMES.
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
FAULT_NAMES = ("NONE", "STALL", "OVERCURRENT", "OVERTEMP", "TACH_LOSS", "OVER_DEPTH",
               "DEPTH_DEVIATION", "DEPTH_JAM", "HOMING", "LOW_BATTERY", "INTERNAL")

# Why a session ended. Index into END_NAMES.
END_NONE = const(0)
END_STOPPED = const(1)
END_TIME_LIMIT = const(2)
END_CARTRIDGE_OUT = const(3)
END_FAULT = const(4)
END_NAMES = ("NONE", "STOPPED", "TIME_LIMIT", "CARTRIDGE_OUT", "FAULT")

# Why a sterilisation cycle aborted.
ABORT_NONE = const(0)
ABORT_LID_OPEN = const(1)
ABORT_LOW_UV = const(2)
ABORT_TIMEOUT = const(3)
ABORT_CANCELLED = const(4)
ABORT_NAMES = ("NONE", "LID_OPEN", "LOW_UV", "TIMEOUT", "CANCELLED")

# `pending` bits: things the app must act on outside the tick.
P_STATE = const(1)         # state changed: send an event
P_FAULT = const(2)         # a fault latched: log it
P_SESSION_END = const(4)   # session ended and needles retracted: log it
P_STERIL_DONE = const(8)   # dose reached: persist the unlock, then enter READY
P_STERIL_ABORT = const(16)
P_HOMED = const(32)        # homing finished: app decides LOCKED or READY

# Depth actuator phases.
_D_HOMING = const(0)
_D_MOVING = const(1)
_D_SETTLING = const(2)
_D_HOLD = const(3)

# Motor phases within RUNNING.
_M_OFF = const(0)
_M_POSITIONING = const(1)
_M_DRIVE = const(2)
_M_RETRACT = const(3)

# Telemetry sample layout: pen.proto (one definition for the pen and the host).
from .proto import (  # noqa: E402
    TM_BATTERY_MV, TM_CURRENT_MA, TM_DEPTH_SET_UM, TM_DEPTH_UM, TM_DUTY_BP, TM_FAULTS, TM_FIELDS,
    TM_HZ_CHZ, TM_HZ_SET_CHZ, TM_OVERRUNS, TM_STATE, TM_STROKES, TM_T_MS, TM_TEMP_CDEGC, TM_TICK_MAX_US,
)

# Board.sample(buf) layout: the analogue inputs, read in one call per tick.
# Boards import these names from here (one place; folded to literals in the tick).
SAMPLE_CURRENT_MA = const(0)
SAMPLE_BATTERY_MV = const(1)
SAMPLE_TEMP_CDEGC = const(2)
SAMPLE_DEPTH_UM = const(3)
SAMPLE_FIELDS = const(4)

# Alarms confirmed on consecutive samples.
_A_OVERCURRENT = const(0)
_A_STALL = const(1)
_A_OVERTEMP = const(2)
_A_BATTERY = const(3)
_A_DEPTH = const(4)
_ALARMS = const(5)

_CHZ_US = const(100000000)   # cHz * us per stroke: hz_chz = _CHZ_US * strokes // period_us
_CHZ_MS = const(100000)      # cHz * ms per stroke
_INTEG_MAX = const(3000 << 6)


class Controller:
    def __init__(self, board):
        self.board = board
        self.state = BOOT
        self.pending = 0
        self.fault = F_NONE
        self.fault_ms = 0          # pen time (ms since boot) at which the fault latched
        self.faults = 0            # faults latched since boot
        self.now_ms = 0            # pen time (ms): the app aligns it to the board clock; +1 per tick
        # measured inputs (refreshed every tick)
        self._samples = array("i", [0] * SAMPLE_FIELDS)
        # Alarm confirmation: tick of the last out-of-limit sample and the run of
        # consecutive ones, per alarm (no per-tick reset work on the common path).
        self._alarm_last = array("i", [-10] * _ALARMS)
        self._alarm_run = array("i", [0] * _ALARMS)
        # depth actuator
        self.depth_phase = _D_HOMING
        self.depth_steps = 0       # commanded position in actuator steps from the end-stop
        self.depth_set_um = 0
        self.depth_target_um = 0
        self._depth_ticks = 0
        self._depth_bad = 0
        self.homed = False
        # stroke motor
        self.motor_phase = _M_OFF
        self.motor_on = False
        self.hz_set_chz = 0
        self.hz_ref_chz = 0
        self.hz_chz = 0
        self.duty_bp = 0
        self._integ = 0
        self._drive_ms = 0
        self._tach_timeout_ms = 1000
        self._ff_mv = 0
        self._ff_accel_mv = 0
        self._tach_last_count = board.tach_count()
        self._tach_last_us = board.tach_edge_us()
        self._tach_seen_ms = 0
        self.session_tach_start = 0
        self.strokes = 0
        # session
        self.session_ms = 0
        self.session_max_ms = 0
        self.end_reason = END_NONE
        self._stop_request = False
        # sterilisation
        self.uv_on = False
        self.uv_dose = 0
        self.uv_pm = 0
        self.steril_ms = 0
        self.abort_reason = ABORT_NONE
        # timing statistics (written by the app's loop around tick())
        self.overruns = 0
        self.tick_max_us = 0
        # telemetry ring: TELEMETRY_RING samples of TM_FIELDS ints, written here
        self.tm_ring = array("i", [0] * (TELEMETRY_RING * TM_FIELDS))
        self.tm_count = 0          # samples written since boot (index = count % RING)
        self._tm_next = 0          # pen time of the next sample

    # The latest depth reading (the tick reads the inputs into _samples, once). A
    # method, not a property: a property on the class slows every attribute store
    # in MicroPython (each store then looks for a setter).
    def depth_um(self):
        return self._samples[SAMPLE_DEPTH_UM]

    # ---- commands (called by the app, outside the tick) ----

    def start_homing(self):
        self.state = BOOT
        self.depth_phase = _D_HOMING
        self._depth_ticks = 0
        self.homed = False
        self.pending |= P_STATE

    def enter(self, state):
        self.state = state
        self.pending |= P_STATE

    def start_sterilising(self):
        self.uv_dose = 0
        self.steril_ms = 0
        self.abort_reason = ABORT_NONE
        self.state = STERILISING
        self.pending |= P_STATE

    def cancel_sterilising(self):
        if self.state == STERILISING:
            self._abort_steril(ABORT_CANCELLED)

    def start_session(self, depth_um, hz, max_s):
        self.depth_set_um = depth_um
        self.hz_set_chz = hz * 100
        self._tach_timeout_ms = TACH_TIMEOUT_PERIODS * 1000 // hz   # expected strokes, ms
        # Feed-forward voltages for this set point, computed once instead of every tick.
        self._ff_mv = MOTOR_FF_MV_OFFSET + hz * MOTOR_FF_MV_PER_HZ
        self._ff_accel_mv = hz * 100 * 10 // SOFT_START_MS * MOTOR_FF_MV_PER_HZ_S_X10 // 10
        self.session_max_ms = max_s * 1000
        self.session_ms = 0
        self.end_reason = END_NONE
        self._stop_request = False
        self.session_tach_start = self.board.tach_count()
        self.strokes = 0
        self.motor_phase = _M_POSITIONING
        self._move_depth(depth_um)
        self.state = RUNNING
        self.pending |= P_STATE

    def stop_session(self):
        self._stop_request = True

    # ---- the tick ----

    @micropython.native
    def tick(self):
        # The common path (a running session, depth held) is inlined here:
        # every method call and attribute access counts against the tick budget.
        board = self.board
        now = self.now_ms + 1
        self.now_ms = now
        try:
            samples = self._samples
            board.sample(samples)          # all analogue inputs in one call
            current = samples[SAMPLE_CURRENT_MA]
            battery = samples[SAMPLE_BATTERY_MV]
            temp = samples[SAMPLE_TEMP_CDEGC]
            depth = samples[SAMPLE_DEPTH_UM]
            # Stroke frequency from the tach: strokes per time between edges.
            count = board.tach_count()
            last = self._tach_last_count
            if count != last:
                edge_us = board.tach_edge_us()
                period_us = ticks_diff(edge_us, self._tach_last_us)
                if period_us > 0:
                    self.hz_chz = _CHZ_US * (count - last) // period_us
                self._tach_last_count = count
                self._tach_last_us = edge_us
                self._tach_seen_ms = now
                since_ms = 0
            else:
                # No new edge: the speed is at most one stroke per time since the last one.
                since_ms = now - self._tach_seen_ms
                if since_ms > 0 and self.hz_chz * since_ms > _CHZ_MS:
                    self.hz_chz = _CHZ_MS // since_ms
            # Interlocks (S4): checked every tick; the work is in the rare branches.
            if self.state != FAULT:
                if self.motor_on and (current >= STALL_MIN_MA or since_ms >= self._tach_timeout_ms):
                    self._motor_interlocks(current, battery, now)
                if temp >= OVERTEMP_CDEGC and self._confirm(_A_OVERTEMP, now):
                    self.fault_now(F_OVERTEMP)
                if battery < BATTERY_MIN_MV and self._confirm(_A_BATTERY, now):
                    self.fault_now(F_LOW_BATTERY)
            # Depth (S2): measured depth must follow the set point once settled.
            if self.depth_phase == _D_HOLD:
                error = depth - self.depth_target_um
                if ((error > DEPTH_TOL_UM or error < -DEPTH_TOL_UM) and self.state != FAULT
                        and self._confirm(_A_DEPTH, now)):
                    self.fault_now(F_OVER_DEPTH if error > 0 else F_DEPTH_DEVIATION)
            else:
                self._depth_tick(board)
            state = self.state
            if state == RUNNING:
                if self.motor_phase == _M_DRIVE:
                    session_ms = self.session_ms + 1
                    self.session_ms = session_ms
                    if not board.cartridge_present():
                        self._end_session(END_CARTRIDGE_OUT)      # S6
                    elif self._stop_request:
                        self._end_session(END_STOPPED)
                    elif session_ms >= self.session_max_ms:
                        self._end_session(END_TIME_LIMIT)         # S8
                    else:
                        # Speed loop (S3).
                        drive_ms = self._drive_ms + 1
                        self._drive_ms = drive_ms
                        if battery < 1000:
                            battery = 1000
                        if drive_ms < SOFT_START_MS:
                            # Soft start: the reference ramps linearly to the set point,
                            # open loop: feed-forward of the voltage this frequency and
                            # this acceleration need, over the measured battery voltage.
                            ref = self.hz_set_chz * drive_ms // SOFT_START_MS
                            duty = ((MOTOR_FF_MV_OFFSET + ref * MOTOR_FF_MV_PER_HZ // 100 + self._ff_accel_mv)
                                    * 10000 // battery)
                        else:
                            # Feed-forward plus PI on the tach-measured frequency once the
                            # ramp is done (during it the tach, one edge per stroke, lags).
                            ref = self.hz_set_chz
                            error = ref - self.hz_chz
                            integ = self._integ + error
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
                    self._running_tick(board)
            elif state == STERILISING:
                self._steril_tick(board)
            elif state == BOOT:
                if self.homed and self.depth_phase == _D_HOLD:
                    self.pending |= P_HOMED
            if now >= self._tm_next:
                self._telemetry_sample(now)
        except Exception:
            # A failing update coasts the motor and latches (pybricks).
            self.fault_now(F_INTERNAL)

    def fault_now(self, cause):
        board = self.board
        board.motor_coast()     # first: power off
        board.uv_set(False)
        self.motor_on = False
        self.uv_on = False
        self.duty_bp = 0
        self.hz_ref_chz = 0
        self._integ = 0
        if self.state == RUNNING and self.end_reason == END_NONE:
            self.strokes = board.tach_count() - self.session_tach_start
            self.end_reason = END_FAULT
            self.pending |= P_SESSION_END
        if self.state == STERILISING:
            self.pending |= P_STERIL_ABORT
        if self.state != FAULT:
            self.fault = cause
            self.fault_ms = self.now_ms
            self.faults += 1
            self.state = FAULT
            self.pending |= P_STATE | P_FAULT
        self.motor_phase = _M_OFF
        if self.homed and self.depth_phase != _D_HOMING:
            self._move_depth(0)   # retract the needles

    def _confirm(self, alarm, now):
        """An out-of-limit sample of `alarm` now: True once FAULT_CONFIRM_SAMPLES
        consecutive ticks had one (noise rejection; motor off within 2 ticks)."""
        last = self._alarm_last
        run = self._alarm_run
        run[alarm] = run[alarm] + 1 if last[alarm] == now - 1 else 1
        last[alarm] = now
        return run[alarm] >= FAULT_CONFIRM_SAMPLES

    def _motor_interlocks(self, current, battery, now):
        applied_mv = battery * self.duty_bp // 10000
        if current >= STALL_MIN_MA:
            # More current than a locked rotor could draw (V / R): a short.
            if (current >= OVERCURRENT_MA and current * MOTOR_R_MOHM * 10 > applied_mv * 12000
                    and self._confirm(_A_OVERCURRENT, now)):
                self.fault_now(F_OVERCURRENT)
                return
            # Back-EMF (applied voltage - I*R) near zero while driven: the rotor is
            # not turning. Checked once the soft start is over (at rest it is zero).
            if (self._drive_ms > SOFT_START_MS
                    and (applied_mv - current * MOTOR_R_MOHM // 1000) * 100 < applied_mv * STALL_EMF_PCT
                    and self._confirm(_A_STALL, now)):
                self.fault_now(F_STALL)
                return
        # Driven but no tach edge for TACH_TIMEOUT_PERIODS expected strokes:
        # stall (rotor not turning) or a lost tach signal (rotor turning).
        if now - self._tach_seen_ms >= self._tach_timeout_ms and self._drive_ms > SOFT_START_MS:
            if (applied_mv - current * MOTOR_R_MOHM // 1000) * 100 < applied_mv * STALL_EMF_PCT:
                self.fault_now(F_STALL)
            else:
                self.fault_now(F_TACH_LOSS)

    # ---- depth actuator ----

    def _move_depth(self, target_um):
        self.depth_target_um = target_um
        self.depth_phase = _D_MOVING
        self._depth_ticks = 0
        self._depth_bad = 0

    def _depth_tick(self, board):
        # Homing, moving and settling (the held phase is checked in tick()).
        phase = self.depth_phase
        if phase == _D_HOMING:
            if board.depth_endstop():
                self.depth_steps = 0
                depth_um = self._samples[SAMPLE_DEPTH_UM]
                if depth_um > DEPTH_TOL_UM or depth_um < -DEPTH_TOL_UM:
                    self.fault_now(F_HOMING)
                    return
                self.homed = True
                self.depth_target_um = 0
                self.depth_phase = _D_HOLD
                self._depth_bad = 0
                return
            self._depth_ticks += 1
            if self._depth_ticks > DEPTH_HOME_MAX_STEPS:
                self.fault_now(F_HOMING)
                return
            board.depth_step(-1)
            return
        if phase == _D_MOVING:
            # Moves only with the motor stopped (S2).
            if self.motor_on:
                return
            self._depth_ticks += 1
            target_steps = self.depth_target_um // DEPTH_UM_PER_STEP
            if self.depth_steps < target_steps:
                board.depth_step(1)
                self.depth_steps += 1
            elif self.depth_steps > target_steps:
                board.depth_step(-1)
                self.depth_steps -= 1
            else:
                self.depth_phase = _D_SETTLING
                self._depth_ticks = 0
            return
        error = self._samples[SAMPLE_DEPTH_UM] - self.depth_target_um
        bad = error > DEPTH_TOL_UM or error < -DEPTH_TOL_UM
        if phase == _D_SETTLING:
            self._depth_ticks += 1
            if bad:
                self._depth_bad = 0
                if self._depth_ticks > DEPTH_MOVE_TIMEOUT_TICKS // 4:
                    if self.state != FAULT:
                        self.fault_now(F_DEPTH_JAM)   # carriage did not follow the steps
                    else:
                        self.depth_phase = _D_HOLD      # already faulted: stop trying
                return
            self._depth_bad += 1
            if self._depth_bad >= DEPTH_SETTLE_TICKS:
                self.depth_phase = _D_HOLD
                self._depth_bad = 0
            return

    # ---- session ----

    def _running_tick(self, board):
        # Positioning and retraction phases of a session (driving is in tick()).
        phase = self.motor_phase
        if phase == _M_POSITIONING:
            self.session_ms += 1
            if not board.cartridge_present():
                self._end_session(END_CARTRIDGE_OUT)
            elif self._stop_request:
                self._end_session(END_STOPPED)
            elif self.session_ms >= self.session_max_ms:
                self._end_session(END_TIME_LIMIT)
            elif self.depth_phase == _D_HOLD:
                self.motor_phase = _M_DRIVE
                self._drive_ms = 0
                self._integ = 0
                self._tach_seen_ms = self.now_ms
                self.motor_on = True
        elif phase == _M_RETRACT:
            if self.depth_phase == _D_HOLD and self.depth_target_um == 0:
                self.state = LOCKED
                self.motor_phase = _M_OFF
                self.pending |= P_STATE | P_SESSION_END

    def _end_session(self, reason):
        self.board.motor_coast()
        self.strokes = self.board.tach_count() - self.session_tach_start   # strokes while driven
        self.motor_on = False
        self.duty_bp = 0
        self.hz_ref_chz = 0
        self.end_reason = reason
        self.motor_phase = _M_RETRACT
        self._move_depth(0)

    # ---- sterilisation (S5) ----

    @micropython.native
    def _steril_tick(self, board):
        if self.uv_dose >= UV_DOSE_TARGET:
            return                   # done; waiting for the app to persist the unlock
        if not board.lid_closed():
            self._abort_steril(ABORT_LID_OPEN)   # UV off within this tick
            return
        if not self.uv_on:
            board.uv_set(True)
            self.uv_on = True
            return                   # intensity is measured from the next tick on
        self.steril_ms += 1
        pm = board.uv_intensity_pm()
        self.uv_pm = pm
        if pm < UV_MIN_PM:
            self._abort_steril(ABORT_LOW_UV)
            return
        self.uv_dose += pm
        if self.uv_dose >= UV_DOSE_TARGET:
            board.uv_set(False)
            self.uv_on = False
            self.pending |= P_STERIL_DONE
        elif self.steril_ms >= UV_TIMEOUT_MS:
            self._abort_steril(ABORT_TIMEOUT)

    def _abort_steril(self, reason):
        self.board.uv_set(False)
        self.uv_on = False
        self.abort_reason = reason
        self.state = LOCKED
        self.pending |= P_STATE | P_STERIL_ABORT

    # ---- telemetry ----

    def _telemetry_sample(self, now):
        # Next sample on the 20 ms grid; after an overrun the grid resumes from now
        # (the sample count stays right, the late sample carries its true time).
        nxt = self._tm_next + TELEMETRY_PERIOD_MS
        self._tm_next = nxt if nxt > now else now + TELEMETRY_PERIOD_MS
        ring = self.tm_ring
        base = (self.tm_count % TELEMETRY_RING) * TM_FIELDS
        ring[base + TM_T_MS] = self.now_ms
        ring[base + TM_STATE] = self.state
        ring[base + TM_DEPTH_SET_UM] = self.depth_target_um
        samples = self._samples
        ring[base + TM_DEPTH_UM] = samples[SAMPLE_DEPTH_UM]
        ring[base + TM_HZ_SET_CHZ] = self.hz_set_chz if self.state == RUNNING else 0
        ring[base + TM_HZ_CHZ] = self.hz_chz
        ring[base + TM_DUTY_BP] = self.duty_bp
        ring[base + TM_CURRENT_MA] = samples[SAMPLE_CURRENT_MA]
        ring[base + TM_TEMP_CDEGC] = samples[SAMPLE_TEMP_CDEGC]
        ring[base + TM_BATTERY_MV] = samples[SAMPLE_BATTERY_MV]
        if self.state == RUNNING and self.motor_on:
            self.strokes = self.board.tach_count() - self.session_tach_start
        ring[base + TM_STROKES] = self.strokes
        ring[base + TM_FAULTS] = self.faults
        ring[base + TM_OVERRUNS] = self.overruns
        ring[base + TM_TICK_MAX_US] = self.tick_max_us
        self.tm_count += 1
