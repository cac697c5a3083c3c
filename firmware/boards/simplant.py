# The virtual pen's physical plant (boards/sim.py's Board inherits it): the models the
# firmware drives and reads through the board interface, the rig's fault injections and
# the true plant state the rig measures. It is a board driver's hardware, not a mock
# (pybricks): the models evolve in 1 ms steps of pen time.
#
# Plant models (integer units; parameters are the *true* plant, deliberately not read
# from pen/limits.py, so a wrong firmware constant shows in tests):
# - stroke motor: DC motor, R = 1.0 ohm, back-EMF 13.5 mV/Hz, load current 100 mA +
#   1.5 mA/Hz with +-3 % skin-contact noise; speed follows the current surplus (tau ~33
#   ms); a coasting rotor below 0.5 Hz stops; one tach edge per stroke, timestamped
#   within the step. The current sense (like
#   the pen's INA240 into a 3.3 V ADC) reads at most 3300 mA.
# - handpiece temperature: first order towards 30 degC + 2 cdegC per mA, tau 60 s.
# - battery: 1S Li-ion, 3950 mV open circuit, 1 mV less per mAh drawn, 150 mohm.
# - depth actuator: 5 um per step lead screw, hard stop + end-stop switch at 0 um,
#   travel 3000 um, position sensor with +-6 um noise (+-8 um more while the motor
#   vibrates it); injectable jam.
# - UV dock: lid switch (hardware interlock: the LED is dark while the lid is open),
#   lamp at 96 % of nominal when new, losing 1 permille per 36 s of UV on (ageing).
# - cartridge reader: ID string or None; the cartridges' own write-once "used" marks (S19),
#   kept per cartridge ID as the cartridge's memory keeps it, and a memory that stops
#   answering (injection cartridge_memory_fail).
# The ADC converts once per plant step (as a free-running scan would); a second reading
# within the same step (a confirmation) is a new conversion with its own noise. The models
# use the native code emitter: the plant is not firmware work and costs no pen time, but
# it is most of the fast clock's host time.
import sys

# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
import micropython
from micropython import const

from pen.control import SAMPLE_BATTERY_MV as _S_BATTERY
from pen.control import SAMPLE_CARTRIDGE as _S_CARTRIDGE
from pen.control import SAMPLE_CURRENT_MA as _S_CURRENT
from pen.control import SAMPLE_DEPTH_UM as _S_DEPTH
from pen.control import SAMPLE_LID as _S_LID
from pen.control import SAMPLE_TACH_COUNT as _S_TACH_COUNT
from pen.control import SAMPLE_TACH_US as _S_TACH_US
from pen.control import SAMPLE_TEMP_CDEGC as _S_TEMP

STEP_US = const(1000)             # plant integration step
_R_MOHM = const(1000)             # motor winding resistance
_KE_MV_PER_HZ_X10 = const(135)    # back-EMF constant, 0.1 mV/Hz
_LOAD_BASE_MA = const(100)
_LOAD_MA_PER_HZ_X10 = const(15)
_ACCEL_MHZ_PER_MA = const(2)      # speed change per ms per mA of surplus current
_PHASE_PER_STROKE = const(1000000000)   # mHz * us per stroke
_STICTION_MHZ = const(500)        # a coasting rotor slower than this stops
_ADC_CURRENT_FS_MA = const(3300)  # current sense full scale
_AMBIENT_CC = const(3000)
_THERMAL_TAU_MS = const(60000)
_BATT_OCV_MV = const(3950)
_BATT_R_MOHM = const(150)
_MAMS_PER_MV = const(3600000)     # 1 mAh (3.6e6 mA*ms) per mV of open-circuit voltage
_DEPTH_TRAVEL_UM = const(3000)
_DEPTH_UM_PER_STEP = const(5)
_LAMP_NEW_PM = const(960)
_UV_STUCK_PM = const(825)         # a stuck sensor (or switch) reads mid-scale: the NTC's ~1.65 V
_STUCK_DUTY_BP = const(5000)      # a driver stuck on with the motor off drives it at half duty
_TACH_MASK = const(0x1FFFFFFF)    # the pen's tach counter wraps at 2**29
_OFF = const(0)                   # time stamps (Board._mark): motor commanded off ...
_UV_OFF = const(1)                # ... UV light off ...
_UV_CMD_OFF = const(2)            # ... UV LED commanded off ...
_AT_ENDSTOP = const(3)            # ... needle carriage back at the end-stop


