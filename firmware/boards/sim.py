# Simulated pen board for the MicroPython unix port (the virtual pen) and
# CPython tests. It is a board driver, not a mock (pybricks): the plant models
# below evolve in 1 ms steps of simulated time and the unchanged core reads
# them through the same names as boards/pico_pen.py.
#
# Plant models (integer units; parameters are the *true* plant, deliberately
# not read from pen/limits.py, so a wrong firmware constant shows in tests):
# - stroke motor: DC motor, R = 1.0 ohm, back-EMF 13.5 mV/Hz, load current
#   100 mA + 1.5 mA/Hz with +-3 % skin-contact noise; speed follows the current
#   surplus (tau ~ 33 ms); one tach edge per stroke, timestamped in the step.
# - handpiece temperature: first order towards 30 degC + 2 cdegC per mA, tau 60 s.
# - battery: 1S Li-ion, 3950 mV open circuit, 1 mV less per mAh drawn, 150 mohm.
# - depth actuator: 5 um per step lead screw, hard stop + end-stop switch at
#   0 um, travel 3000 um, position sensor with +-6 um noise (+-8 um more while
#   the motor vibrates it); injectable jam.
# - UV dock: lid switch (hardware interlock: LED off when open), lamp at
#   96 % of nominal when new, losing 1 permille per 36 s of UV on (ageing).
# - cartridge reader: ID string or None.
import os
import sys

try:
    import select
except ImportError:  # pragma: no cover
    import uselect as select  # type: ignore

# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
import micropython
from micropython import const

from pen.compat import sleep_us, ticks_add, ticks_diff, ticks_us
from pen.control import SAMPLE_BATTERY_MV as _S_BATTERY
from pen.control import SAMPLE_CURRENT_MA as _S_CURRENT
from pen.control import SAMPLE_DEPTH_UM as _S_DEPTH
from pen.control import SAMPLE_TEMP_CDEGC as _S_TEMP

BOARD_NAME = "sim"

_STEP_US = const(1000)            # plant integration step
_R_MOHM = const(1000)             # motor winding resistance
_KE_MV_PER_HZ_X10 = const(135)    # back-EMF constant, 0.1 mV/Hz
_LOAD_BASE_MA = const(100)
_LOAD_MA_PER_HZ_X10 = const(15)
_ACCEL_MHZ_PER_MA = const(2)      # speed change per ms per mA of surplus current
_PHASE_PER_STROKE = const(1000000000)   # mHz * us per stroke
_AMBIENT_CC = const(3000)
_THERMAL_TAU_MS = const(60000)
_BATT_OCV_MV = const(3950)
_BATT_R_MOHM = const(150)
_MAMS_PER_MV = const(3600000)     # 1 mAh (3.6e6 mA*ms) per mV of open-circuit voltage
_DEPTH_TRAVEL_UM = const(3000)
_DEPTH_UM_PER_STEP = const(5)
_LAMP_NEW_PM = const(960)
_SPIN_US = const(60)              # real clock: busy-wait the last part of a period
_WAKE_SLICE_US = const(150)       # real clock: check for host input at least this often


