# docs/design.md §2: nothing on core 1 allocates, at any uptime. On the MicroPython unix
# port core 1's loop (pen.loop.ControlLoop.run_tick around Controller.tick, the command
# mailbox included) and the simulated plant's step run thousands of times under
# micropython.heap_lock(), where any allocation raises MemoryError, in every state of the
# pen. MicroPython only (CPython has no heap lock).
import fwtest
import penfix
from pen import control as c

TICKS = 5000


def _heap_lock():
    if not fwtest.on_micropython():
        fwtest.skip("micropython.heap_lock() exists only on MicroPython")
    import micropython
    return micropython


def _locked_ticks(pen, n=TICKS, plant=True, command=None):
    """n periods of core 1 (plant step, run_tick, record_cost) under heap_lock, with
    `command` (cmd, a, b, c) posted in the mailbox first as core 0 does; returns us per period."""
    import time
    micropython = _heap_lock()
    app = pen.app
    app.start()
    loop = app.loop
    ctl = pen.ctl
    board = pen.board
    board.stop_control()              # the test is core 1's scheduler now
    if command is not None:
        ctl.cmd, ctl.cmd_a, ctl.cmd_b, ctl.cmd_c = command
        ctl.cmd_seq = (ctl.ack_seq + 1) & 0xFFFF
    error = None
    i = 0
    t0 = time.ticks_us()
    micropython.heap_lock()
    try:
        while i < n:
            if plant:
                board._plant_step()
            loop.run_tick(loop.deadline)
            loop.record_cost(i & 255)
            i += 1
    except MemoryError as exc:
        error = exc
    finally:
        micropython.heap_unlock()
    spent = time.ticks_diff(time.ticks_us(), t0)
    assert error is None, "allocation after %d periods" % i
    # tick() turns any exception into an INTERNAL fault: that must not have happened
    assert ctl.fault != c.F_INTERNAL, "tick raised under heap_lock"
    if command is not None:
        assert ctl.ack_seq == ctl.cmd_seq, "command not executed"
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
    # from the session start command: positioning, soft start, speed loop
    pen = penfix.ready_pen(depth_um=1000, stroke_hz=150, cartridge="CA10010000000000")
    us = _locked_ticks(pen, command=(c.CMD_SESSION_START, 1000, 150, 60000))   # c: the limit, ms
    assert pen.ctl.state == c.RUNNING and pen.board.duty_bp > 0
    assert abs(pen.board.speed_mhz - 150000) * 100 <= 2 * 150000   # the loop still regulates
    print("heap: RUNNING (start + drive) %d periods, %.1f us per period + plant step" % (TICKS, us))
    # drive phase in steady state, with telemetry samples
    tm = pen.ctl.tm_count
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.RUNNING and pen.board.duty_bp > 0 and pen.ctl.tm_count > tm
    print("heap: RUNNING (drive) %d periods, %.1f us per period + plant step" % (TICKS, us))
    # stop: retract the needles, then LOCKED
    _locked_ticks(pen, command=(c.CMD_SESSION_STOP, 0, 0, 0))
    assert pen.ctl.state == c.LOCKED and pen.board.carriage_um == 0


def test_heap_tick_session_time_limit_no_allocation():
    pen = penfix.ready_pen(max_session_s=10, cartridge="CA10030000000000")
    _locked_ticks(pen, 11000, command=(c.CMD_SESSION_START, 500, 100, 10000))   # c: the limit, ms
    assert pen.ctl.state == c.LOCKED and pen.ctl.end_reason == c.END_TIME_LIMIT


def test_heap_tick_sterilising_no_allocation():
    pen = fwtest.Pen()
    pen.boot()
    us = _locked_ticks(pen, command=(c.CMD_STERILISE, 0, 0, 0))
    assert pen.ctl.state == c.STERILISING and pen.board.uv_led and pen.ctl.uv_dose > 0
    print("heap: STERILISING %d periods, %.1f us per period + plant step" % (TICKS, us))
    pen.board.lid = False               # the abort path too
    _locked_ticks(pen, 100)
    assert pen.ctl.state == c.LOCKED and not pen.board.uv_led


def test_heap_tick_faults_no_allocation():
    for index, (fault, name) in enumerate((
            ("stall", c.F_STALL), ("overcurrent", c.F_OVERCURRENT), ("overtemp", c.F_OVERTEMP),
            ("tach_loss", c.F_TACH_LOSS), ("low_battery", c.F_LOW_BATTERY), ("depth_jam", c.F_OVER_DEPTH))):
        pen = penfix.running_pen(cartridge="CA10%012X" % index)
        pen.board.inject(fault)            # the fault latches under the heap lock
        us = _locked_ticks(pen)
        assert pen.ctl.state == c.FAULT and pen.ctl.fault == name, (fault, pen.ctl.fault)
        assert pen.board.duty_bp == 0
        # fault clear refused while the cause is there, executed once it is gone
        _locked_ticks(pen, 10, command=(c.CMD_FAULT_CLEAR, c.LOCKED, 0, 0))
    print("heap: FAULT %d periods, %.1f us per period + plant step" % (TICKS, us))


def test_heap_tick_motor_stuck_on_no_allocation():
    pen = penfix.running_pen(cartridge="CA10000000000010")
    pen.board.inject("motor_stuck_on")
    _locked_ticks(pen, 3000, command=(c.CMD_SESSION_STOP, 0, 0, 0))
    assert pen.ctl.state == c.FAULT and pen.ctl.fault == c.F_MOTOR_STUCK_ON


def test_heap_tick_idle_and_homing_no_allocation():
    pen = fwtest.Pen(seed=7)              # BOOT: homing against the end-stop, then LOCKED
    us = _locked_ticks(pen)
    assert pen.ctl.homed and pen.board.carriage_um == 0
    assert pen.ctl.state == c.LOCKED
    us = _locked_ticks(pen)
    assert pen.ctl.state == c.LOCKED
    print("heap: LOCKED idle %d periods, %.1f us per period + plant step" % (TICKS, us))


def test_heap_plant_step_no_allocation():
    pen = penfix.running_pen(cartridge="CA10020000000000")
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


def test_no_attribute_created_after_init():
    # docs/design.md §2.3: core 0 reads the controller while core 1 writes it; a new
    # attribute could grow (reallocate) the instance's dictionary under the other core.
    pen = penfix.ready_pen(cartridge="CA10000000000020")
    ctl = pen.ctl
    loop = pen.app.loop
    names = (sorted(ctl.__dict__), sorted(loop.__dict__))
    assert pen.request("session_start")["ok"]
    penfix.wait_motor_start(pen)
    pen.run_ms(300)
    pen.board.inject("depth_jam")
    pen.run_ms(100)
    pen.board.clear_injections()
    pen.run_ms(500)
    assert pen.request("fault_clear", reason="test")["ok"]
    pen.boot()
    assert pen.request("sterilise_start")["ok"]
    pen.run_ms(100)
    assert pen.request("sterilise_cancel")["ok"]
    pen.request("timing", reset=True)
    pen.run_ms(10)
    assert (sorted(ctl.__dict__), sorted(loop.__dict__)) == names
