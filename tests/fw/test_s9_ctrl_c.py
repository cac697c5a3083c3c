# S9: Ctrl-C (a KeyboardInterrupt raised inside the loop, as mpremote's break
# into the REPL does) stops the motor first. Exercised through App.run (the
# loop) and through main.main() (the firmware entry point), with the interrupt
# raised from a board hook in the middle of a driven session. Runs on CPython
# and MicroPython.
import penfix


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
    pen = penfix.running_pen(cartridge="CA09010000000000")
    probe = _interrupt_after(pen, 300, KeyboardInterrupt())
    try:
        pen.app.run()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt did not propagate")
    assert probe["duty_before"] > 0                 # it was driving when interrupted
    assert pen.board.duty_bp == 0
    assert pen.board.motor_off_us >= 0
    assert pen.board.uv_led is False
    crashes = [e for e in penfix.log_entries(pen) if e["kind"] == "crash"]
    assert len(crashes) == 1 and "KeyboardInterrupt" in crashes[0]["error"]


def test_s9_exception_in_loop_stops_motor_and_is_logged():
    pen = penfix.running_pen(cartridge="CA09020000000000")
    probe = _interrupt_after(pen, 200, RuntimeError("board hook failed"))
    try:
        pen.app.run()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the exception did not propagate")
    assert probe["duty_before"] > 0
    assert pen.board.duty_bp == 0
    # the crash is in the log, and the interrupted session left the pen LOCKED
    pen.power_on()
    assert pen.boot() == "LOCKED"
    entries = penfix.log_entries(pen)
    crashes = [e for e in entries if e["kind"] == "crash"]
    assert len(crashes) == 1 and "board hook failed" in crashes[0]["error"], entries
    # S14: the session's entry has its true end, duration and strokes
    session = [e for e in entries if e["kind"] == "session"][-1]
    assert session["end"] == "CRASH" and session["duration_ms"] > 200 and session["strokes"] > 10, session


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
