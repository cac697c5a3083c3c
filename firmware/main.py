# Pen firmware entry point: picks the board, builds the app, runs it.
# Any exception, Ctrl-C included (S9): motor off first, then the REPL.
#
# Run as a script (`micropython firmware/main.py`, the virtual pen's factory
# image, a board's /main.py) it starts at once. A flashed pen instead has the
# boot stub (firmware/boot_stub.py) as its /main.py: the firmware, this module
# included, is compiled into a slot /fw/a or /fw/b, and the stub puts the
# active slot first on sys.path, imports this module from there and calls main().
import sys


def _board_module():
    if sys.platform == "rp2":
        from boards import pico_pen as board_module
    else:
        from boards import sim as board_module
    return board_module


def main():
    board = None
    try:
        board = _board_module().Board()
        from pen.app import App
        App(board).run()
    except BaseException as exc:  # KeyboardInterrupt and SystemExit too
        if board is not None:
            board.safe_stop()      # first: stroke motor off, UV off
        if isinstance(exc, KeyboardInterrupt):
            raise
        print_exception = getattr(sys, "print_exception", None)   # MicroPython's
        if print_exception is not None:
            print_exception(exc)
        raise


if __name__ == "__main__":
    main()
