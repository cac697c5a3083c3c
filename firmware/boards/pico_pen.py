# The real pen: RP2040 ("Pico"-class board). Implements docs/board-interface.md
# exactly; pin map, assumed parts and calibration are in docs/hardware.md.
#
# Two cores (docs/design.md §2.3): the control loop (pen.loop) runs on core 1 through
# _thread (rp2 runs the one extra thread on core 1, with no GIL); everything else on
# core 0. Rules for this file:
# - Methods marked "tick" run on core 1 in the 1 kHz control tick: integer maths only,
#   no allocation (no floats, no new objects, no bound-method creation, every
#   intermediate product < 2**30 so it stays a small int on the RP2040), short.
# - The tach IRQ handler (core 0) stores the edge time and increments a counter inside
#   a sequence lock: nothing else. Core 1 reads the pair without disabling interrupts
#   (disable_irq on core 1 would not stop an IRQ taken by core 0).
# - Outputs that can hurt (stroke motor, UV LED) power up OFF: the GPIO reset state is
#   input/high-Z and the board has pull-downs on those nets. After safe_stop() they
#   stay off: core 1 may still be in a tick, and motor_drive() / uv_set(True) then do
#   nothing.
# Timing figures of the pen's CPU are in docs/hardware.md.
import binascii
import sys
import time

import _thread
import machine
import micropython
import select
from micropython import const

from pen.control import SAMPLE_BATTERY_MV as _S_BATTERY
from pen.control import SAMPLE_CARTRIDGE as _S_CARTRIDGE
from pen.control import SAMPLE_CURRENT_MA as _S_CURRENT
from pen.control import SAMPLE_DEPTH_UM as _S_DEPTH
from pen.control import SAMPLE_LID as _S_LID
from pen.control import SAMPLE_TACH_COUNT as _S_TACH_COUNT
from pen.control import SAMPLE_TACH_US as _S_TACH_US
from pen.control import SAMPLE_TEMP_CDEGC as _S_TEMP
from pen.limits import DEPTH_TRAVEL_UM

from boards.ds28e07 import DS28E07

try:
    from onewire import OneWire  # frozen driver on the rp2 port
except ImportError:  # a build without it: cartridge_id() reports no cartridge
    OneWire = None

BOARD_NAME = "pico-pen"

# --- pin map (GPIO numbers; docs/hardware.md has the table) ---
_PIN_MOTOR_PWM = const(2)     # DRV8837 IN1, PWM slice 1 A; IN2 tied low
_PIN_MOTOR_EN = const(3)      # DRV8837 nSLEEP: low = outputs Hi-Z (coast)
_PIN_TACH = const(4)          # Hall switch, open drain, 10k pull-up + RC, falling edge
_PIN_STEP = const(6)          # DRV8834 STEP
_PIN_DIR = const(7)           # DRV8834 DIR: high = deeper
_PIN_STEP_NSLEEP = const(8)   # DRV8834 nSLEEP: high = awake (holds the carriage)
_PIN_ENDSTOP = const(9)       # NO microswitch to GND, closed at the retracted end
_PIN_LID = const(10)          # reed switch to GND, closed when the lid is closed
_PIN_UV = const(11)           # UV-C LED driver enable, active high (also gated by the lid in hardware)
_PIN_CART = const(12)         # cartridge presence switch to GND, closed when seated
_PIN_ONEWIRE = const(13)      # cartridge DS28E07 data, 2.2k pull-up to 3V3
_PIN_AMUX = const(22)         # analogue switch select for ADC2: 0 = NTC, 1 = UV photodiode
_PIN_ADC_CURRENT = const(26)  # ADC0: INA240A1 output (shunt current)
_PIN_ADC_DEPTH = const(27)    # ADC1: DRV5055 linear Hall (carriage position)
_PIN_ADC_MUX = const(28)      # ADC2: NTC divider or UV photodiode TIA, via the switch
_PIN_ADC_BATT = const(29)     # ADC3: battery through a 3:1 divider

