# S2: measured depth follows the set point within +-0.05 mm once settled; a
# larger deviation (over-depth above all) is a fault with the motor off within
# 2 ticks; depth moves only while the motor is stopped; homing against the
# end-stop at boot. Numbers from docs/design.md §2.1. Runs on CPython and MicroPython.
import fwtest
import penfix

TOL_UM = 50          # +-0.05 mm


def _depth_at_motor_start(depth_um, cartridge):
    pen = penfix.ready_pen(depth_um=depth_um, cartridge=cartridge)
    penfix.start_session(pen)
    penfix.wait_motor_start(pen)
    true_um = pen.board.carriage_um
    # the sensor, averaged over 200 ms of driven motor (it vibrates the sensor)
    total = 0
    worst = 0
    for _ in range(200):
        pen.run_ms(1)
        reading = pen.ctl.depth_um()
        total += reading
        if abs(reading - depth_um) > worst:
            worst = abs(reading - depth_um)
        assert pen.board.carriage_um == true_um
    assert pen.state() == "RUNNING"
    return true_um, total // 200, worst


def test_s2_depth_accuracy_after_positioning():
    for depth_um, cart in ((250, "CA02010000000000"), (1000, "CA02020000000000"), (2500, "CA02030000000000")):
        true_um, sensor_mean, sensor_worst = _depth_at_motor_start(depth_um, cart)
        print("S2 depth set %d um: true %d um (error %d um), sensor mean %d um, worst reading %d um off"
              % (depth_um, true_um, true_um - depth_um, sensor_mean, sensor_worst))
        assert abs(true_um - depth_um) <= TOL_UM
        assert abs(sensor_mean - depth_um) <= TOL_UM
        assert sensor_worst <= TOL_UM


def test_s2_homing_at_boot_reaches_endstop():
    for seed in (1, 7, 12345, 99):
        pen = fwtest.Pen(seed=seed)
        start_um = pen.board.carriage_um
        ms = pen.run_until(lambda pen=pen: pen.ctl.state != 0, 2000)
        print("S2 homing from %d um: %d ms" % (start_um, ms))
        assert pen.board.carriage_um == 0
        assert pen.board.depth_endstop()
        assert pen.ctl.homed and pen.ctl.depth_steps == 0
        # one 5 um step per tick: homing takes as many ticks as steps, plus the check
        assert ms <= start_um // 5 + 3
        assert pen.state() == "LOCKED"
    assert start_um > 0


def test_s2_homing_without_endstop_faults():
    pen = fwtest.Pen(seed=7)
    pen.board.inject("depth_jam")         # the carriage never reaches the end-stop
    pen.run_until(lambda: pen.ctl.state != 0, 2000)
    assert pen.state() == "FAULT"
    assert pen.request("info")["fault"] == "HOMING"
    assert pen.board.duty_bp == 0
    assert pen.request("session_start")["code"] == "FAULT"


def test_s2_over_depth_fault_motor_off_within_2_ticks():
    pen = penfix.running_pen(depth_um=1000, cartridge="CA02110000000000")
    assert pen.board.duty_bp > 0
    pen.board.inject("depth_jam")         # carriage slips 0.15 mm deeper and sticks
    ticks = penfix.ticks_until(pen, lambda: pen.board.duty_bp == 0, 10)
    off_us = pen.board.motor_off_us - pen.board.inject_us
    print("S2 over-depth: motor off after %d ticks (%d us)" % (ticks, off_us))
    assert ticks <= 2
    assert off_us <= 2000
    assert pen.state() == "FAULT"
    assert pen.request("info")["fault"] == "OVER_DEPTH"
    pen.run_ms(2)                         # core 0 reports what core 1 published at its next pass
    ends = pen.events("session_end")
    assert len(ends) == 1 and ends[0]["reason"] == "FAULT"


def test_s2_depth_deviation_tolerance_is_0_05_mm():
    pen = penfix.running_pen(depth_um=1000, cartridge="CA02120000000000")
    # 0.03 mm off: the sensor reads at most 30 + 14 um noise off -> inside +-0.05 mm
    pen.board.carriage_um = 1030
    pen.run_ms(1000)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    pen.board.carriage_um = 970
    pen.run_ms(1000)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    # 0.07 mm shallower (outside): deviation fault, motor off within 2 ticks
    pen.board.carriage_um = 930
    ticks = penfix.ticks_until(pen, lambda: pen.board.duty_bp == 0, 10)
    assert ticks <= 2
    assert pen.request("info")["fault"] == "DEPTH_DEVIATION"


def test_s2_over_depth_boundary():
    pen = penfix.running_pen(depth_um=1000, cartridge="CA02130000000000")
    pen.board.carriage_um = 1070          # 0.07 mm deeper: over-depth
    ticks = penfix.ticks_until(pen, lambda: pen.board.duty_bp == 0, 10)
    assert ticks <= 2
    assert pen.request("info")["fault"] == "OVER_DEPTH"


def test_s2_depth_moves_only_while_motor_stopped():
    pen = penfix.ready_pen(depth_um=2500, max_session_s=10, cartridge="CA02210000000000")
    last_um = pen.board.carriage_um
    penfix.start_session(pen)            # core 1 may take its first step before this returns
    assert pen.board.duty_bp == 0
    moved_before = pen.board.carriage_um - last_um
    assert moved_before in (0, 5)
    last_um = pen.board.carriage_um
    moved_deeper = moved_before // 5
    moved_shallower = 0
    driven_ms = 0
    for _ in range(12000):                # the whole session: position, drive, retract
        driven = pen.board.duty_bp > 0
        speed = pen.board.speed_mhz
        pen.run_ms(1)
        now_um = pen.board.carriage_um
        if driven:
            driven_ms += 1
        if now_um != last_um:
            # never while the motor is driven, in the tick before or this one
            assert not driven and pen.board.duty_bp == 0, (last_um, now_um)
            if now_um > last_um:
                moved_deeper += 1
                assert speed == 0                  # deeper only with the rotor at rest
            else:
                moved_shallower += 1
        last_um = now_um
        if pen.state() == "LOCKED":
            break
    assert pen.state() == "LOCKED"
    assert moved_deeper == 500 and moved_shallower == 500   # 2.5 mm in 5 um steps, and back
    assert driven_ms > 9000
    assert pen.board.carriage_um == 0

