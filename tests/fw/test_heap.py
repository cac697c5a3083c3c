# docs/design.md §2: the control tick does not allocate. On the MicroPython unix port
# the tick (and the simulated plant's step) run thousands of times under
# micropython.heap_lock(), where any allocation raises MemoryError, in every
# state of the pen. MicroPython only (CPython has no heap lock).
import fwtest
import penfix
from pen import control as c

TICKS = 5000


def _heap_lock():
    if not fwtest.on_micropython():
        fwtest.skip("micropython.heap_lock() exists only on MicroPython")
    import micropython
    return micropython


def _locked_ticks(pen, n=TICKS, plant=True):
    """n plant steps + ticks under heap_lock; returns (error, us per tick)."""
    import time
    micropython = _heap_lock()
    ctl = pen.ctl
    board = pen.board
    error = None
    i = 0
    t0 = time.ticks_us()
    micropython.heap_lock()
    try:
        while i < n:
            if plant:
                board._plant_step()
            ctl.tick()
            i += 1
    except MemoryError as exc:
        error = exc
    finally:
        micropython.heap_unlock()
    spent = time.ticks_diff(time.ticks_us(), t0)
    assert error is None, "allocation after %d ticks" % i
    # tick() turns any exception into an INTERNAL fault: that must not have happened
    assert ctl.fault != c.F_INTERNAL, "tick raised under heap_lock"
    return spent / n


def test_heap_lock_detects_allocation():
    micropython = _heap_lock()
    caught = False
    micropython.heap_lock()
    try:
        allocated = [0] * 8
        caught = allocated is None
    except MemoryError:
        caught = True
    finally:
        micropython.heap_unlock()
    assert caught


def test_heap_tick_session_no_allocation():
    # from the session start: positioning, soft start, speed loop
    pen = penfix.ready_pen(depth_um=1000, stroke_hz=150, cartridge="CA1001")
    assert pen.request("session_start")["ok"]
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.RUNNING and pen.board.duty_bp > 0
    assert abs(pen.board.speed_mhz - 150000) * 100 <= 2 * 150000   # the loop still regulates
    print("heap: RUNNING (start + drive) %d ticks, %.1f us per tick+plant step" % (TICKS, us))
    # drive phase in steady state
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.RUNNING and pen.board.duty_bp > 0
    print("heap: RUNNING (drive) %d ticks, %.1f us per tick+plant step" % (TICKS, us))
    # stop: retract the needles, then LOCKED
    pen.ctl.stop_session()
    _locked_ticks(pen)
    assert pen.ctl.state == c.LOCKED and pen.board.carriage_um == 0


def test_heap_tick_sterilising_no_allocation():
    pen = fwtest.Pen()
    pen.boot()
    assert pen.request("sterilise_start")["ok"]
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.STERILISING and pen.board.uv_led and pen.ctl.uv_dose > 0
    print("heap: STERILISING %d ticks, %.1f us per tick+plant step" % (TICKS, us))
    pen.board.lid = False               # the abort path too
    _locked_ticks(pen, 100)
    assert pen.ctl.state == c.LOCKED and not pen.board.uv_led


def test_heap_tick_faults_no_allocation():
    for fault, name in (("stall", c.F_STALL), ("overcurrent", c.F_OVERCURRENT), ("overtemp", c.F_OVERTEMP),
                        ("tach_loss", c.F_TACH_LOSS), ("low_battery", c.F_LOW_BATTERY),
                        ("depth_jam", c.F_OVER_DEPTH)):
        pen = penfix.running_pen(cartridge="CA10" + fault)
        pen.board.inject(fault)            # the fault latches under the heap lock
        us = _locked_ticks(pen)
        assert pen.ctl.state == c.FAULT and pen.ctl.fault == name, (fault, pen.ctl.fault)
        assert pen.board.duty_bp == 0
    print("heap: FAULT %d ticks, %.1f us per tick+plant step" % (TICKS, us))


def test_heap_tick_idle_and_homing_no_allocation():
    pen = fwtest.Pen(seed=7)              # BOOT: homing against the end-stop
    us = _locked_ticks(pen)
    assert pen.ctl.homed and pen.board.carriage_um == 0
    pen.app.service()                      # BOOT -> LOCKED (outside the tick)
    assert pen.ctl.state == c.LOCKED
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.LOCKED
    print("heap: LOCKED idle %d ticks, %.1f us per tick+plant step" % (TICKS, us))


def test_heap_plant_step_no_allocation():
    pen = penfix.running_pen(cartridge="CA1002")
    micropython = _heap_lock()
    board = pen.board
    error = None
    i = 0
    micropython.heap_lock()
    try:
        while i < TICKS:
            board._plant_step()
            i += 1
    except MemoryError as exc:
        error = exc
    finally:
        micropython.heap_unlock()
    assert error is None, "plant step allocated after %d steps" % i
    assert board.steps > TICKS