# --- stroke motor ---
_PWM_FREQ_HZ = const(20000)   # above hearing; DRV8837 allows up to 250 kHz
_BP_FULL = const(10000)
_U16_FULL = const(65535)      # duty_u16 full scale; 10000 * 65535 < 2**30

# --- depth actuator ---
_STEP_PULSE_US = const(2)     # DRV8834 minimum STEP high time is 1.9 us
_STEP_WAKE_MS = const(2)      # DRV8834 wake-up from sleep: 1 ms max, doubled

# --- analogue calibration (nominal; docs/hardware.md "Calibration") ---
# read_u16() is 0..65535 for 0..ADC_VREF (3.3 V on this board).
_ADC_MV_FS = const(3300)      # mV at read_u16() full scale
# Motor current: 50 mOhm shunt x INA240A1 gain 20 = 1 V/A, so 1 mV = 1 mA.
_CUR_MA_FS = const(_ADC_MV_FS)  # mA at full scale
_CUR_RAW_ZERO = const(40)     # amplifier output at 0 A (offset), in read_u16 counts
# Battery: 1S Li-ion through a 200k/100k divider (3:1).
_BATT_MV_FS = const(_ADC_MV_FS * 3)  # battery mV at full scale; 65535 * 9900 < 2**30
# Depth: ratiometric linear Hall, two-point fit from the end-stop to full travel.
_DEPTH_RAW_0 = const(9930)        # read_u16 at the retracted end-stop (~0.50 V)
_DEPTH_RAW_TRAVEL = const(55606)  # read_u16 at DEPTH_TRAVEL_UM (~2.80 V)
_DEPTH_RAW_SPAN = const(_DEPTH_RAW_TRAVEL - _DEPTH_RAW_0)
# UV: GUVC-T21GH photodiode + transimpedance amp, ~2.0 V at nominal intensity.
_UV_RAW_NOMINAL = const(39718)    # read_u16 at 1000 pm (reference radiometer)
_UV_PM = const(1000)
# Handpiece NTC: 10k B3950 to GND, 10k to the ADC reference (ratiometric).
# _NTC_CDEGC[i] is the temperature at read_u16 == i * 2048 (Beta model); the
# reading is interpolated linearly between entries (error < 0.1 degC over
# 10..60 degC, from the model, not measured). Outside -20..100 degC the sensor is
# taken as open or shorted and reported as _TEMP_SENSOR_FAULT_CDEGC, which is
# above OVERTEMP_CDEGC: a broken thermistor stops the motor instead of hiding heat.
_NTC_SHIFT = const(11)
_NTC_FRAC_MASK = const(2047)
_NTC_RAW_MIN = const(4274)    # 100 degC
_NTC_RAW_MAX = const(59855)   # -20 degC
_TEMP_SENSOR_FAULT_CDEGC = const(15000)
_NTC_CDEGC = (
    12932, 12932, 10160, 8661, 7633, 6849, 6211, 5669, 5196, 4772, 4387,
    4030, 3696, 3379, 3077, 2784, 2500, 2221, 1945, 1670, 1393, 1113,
    825, 528, 217, -114, -471, -867, -1318, -1859, -2560, -3637, -3637,
)
_AMUX_NTC = const(0)
_AMUX_UV = const(1)

# --- tach ---
# The IRQ counter wraps at 2**29: n + 1 must stay below 2**30, the RP2040's
# small-int limit, or the hard IRQ would allocate a long int.
_TACH_MASK = const(0x1FFFFFFF)
_TACH_TRIES = const(4)        # sequence-lock retries before taking the last pair read

# --- watchdog ---
_WDT_TIMEOUT_MS = const(500)
# RP2040 WATCHDOG CTRL (0x40058000) through the atomic bit-clear alias (+0x3000);
# bit 30 is ENABLE. machine.WDT has no way to stop the watchdog, but after
# safe_stop() the REPL must stay usable for mpremote / penctl flash.
_WDT_CTRL_CLR = 0x4005B000
_WDT_CTRL_ENABLE = 0x40000000