class Plant:
    def _plant_init(self, seed, origin_us):
        self._rng = (seed or 1) & 0xFFFFFFFF
        self._plant_us = origin_us     # plant integrated up to this pen time (us)
        self.steps = 0                 # plant steps since power-on
        self._sampled_step = -1        # step whose conversions the tick last read
        # stroke motor
        self.duty_bp = 0               # duty the firmware commands
        self.battery_mv_now = _BATT_OCV_MV
        self.speed_mhz = 0
        self.current_ma = 0
        self.phase = 0
        self.tach = 0
        self.tach_us = origin_us
        self.strokes = 0
        self.motor_off_us = -1         # pen time the firmware last commanded the motor off
        self.used_mas = 0              # charge drawn, mA*ms
        # thermal: 1e-4 cdegC units so a 1 ms step is not lost to rounding
        self.temp_u = _AMBIENT_CC * 10000
        # depth: the carriage is wherever the last power cut left it
        self.carriage_um = (self._rand() % 241) * _DEPTH_UM_PER_STEP
        # dock / UV / cartridge
        self.uv_led = False
        self.uv_off_us = -1            # pen time the UV light last went off
        self.uv_cmd_off_us = -1        # pen time the firmware last commanded the UV LED off
        self.endstop_us = -1           # pen time the carriage last came back to the end-stop
        self.lamp_on_ms = 0
        self.cartridge = None
        self.cartridge_marks = {}      # cartridge ID -> True: its memory carries the used mark (S19)
        # injections (none; lid closed: the pen sits in its dock)
        self.clear_injections()
        self.inject_us = -1
        self._sample_sensors()

    # ---- randomness (xorshift32: integer only, no allocation) ----

    @micropython.native
    def _rand(self):
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x

    @micropython.native
    def _noise(self, amplitude):
        return self._rand() % (2 * amplitude + 1) - amplitude

    # ---- models ----

    @micropython.native
    def _driven_duty(self):
        # What the H-bridge applies: the command, or more when the driver is stuck on.
        duty = self.duty_bp
        if self.inj_stuck_on and duty < self._stuck_duty:
            duty = self._stuck_duty
        return duty

    @micropython.native
    def _plant_step(self):
        t0 = self._plant_us
        self.steps += 1
        # battery sags under the motor current
        ocv = _BATT_OCV_MV - self.used_mas // _MAMS_PER_MV
        if self.inj_low_battery:
            ocv = 3150
        vbat = ocv - self.current_ma * _BATT_R_MOHM // 1000
        self.battery_mv_now = vbat
        # stroke motor
        v_app = vbat * self._driven_duty() // 10000
        speed = self.speed_mhz
        if self.inj_stall:
            speed = 0
        emf = speed * _KE_MV_PER_HZ_X10 // 10000
        if v_app > emf:
            current = (v_app - emf) * 1000 // _R_MOHM
        else:
            current = 0                 # coasting: the driver does not brake
        if self.inj_overcurrent and v_app:
            current += 3000             # partial winding short
        if speed > 0 and not self.inj_stall:
            load = (_LOAD_BASE_MA + speed * _LOAD_MA_PER_HZ_X10 // 10000)
            load = load + load * self._noise(30) // 1000
            if speed < 5000:
                load = load * speed // 5000   # static friction fades in from rest
            speed += (current - load) * _ACCEL_MHZ_PER_MA
            if speed < 0 or (speed < _STICTION_MHZ and not current):
                speed = 0               # coasting below 0.5 Hz: static friction holds the rotor
        elif not self.inj_stall:
            speed += current * _ACCEL_MHZ_PER_MA
        self.speed_mhz = speed
        self.current_ma = current
        self.used_mas += current
        # one tach edge per stroke, at its time within the step
        if speed > 0:
            before = self.phase
            phase = before + speed * STEP_US
            if phase >= _PHASE_PER_STROKE:
                phase -= _PHASE_PER_STROKE
                self.strokes += 1
                if not self.inj_tach_loss:
                    self.tach = (self.tach + 1) & _TACH_MASK
                    self.tach_us = t0 + (_PHASE_PER_STROKE - before) // speed
            self.phase = phase
        # handpiece temperature
        target_u = (_AMBIENT_CC + 2 * current) * 10000
        self.temp_u += (target_u - self.temp_u) // _THERMAL_TAU_MS
        # UV lamp ageing
        if self._uv_light():
            self.lamp_on_ms += 1
        self._plant_us = t0 + STEP_US
        self._sample_sensors()

    @micropython.native
    def _uv_light(self):
        return self.uv_led and self.lid and not self.inj_uv_led_dead

    @micropython.native
    def _sample_sensors(self):
        current = self.current_ma + self._noise(8)
        self.s_current_ma = current if current < _ADC_CURRENT_FS_MA else _ADC_CURRENT_FS_MA
        temp = self.temp_u // 10000 + self._noise(3)
        if self.inj_overtemp:
            temp += 1200
        self.s_temp_cdegc = temp
        self.s_battery_mv = self.battery_mv_now + self._noise(4)
        depth = self.carriage_um + self._noise(6)
        if self.speed_mhz > 0:
            depth += self._noise(8)
        self.s_depth_um = depth
        if self.inj_uv_sensor_stuck:
            self.s_uv_pm = _UV_STUCK_PM + self._noise(4)
        elif self._uv_light():
            self.s_uv_pm = _LAMP_NEW_PM - self.lamp_on_ms // 36000 + self._noise(4)
        else:
            dark = self._noise(4)
            self.s_uv_pm = dark if dark > 0 else 0

    # ---- the board interface's tick methods ----

    @micropython.native
    def motor_drive(self, duty_bp):
        if duty_bp <= 0 or self._halted:
            self.motor_coast()
            return
        self.duty_bp = duty_bp if duty_bp < 10000 else 10000

    def motor_coast(self):
        if self.duty_bp:
            self.duty_bp = 0
            self._mark(_OFF)

    @micropython.native
    def tach_count(self):
        return self.tach

    @micropython.native
    def tach_edge_us(self):
        return self.tach_us & self._ticks_mask

    @micropython.native
    def sample(self, buf):
        if self._sampled_step == self.steps:
            # A second reading in the same step: a new conversion of the same signals.
            self._sample_sensors()
        self._sampled_step = self.steps
        buf[_S_CURRENT] = self.s_current_ma
        buf[_S_BATTERY] = self.s_battery_mv
        buf[_S_TEMP] = self.s_temp_cdegc
        buf[_S_DEPTH] = self.s_depth_um
        buf[_S_TACH_COUNT] = self.tach
        buf[_S_TACH_US] = self.tach_us & self._ticks_mask
        buf[_S_CARTRIDGE] = 1 if self.cartridge is not None else 0
        buf[_S_LID] = 1 if self.lid else 0

    def motor_current_ma(self):
        return self.s_current_ma

    def temp_cdegc(self):
        return self.s_temp_cdegc

    def battery_mv(self):
        return self.s_battery_mv

    def depth_step(self, direction):
        if self.inj_depth_jam:
            return                      # steps lost: the carriage does not follow
        position = self.carriage_um + direction * _DEPTH_UM_PER_STEP
        if position <= 0:
            position = 0                # hard stop at the end-stop
            if self.carriage_um > 0:
                self._mark(_AT_ENDSTOP)
        elif position > _DEPTH_TRAVEL_UM:
            position = _DEPTH_TRAVEL_UM
        self.carriage_um = position

    def depth_endstop(self):
        return self.carriage_um <= 0

    def depth_sensor_um(self):
        return self.s_depth_um

    def lid_closed(self):
        return self.lid

    def uv_set(self, on):
        on = bool(on) and not self._halted
        if self.uv_led and not on:
            self._mark(_UV_CMD_OFF)
            if self._uv_light():
                self._mark(_UV_OFF)
        self.uv_led = on

    def uv_intensity_pm(self):
        return self.s_uv_pm

    @micropython.native
    def cartridge_present(self):
        return self.cartridge is not None

    def _cartridge_memory(self):
        """The inserted cartridge's ID, as the 1-Wire memory answers it; OSError as the driver
        raises it when nothing answers."""
        if self.cartridge is None:
            raise OSError("1-Wire: no presence pulse (no cartridge)")
        if self.inj_cartridge_memory:
            raise OSError("1-Wire: the cartridge memory does not answer")
        return self.cartridge

    def cartridge_marked(self, cartridge):
        return cartridge in self.cartridge_marks

    def set_cartridge_mark(self, cartridge):
        # Write-once: a mark is never removed (EPROM emulation: bits only go from 1 to 0).
        self.cartridge_marks[cartridge] = True

    # ---- rig: fault injection and true plant state ----

    def inject(self, fault):
        """Inject a fault (rigproto.FAULTS) at the plant's current time; False if unknown."""
        if fault == "stall":
            self.inj_stall = True
        elif fault == "overcurrent":
            self.inj_overcurrent = True
        elif fault == "overtemp":
            self.inj_overtemp = True
        elif fault == "tach_loss":
            self.inj_tach_loss = True
        elif fault == "depth_jam":
            self.inj_depth_jam = True
            self.carriage_um += 150     # the carriage slips deeper and sticks
        elif fault == "cartridge_out":
            self.cartridge = None
        elif fault == "lid_open":
            if self._uv_light():
                self.uv_off_us = self._plant_us   # the hardware interlock darkens the LED at once
            self.lid = False
        elif fault == "low_battery":
            self.inj_low_battery = True
        elif fault == "uv_sensor_stuck":
            self.inj_uv_sensor_stuck = True
        elif fault == "uv_led_dead":
            if self._uv_light():
                self.uv_off_us = self._plant_us
            self.inj_uv_led_dead = True
        elif fault == "motor_stuck_on":
            self.inj_stuck_on = True
            self._stuck_duty = self.duty_bp if self.duty_bp else _STUCK_DUTY_BP
        elif fault == "cartridge_memory_fail":
            self.inj_cartridge_memory = True
        else:
            return False
        self.inject_us = self._plant_us
        return True

    def clear_injections(self):
        self.inj_stall = False
        self.inj_overcurrent = False
        self.inj_overtemp = False
        self.inj_tach_loss = False
        self.inj_depth_jam = False
        self.inj_low_battery = False
        self.inj_uv_sensor_stuck = False
        self.inj_uv_led_dead = False
        self.inj_stuck_on = False
        self._stuck_duty = 0
        self.inj_cartridge_memory = False
        self.lid = True

    def plant_state(self):
        return {
            "t_us": self._plant_us,
            "depth_um": self.carriage_um,
            "hz": self.speed_mhz / 1000,
            "motor_on": self._driven_duty() > 0,
            "duty_bp": self._driven_duty(),
            "duty_cmd_bp": self.duty_bp,
            "current_ma": self.current_ma,
            "temp_cdegc": self.temp_u // 10000,
            "battery_mv": self.battery_mv_now,
            "uv_on": self._uv_light(),
            "uv_off_us": self.uv_off_us,
            "uv_cmd_off_us": self.uv_cmd_off_us,
            "tach_us": self.tach_us,
            "endstop_us": self.endstop_us,
            "lid_closed": self.lid,
            "cartridge": self.cartridge,
            "cartridge_used": self.cartridge is not None and self.cartridge in self.cartridge_marks,
            "strokes": self.strokes,
            "motor_off_us": self.motor_off_us,
            "inject_us": self.inject_us,
            "platform": sys.platform,
        }