class Board:
    BOARD_NAME = BOARD_NAME

    def __init__(self, clock=None, serial=None, rig_in=None, rig_out=None, seed=12345):
        if clock is None:
            clock = os.getenv("PEN_SIM_CLOCK") or "real"
        self.fast_clock = clock == "fast"
        self.serial = serial or os.getenv("PEN_SIM_SERIAL") or "SIM-0001"
        self.store_dir = "data"
        self._rng = (seed or 1) & 0xFFFFFFFF
        # clock: pen time starts at 0 at power-on
        self._real_origin = ticks_us()
        self._plant_us = 0             # plant integrated up to this pen time
        # stroke motor
        self.duty_bp = 0
        self.battery_mv_now = _BATT_OCV_MV
        self.speed_mhz = 0
        self.current_ma = 0
        self.phase = 0
        self.tach = 0
        self.tach_us = 0
        self.strokes = 0
        self.motor_off_us = -1
        self.used_mas = 0              # charge drawn, mA*ms
        # thermal: 1e-4 cdegC units so a 1 ms step is not lost to rounding
        self.temp_u = _AMBIENT_CC * 10000
        # depth: the carriage is wherever the last power cut left it
        self.carriage_um = (self._rand() % 241) * _DEPTH_UM_PER_STEP
        # dock / UV / cartridge
        self.uv_led = False
        self.lamp_on_ms = 0
        self.cartridge = None
        # injections (none; lid closed: the pen sits in its dock)
        self.clear_injections()
        self.inject_us = -1
        self.steps = 0                 # plant steps since power-on
        self._sample_sensors()
        # rig channel (virtual pen supervisor)
        self._rig_in = None
        self._rig_out = None
        self._rig_poll = None
        self._rig_buf = b""
        # The plant outlives the interpreter: at exit (Ctrl-C, crash) the final
        # state goes to the supervisor, which reports it while the REPL runs.
        self._plant_file = os.getenv("PEN_SIM_PLANT_FILE")
        if self._plant_file and hasattr(sys, "atexit"):
            sys.atexit(self._write_final_plant)  # type: ignore[attr-defined]
        rig_in = rig_in or os.getenv("PEN_SIM_RIG_IN")
        rig_out = rig_out or os.getenv("PEN_SIM_RIG_OUT")
        if rig_in and rig_out:
            self._rig_in = open(rig_in, "rb")
            self._rig_out = open(rig_out, "wb")
            self._rig_poll = select.poll()
            self._rig_poll.register(self._rig_in, select.POLLIN)

    # ---- clock ----

    def ticks_us(self):
        if self.fast_clock:
            return self._plant_us
        return ticks_diff(ticks_us(), self._real_origin)

    def cpu_ticks_us(self):
        return ticks_us()

    def wait_until(self, deadline_us, wake=None):
        """Wait for the deadline; the plant models advance to it. With `wake` (a poll
        object), return False early when it has input, True at the deadline."""
        while self._plant_us < deadline_us:
            self._plant_step()
        if self.fast_clock:
            return True                 # simulated time: no waiting (input is polled every pass)
        origin = self._real_origin
        while True:
            remaining = deadline_us - ticks_diff(ticks_us(), origin)
            if remaining <= 0:
                return True
            if wake is not None:
                for _ in wake.ipoll(0):
                    return False
            if remaining > _SPIN_US:
                # Sleep in slices so a request is answered within a slice, not a tick.
                sleep_us(remaining - _SPIN_US if remaining - _SPIN_US < _WAKE_SLICE_US else _WAKE_SLICE_US)

    def _rand(self):
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x

    def _noise(self, amplitude):
        return self._rand() % (2 * amplitude + 1) - amplitude

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
        v_app = vbat * self.duty_bp // 10000
        speed = self.speed_mhz
        if self.inj_stall:
            speed = 0
        emf = speed * _KE_MV_PER_HZ_X10 // 10000
        if v_app > emf:
            current = (v_app - emf) * 1000 // _R_MOHM
        else:
            current = 0                 # coasting: the driver does not brake
        if self.inj_overcurrent and self.duty_bp:
            current += 3000             # partial winding short
        if speed > 0 and not self.inj_stall:
            load = (_LOAD_BASE_MA + speed * _LOAD_MA_PER_HZ_X10 // 10000)
            load = load + load * self._noise(30) // 1000
            if speed < 5000:
                load = load * speed // 5000   # static friction fades in from rest
            speed += (current - load) * _ACCEL_MHZ_PER_MA
            if speed < 0:
                speed = 0
        elif not self.inj_stall:
            speed += current * _ACCEL_MHZ_PER_MA
        self.speed_mhz = speed
        self.current_ma = current
        self.used_mas += current
        # one tach edge per stroke, at its time within the step
        if speed > 0:
            before = self.phase
            phase = before + speed * _STEP_US
            if phase >= _PHASE_PER_STROKE:
                phase -= _PHASE_PER_STROKE
                self.strokes += 1
                if not self.inj_tach_loss:
                    self.tach += 1
                    self.tach_us = t0 + (_PHASE_PER_STROKE - before) // speed
            self.phase = phase
        # handpiece temperature
        target_u = (_AMBIENT_CC + 2 * current) * 10000
        self.temp_u += (target_u - self.temp_u) // _THERMAL_TAU_MS
        # UV lamp ageing
        if self.uv_led and self.lid:
            self.lamp_on_ms += 1
        self._plant_us = t0 + _STEP_US
        self._sample_sensors()

    def _sample_sensors(self):
        # The ADC samples once per plant step (as a free-running ADC scan would);
        # the tick reads the latest conversions without doing the noise work.
        self.s_current_ma = self.current_ma + self._noise(8)
        temp = self.temp_u // 10000 + self._noise(3)
        if self.inj_overtemp:
            temp += 1200
        self.s_temp_cdegc = temp
        self.s_battery_mv = self.battery_mv_now + self._noise(4)
        depth = self.carriage_um + self._noise(6)
        if self.speed_mhz > 0:
            depth += self._noise(8)
        self.s_depth_um = depth
        if self.uv_led and self.lid:
            self.s_uv_pm = _LAMP_NEW_PM - self.lamp_on_ms // 36000 + self._noise(4)
        else:
            self.s_uv_pm = 0

    # ---- stroke motor ----

    @micropython.native
    def motor_drive(self, duty_bp):
        if duty_bp <= 0:
            self.motor_coast()
            return
        self.duty_bp = duty_bp if duty_bp < 10000 else 10000

    def motor_coast(self):
        if self.duty_bp:
            self.motor_off_us = self._plant_us
        self.duty_bp = 0

    @micropython.native
    def tach_count(self):
        return self.tach

    @micropython.native
    def tach_edge_us(self):
        return self.tach_us

    @micropython.native
    def sample(self, buf):
        buf[_S_CURRENT] = self.s_current_ma
        buf[_S_BATTERY] = self.s_battery_mv
        buf[_S_TEMP] = self.s_temp_cdegc
        buf[_S_DEPTH] = self.s_depth_um

    def motor_current_ma(self):
        return self.s_current_ma

    def temp_cdegc(self):
        return self.s_temp_cdegc

    def battery_mv(self):
        return self.s_battery_mv

    # ---- depth actuator ----

    def depth_step(self, direction):
        if self.inj_depth_jam:
            return                      # steps lost: the carriage does not follow
        position = self.carriage_um + direction * _DEPTH_UM_PER_STEP
        if position < 0:
            position = 0                # hard stop at the end-stop
        elif position > _DEPTH_TRAVEL_UM:
            position = _DEPTH_TRAVEL_UM
        self.carriage_um = position

    def depth_endstop(self):
        return self.carriage_um <= 0

    def depth_sensor_um(self):
        return self.s_depth_um

    # ---- UV dock ----

    def lid_closed(self):
        return self.lid

    def uv_set(self, on):
        self.uv_led = bool(on)

    def uv_intensity_pm(self):
        return self.s_uv_pm

    # ---- cartridge ----

    @micropython.native
    def cartridge_present(self):
        return self.cartridge is not None

    def cartridge_id(self):
        return self.cartridge

    # ---- housekeeping ----

    def watchdog_feed(self):
        pass

    def safe_stop(self):
        try:
            self.motor_coast()
            self.uv_led = False
        except Exception:
            pass

    def service(self):
        poll = self._rig_poll
        if poll is None or not poll.poll(0):
            return
        chunk = self._rig_in.read(1)
        if not chunk:
            self._rig_poll = None       # supervisor gone
            return
        if chunk != b"\n":
            self._rig_buf += chunk
            return
        line = self._rig_buf
        self._rig_buf = b""
        reply = self.rig_request(line)
        self._rig_out.write(reply.encode() + b"\n")

    def _write_final_plant(self):
        import json
        try:
            with open(self._plant_file, "w") as handle:
                handle.write(json.dumps(self.measure()))
        except Exception:
            pass

    # ---- rig (fault injection, true plant state) ----

    def rig_request(self, line):
        import json
        try:
            request = json.loads(line)
            op = request.get("op")
        except Exception:
            return json.dumps({"ok": False, "error": "bad request"})
        if op == "inject":
            fault = request.get("fault")
            if not self.inject(fault):
                return json.dumps({"ok": False, "error": "unknown fault %s" % fault})
            return json.dumps({"ok": True, "fault": fault, "inject_us": self.inject_us})
        if op == "clear_injections":
            self.clear_injections()
            return json.dumps({"ok": True})
        if op == "cartridge":
            cart = request.get("id")
            self.cartridge = None if cart is None else str(cart).upper()
            return json.dumps({"ok": True, "cartridge": self.cartridge})
        if op == "lid":
            self.lid = bool(request.get("closed"))
            return json.dumps({"ok": True, "lid_closed": self.lid})
        if op == "measure":
            return json.dumps(self.measure())
        return json.dumps({"ok": False, "error": "unknown op %s" % op})

    def inject(self, fault):
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
            self.lid = False
        elif fault == "low_battery":
            self.inj_low_battery = True
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
        self.lid = True

    def measure(self):
        return {
            "ok": True,
            "t_us": self._plant_us,
            "depth_um": self.carriage_um,
            "hz": self.speed_mhz / 1000,
            "motor_on": self.duty_bp > 0,
            "duty_bp": self.duty_bp,
            "current_ma": self.current_ma,
            "temp_cdegc": self.temp_u // 10000,
            "battery_mv": self.battery_mv_now,
            "uv_on": self.uv_led and self.lid,
            "lid_closed": self.lid,
            "cartridge": self.cartridge,
            "strokes": self.strokes,
            "motor_off_us": self.motor_off_us,
            "inject_us": self.inject_us,
            "platform": sys.platform,
        }