# --- cartridge 1-Wire: the DS28E07's commands, family code and retries are in boards/ds28e07.py

# --- core 1 and the console ---
_CORE1_STACK = const(8192)    # core 1's stack (bytes): the tick's native frames
_STOP_WAIT_MS = const(20)     # stop_control() waits this long for core 1 to acknowledge
_CDC_FIFO_BYTES = const(256)  # rp2 USB-CDC TX FIFO (CFG_TUD_CDC_TX_BUFSIZE)


class Board:
    BOARD_NAME = BOARD_NAME   # the app reads board.BOARD_NAME

    def __init__(self):
        # Room for a traceback raised inside the hard IRQ handler.
        micropython.alloc_emergency_exception_buf(100)
        Pin = machine.Pin
        self.serial = binascii.hexlify(machine.unique_id()).decode().upper()
        self.store_dir = "data"
        self.clock_name = "real"      # pen time is the RP2040's own clock
        self.clock_factor_x100 = 0
        # Direct reference to the C function: one call level less.
        self.ticks_us = time.ticks_us
        self._halted = False          # safe_stop() ran: motor_drive / uv_set(True) do nothing
        self._ms_last = time.ticks_ms()
        self._ms_total = time.ticks_diff(self._ms_last, 0)  # pen time since boot, ms (uptime_ms unwraps ticks_ms)

        # Stroke motor: driver asleep (coast) before the PWM exists.
        self._motor_en = Pin(_PIN_MOTOR_EN, Pin.OUT, value=0)
        self._pwm = machine.PWM(Pin(_PIN_MOTOR_PWM), freq=_PWM_FREQ_HZ, duty_u16=0)
        self._duty_bp = 0

        # UV off before anything else can happen.
        self._uv = Pin(_PIN_UV, Pin.OUT, value=0)
        self._lid = Pin(_PIN_LID, Pin.IN, Pin.PULL_UP)

        # Tach: the counter and the edge time live on the instance; the handler is bound
        # once here (binding allocates, so never in the IRQ). _tach_seq is odd while the
        # handler writes the pair (a sequence lock between core 0's IRQ and core 1).
        self._tach_seq = 0
        self._tach_n = 0
        self._tach_t = time.ticks_us()
        self._tach_t_l = self._tach_t  # edge time of the count tach_count() last returned
        self._tach_pin = Pin(_PIN_TACH, Pin.IN, Pin.PULL_UP)
        self._tach_pin.irq(handler=self._tach_irq, trigger=Pin.IRQ_FALLING, hard=True)

        # Core 1 (start_control) and the console.
        self._loop = None
        self._in = sys.stdin.buffer
        self._in_poll = select.poll()
        self._in_poll.register(sys.stdin, select.POLLIN)
        self._in_byte = bytearray(1)
        self._out = sys.stdout.buffer
        self._out_poll = select.poll()
        self._out_poll.register(sys.stdout, select.POLLOUT)

        # Depth actuator.
        self._step = Pin(_PIN_STEP, Pin.OUT, value=0)
        self._dir = Pin(_PIN_DIR, Pin.OUT, value=0)
        self._step_nsleep = Pin(_PIN_STEP_NSLEEP, Pin.OUT, value=1)
        self._endstop = Pin(_PIN_ENDSTOP, Pin.IN, Pin.PULL_UP)
        time.sleep_ms(_STEP_WAKE_MS)

        # Cartridge.
        self._cart = Pin(_PIN_CART, Pin.IN, Pin.PULL_UP)
        self._ow = OneWire(Pin(_PIN_ONEWIRE)) if OneWire is not None else None
        # The cartridge's memory (S19): its used mark, through the same 1-Wire contact.
        self._cart_mem = DS28E07(self._ow) if self._ow is not None else None
        self._cart_rom_read = None   # ROM bytes of the ID cartridge_id() last returned

        # Analogue inputs. Constructing from a Pin puts the pad in analogue mode.
        self._adc_current = machine.ADC(Pin(_PIN_ADC_CURRENT))
        self._adc_depth = machine.ADC(Pin(_PIN_ADC_DEPTH))
        self._adc_mux = machine.ADC(Pin(_PIN_ADC_MUX))
        self._adc_batt = machine.ADC(Pin(_PIN_ADC_BATT))
        self._amux = Pin(_PIN_AMUX, Pin.OUT, value=_AMUX_NTC)
        self._amux_sel = _AMUX_NTC

        # The watchdog starts at the first watchdog_feed() (the app's loop), so
        # boot work and a REPL before the app are not on a 500 ms clock.
        self._wdt = None

    # ---- tach (IRQ on core 0, read on core 1) ----

    def _tach_irq(self, _pin):
        # Hard IRQ: integer stores and a ticks_us() call, nothing else.
        self._tach_seq += 1                 # odd: the pair is being written
        self._tach_t = time.ticks_us()
        self._tach_n = (self._tach_n + 1) & _TACH_MASK
        self._tach_seq = (self._tach_seq + 1) & _TACH_MASK   # even again: consistent

    def tach_count(self) -> int:  # tick
        # The count and its edge time as one pair: read between two equal, even sequence
        # numbers (an edge that lands in between is reported whole at the next tick).
        # Wraps to 0 after 2**29 edges (~41 days of continuous 150 Hz strokes).
        n = self._tach_n
        for _ in range(_TACH_TRIES):
            seq = self._tach_seq
            n = self._tach_n
            t = self._tach_t
            if not seq & 1 and seq == self._tach_seq:
                self._tach_t_l = t
                return n
        return n

    def tach_edge_us(self):  # tick; the edge time of the count tach_count() last returned
        return self._tach_t_l

    # ---- clock and the two cores ----

    def uptime_ms(self) -> int:  # core 0: pen time since boot (ticks_ms unwrapped; may allocate)
        now = time.ticks_ms()
        self._ms_total += time.ticks_diff(now, self._ms_last)
        self._ms_last = now
        return self._ms_total

    def start_control(self, loop) -> None:  # core 0: run pen.loop.ControlLoop on core 1
        self._loop = loop
        _thread.stack_size(_CORE1_STACK)
        _thread.start_new_thread(self._core1, (loop,))

    def _core1(self, loop) -> None:
        # Core 1: spin to each deadline, run the period, measure its cost. Nothing here
        # allocates; an exception stops the motor and ends the thread (core 0 then stops
        # feeding the watchdog: the pen resets).
        ticks_us = time.ticks_us
        ticks_diff = time.ticks_diff
        try:
            while not loop.stop_req:
                deadline = loop.deadline
                while ticks_diff(deadline, ticks_us()) > 0:
                    pass
                start = ticks_us()
                loop.run_tick(start)
                loop.record_cost(ticks_diff(ticks_us(), start))
        except BaseException:  # noqa: B036 - whatever stops core 1, the motor stops first
            self.motor_coast()
            self._uv.value(0)
        loop.stopped = True                 # the acknowledgement core 0 waits for

    def stop_control(self) -> bool:  # core 0: stop core 1 and wait (bounded) for it
        loop = self._loop
        if loop is None:
            return True
        loop.stop_req = True
        start = time.ticks_ms()
        while not loop.stopped:
            if time.ticks_diff(time.ticks_ms(), start) > _STOP_WAIT_MS:
                return False
        return True

    def sync(self) -> None:  # core 0: core 1 runs for real; its writes are visible as made
        pass

    def idle(self, us: int, wake: bool = True) -> bool:  # core 0
        # Wait up to `us`; with `wake`, return False as soon as the console has input.
        if not wake:
            time.sleep_us(us)
            return True
        for _ in self._in_poll.ipoll(us // 1000 if us >= 1000 else 1):
            return False
        return True

    # ---- console (USB-CDC) ----

    def read_in(self, buf) -> int:  # core 0: bytes available now, without waiting
        count = 0
        size = len(buf)
        one = self._in_byte
        while count < size:
            ready = False
            for _ in self._in_poll.ipoll(0):
                ready = True
                break
            if not ready or not self._in.readinto(one):
                break
            buf[count] = one[0]
            count += 1
        return count

    def write_out(self, data) -> int:  # core 0: may block up to 500 ms per 64-byte chunk (rp2)
        # rp2's stdout write returns what went into the USB FIFO: less when the host
        # stopped reading and a chunk waited 500 ms in vain (the rest is dropped).
        written = self._out.write(data)
        return len(data) if written is None else written

    def out_room(self) -> int:  # core 0
        # rp2 reports POLLOUT while the CDC FIFO has any room at all (the exact count is
        # not exposed): a frame written then may still wait for the host (core 0 only).
        for _ in self._out_poll.ipoll(0):
            return _CDC_FIFO_BYTES
        return 0

    # ---- stroke motor ----

    def motor_drive(self, duty_bp: int) -> None:  # tick
        if self._halted:
            return                          # safe_stop() ran; core 1 may still be in a tick
        if duty_bp <= 0:
            duty_bp = 0
        elif duty_bp > _BP_FULL:
            duty_bp = _BP_FULL
        self._duty_bp = duty_bp
        self._pwm.duty_u16(duty_bp * _U16_FULL // _BP_FULL)
        self._motor_en.value(1)

    def motor_coast(self) -> None:  # tick
        # Driver asleep first: that cuts the bridge even if the PWM write failed.
        self._motor_en.value(0)
        self._pwm.duty_u16(0)
        self._duty_bp = 0

    def sample(self, buf) -> None:  # tick: every input of the tick in one call (layout: pen.control SAMPLE_*)
        buf[_S_CURRENT] = self.motor_current_ma()
        buf[_S_BATTERY] = self.battery_mv()
        buf[_S_TEMP] = self.temp_cdegc()
        buf[_S_DEPTH] = self.depth_sensor_um()
        buf[_S_TACH_COUNT] = self.tach_count()
        buf[_S_TACH_US] = self._tach_t_l
        buf[_S_CARTRIDGE] = 1 if self._cart.value() == 0 else 0
        buf[_S_LID] = 1 if self._lid.value() == 0 else 0

    def motor_current_ma(self) -> int:  # tick, one conversion ~4 us (estimate)
        raw = self._adc_current.read_u16() - _CUR_RAW_ZERO
        if raw <= 0:
            return 0
        return (raw * _CUR_MA_FS) >> 16

    # ---- analogue sensors ----

    def _mux_read(self, sel):
        # Each source has its own RC filter (100 nF) ahead of the switch, so the
        # ADC input settles within one conversion after switching (estimate from
        # charge sharing with the ~pF sample capacitor; verify on the bench).
        if self._amux_sel != sel:
            self._amux.value(sel)
            self._amux_sel = sel
        return self._adc_mux.read_u16()

    def temp_cdegc(self) -> int:  # tick
        raw = self._mux_read(_AMUX_NTC)
        if raw < _NTC_RAW_MIN or raw > _NTC_RAW_MAX:
            return _TEMP_SENSOR_FAULT_CDEGC
        i = raw >> _NTC_SHIFT
        lo = _NTC_CDEGC[i]
        return lo + (((_NTC_CDEGC[i + 1] - lo) * (raw & _NTC_FRAC_MASK)) >> _NTC_SHIFT)

    def battery_mv(self) -> int:  # tick
        return (self._adc_batt.read_u16() * _BATT_MV_FS) >> 16

    def uv_intensity_pm(self) -> int:  # tick
        return self._mux_read(_AMUX_UV) * _UV_PM // _UV_RAW_NOMINAL

    def depth_sensor_um(self) -> int:  # tick
        # |raw - raw0| * 3000 < 2**30: stays a small int.
        return (self._adc_depth.read_u16() - _DEPTH_RAW_0) * DEPTH_TRAVEL_UM // _DEPTH_RAW_SPAN

    # ---- depth actuator ----

    def depth_step(self, direction: int) -> None:  # tick, ~6 us (estimate)
        if direction == 1:
            # Defence in depth for S2: never drive the needles deeper while the
            # stroke motor is driven (the core already forbids it).
            if self._duty_bp > 0:
                return
            self._dir.value(1)
        elif direction == -1:
            # At the mechanical stop a step would only hammer the lead screw.
            if self._endstop.value() == 0:
                return
            self._dir.value(0)
        else:
            return
        # DIR is set > 200 ns before STEP rises (one bytecode is longer than that).
        self._step.value(1)
        time.sleep_us(_STEP_PULSE_US)
        self._step.value(0)

    def depth_endstop(self) -> bool:  # tick
        return self._endstop.value() == 0

    # ---- dock / UV ----

    def lid_closed(self) -> bool:  # tick
        return self._lid.value() == 0

    def uv_set(self, on: bool) -> None:  # tick
        # Never on with the lid open, whatever the caller says (the hardware
        # gates the LED driver with the reed switch as well).
        if on and self._lid.value() == 0 and not self._halted:
            self._uv.value(1)
        else:
            self._uv.value(0)

    # ---- cartridge ----

    def cartridge_present(self) -> bool:  # tick
        return self._cart.value() == 0

    def cartridge_id(self):  # loop: ~6 ms of 1-Wire traffic, IRQs off per bit slot
        mem = self._cart_mem
        if mem is None or self._cart.value() != 0:
            return None
        rom = mem.read_rom()   # retries, CRC and the family check (boards/ds28e07.py)
        if rom is None:
            return None
        self._cart_rom_read = rom
        return binascii.hexlify(rom).decode().upper()

    def _cart_rom(self):
        """The ROM of the seated cartridge, which must be the one whose ID the app checked
        (cartridge_id()); OSError otherwise: a mark never lands on another cartridge."""
        mem = self._cart_mem
        if mem is None or self._cart.value() != 0:
            raise OSError("no cartridge")
        rom = mem.read_rom()
        if rom is None:
            raise OSError("cartridge ROM unreadable")
        if rom != self._cart_rom_read:
            raise OSError("the cartridge changed since its ID was read")
        return rom

    def cartridge_used(self) -> bool:  # loop: ~8 ms (READ ROM, then READ MEMORY twice)
        return self._cart_mem.is_used(self._cart_rom())  # type: ignore[union-attr]

    def cartridge_mark_used(self) -> None:  # loop: ~20 ms (scratchpad, COPY, tPROG, read back)
        self._cart_mem.mark_used(self._cart_rom())  # type: ignore[union-attr]

    # ---- housekeeping ----

    def watchdog_feed(self) -> None:  # loop
        wdt = self._wdt
        if wdt is None:
            # (Re)arm: machine.WDT() restarts the hardware watchdog each time.
            wdt = machine.WDT(timeout=_WDT_TIMEOUT_MS)
            self._wdt = wdt
        wdt.feed()

    def service(self) -> None:  # loop: nothing to poll on this board
        pass

    def safe_stop(self) -> None:  # core 0, any time; never raises
        # Motor first (S9), then UV; each step guarded so one failure cannot skip the
        # next. _halted first: core 1 may be in a tick and would drive the motor again.
        self._halted = True
        try:
            self._motor_en.value(0)
        except Exception:
            pass
        try:
            self._pwm.duty_u16(0)
            self._duty_bp = 0
        except Exception:
            pass
        try:
            self._uv.value(0)
        except Exception:
            pass
        # Outputs are off, so the watchdog has nothing left to guard; stop it so
        # a REPL reached by Ctrl-C or a crash stays usable (mpremote, penctl
        # flash). The next watchdog_feed() re-arms it.
        try:
            machine.mem32[_WDT_CTRL_CLR] = _WDT_CTRL_ENABLE
            self._wdt = None
        except Exception:
            pass
