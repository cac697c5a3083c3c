# S9: Ctrl-C (a KeyboardInterrupt raised inside the loop, as mpremote's break
# into the REPL does) or a crash: the motor goes off first, then the needles retract
# (depth <= 0.05 mm within 1.5 s), and the session's end is recorded with its true
# duration and strokes (S14). Exercised through App.run (the loop) and through
# main.main() (the firmware entry point), with the interrupt raised from a board hook in
# the middle of a driven session, on the target clock (the pen's CPU speed). Runs on
# CPython and MicroPython.
import penfix

RETRACTED_UM = 50            # S9: needles at <= 0.05 mm ...
RETRACT_US = 1500000         # ... within 1.5 s of the motor going off
CTRL_C_US = 50000            # Ctrl-C -> motor off: core 0's longest step (docs/design.md S9)


def _target_session(cartridge):
    pen = penfix.ready_pen(cartridge=cartridge)
    pen.power_on(clock="target")          # the same flash, on the pen's CPU speed
    pen.insert(cartridge)
    assert pen.boot() == "READY"
    penfix.start_session(pen)
    penfix.wait_motor_start(pen)
    pen.run_ms(500)
    return pen


def _check_shutdown(pen, end):
    board = pen.board
    latency = board.motor_off_us - board.interrupt_us
    retract = board.endstop_us - board.motor_off_us
    print("S9 %s: motor off %d us after the interrupt, needles at %d um %d us later"
          % (end, latency, board.carriage_um, retract))
    assert board.duty_bp == 0 and board.uv_led is False
    assert 0 <= latency <= CTRL_C_US
    assert board.carriage_um <= RETRACTED_UM and 0 < retract <= RETRACT_US
    pen.power_on()                        # the records are in flash
    assert pen.boot() == "LOCKED"
    session = [e for e in penfix.log_entries(pen) if e["kind"] == "session"][-1]
    assert session["end"] == end and session["duration_ms"] >= 500 and session["strokes"] >= 40, session


def _interrupt_after(pen, calls, exc):
    """board.service() raises `exc` on its `calls`-th call; returns the probe."""
    probe = {"n": 0, "duty_before": 0}
    board = pen.board

    def service():
        probe["n"] += 1
        if probe["n"] == calls:
            probe["duty_before"] = board.duty_bp
            raise exc
    board.service = service
    return probe


def test_s9_ctrl_c_in_app_run_stops_motor():
    pen = _target_session("CA09010000000000")
    probe = _interrupt_after(pen, 30, KeyboardInterrupt())
    try:
        pen.app.run()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt did not propagate")
    assert probe["duty_before"] > 0                 # it was driving when interrupted
    _check_shutdown(pen, "CTRL_C")
    crashes = [e for e in penfix.log_entries(pen) if e["kind"] == "crash"]
    assert len(crashes) == 1 and "KeyboardInterrupt" in crashes[0]["error"]


def test_s9_exception_in_loop_stops_motor_and_is_logged():
    pen = _target_session("CA09020000000000")
    probe = _interrupt_after(pen, 20, RuntimeError("board hook failed"))
    try:
        pen.app.run()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the exception did not propagate")
    assert probe["duty_before"] > 0
    _check_shutdown(pen, "CRASH")                  # and the interrupted session left the pen LOCKED
    crashes = [e for e in penfix.log_entries(pen) if e["kind"] == "crash"]
    assert len(crashes) == 1 and "board hook failed" in crashes[0]["error"]


def test_s9_ctrl_c_in_main_stops_motor():
    # main.main() picks the board and builds the App itself: hand it a
    # fast-clock sim board on an unlocked flash, start a session from the board
    # hook once the pen is READY, and press Ctrl-C 300 ms into the drive.
    import main
    from pen import app as app_module

    pen = penfix.ready_pen(cartridge="CA09030000000000")
    board = pen.board
    made = {}
    probe = {"driven": 0, "started": False}
    real_app = app_module.App

    class TestApp(real_app):
        def __init__(self, board):
            real_app.__init__(self, board)
            made["app"] = self

    def service():
        app = made["app"]
        if app.ctl.state == 3 and not probe["started"]:      # READY
            probe["started"] = True
            assert app.handle_request({"op": "session_start"})["ok"]
        if board.duty_bp > 0:
            probe["driven"] += 1
            if probe["driven"] == 300:
                raise KeyboardInterrupt()

    class BoardModule:
        @staticmethod
        def Board():
            return board

    board.service = service
    saved = main._board_module
    main._board_module = lambda: BoardModule
    app_module.App = TestApp
    try:
        main.main()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt did not propagate out of main()")
    finally:
        main._board_module = saved
        app_module.App = real_app
    assert probe["driven"] == 300
    assert board.duty_bp == 0
    assert board.uv_led is False
