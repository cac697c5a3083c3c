# Pen firmware entry point: picks the board, builds the app, runs it.
# Any exception, Ctrl-C included (S9): motor off first, then the REPL.
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
        sys.print_exception(exc)   # type: ignore[attr-defined]
        raise


main()
