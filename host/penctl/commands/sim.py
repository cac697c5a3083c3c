"""`penctl sim`: run a virtual pen in the foreground (docs/design.md §5). Needs penctl[sim]."""

import os

from penctl import extras
from penctl.commands import Command
from penctl.errors import UsageError

CLOCKS = ("real", "fast", "target")


def _non_negative_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("must be a whole number of seconds >= 0, not %r" % text)
    return value


def add_arguments(p):
    p.add_argument("--link", metavar="PATH",
                   help="also make PATH a symlink to the pen's port (refused if PATH exists)")
    p.add_argument("--state", metavar="DIR",
                   help="folder used as the pen's flash (persists across restarts; default: a temporary one)")
    p.add_argument("--clock", choices=CLOCKS, default="real",
                   help="real: wall-clock time; fast: simulated time as fast as possible; target: the pen's "
                        "CPU speed (firmware work scaled to the RP2040, docs/design.md §5.2) (default real)")
    p.add_argument("--pen-time-start", metavar="S", type=_non_negative_int, default=0,
                   help="start the pen clock at S seconds (uptime wrap tests; default 0)")
    p.add_argument("--blank", action="store_true",
                   help="start with no firmware (REPL only), e.g. to try `penctl flash`")
    p.add_argument("--control", metavar="SOCK",
                   help="open the rig socket (fault injection, cartridge, power cut) at SOCK")


def check(args):
    extras.require_sim()
    # The virtual pen's own rules (pensim.owned_paths, docs/design.md §5.1), checked here before
    # anything starts so the refusal is a usage error like every other penctl input check.
    from pathlib import Path

    from pensim.owned_paths import PathRefused, check_new_path, check_socket_path

    try:
        if args.link:
            check_new_path(Path(args.link), "--link")
        if args.control:
            check_socket_path(Path(args.control))
    except PathRefused as exc:
        raise UsageError(str(exc), code="FILE") from None
    if args.state and os.path.exists(args.state) and not os.path.isdir(args.state):
        raise UsageError("--state %s: not a folder" % args.state, code="FILE")


def run(args, out):
    import pensim

    try:
        return pensim.run_sim(link=args.link, state_dir=args.state, clock=args.clock, blank=args.blank,
                              control=args.control, json_out=args.json, pen_time_start_s=args.pen_time_start)
    except ValueError as exc:          # the virtual pen's own checks (e.g. --pen-time-start too large)
        raise UsageError(str(exc)) from None


COMMAND = Command(
    "sim", "run a virtual pen in the foreground until Ctrl-C / SIGTERM", add_arguments, run,
    description="Run a virtual pen (the real firmware on the MicroPython unix port, behind a pty)\n"
                "until SIGINT/SIGTERM. The first stdout line is `port: <path>` (with --json:\n"
                '{"port": ..., "pid": ...}); pass that path to --port in another terminal.\n'
                "Needs penctl[sim] (pip install 'penctl[sim]').",
    check=check, stops_on_signals=False)
