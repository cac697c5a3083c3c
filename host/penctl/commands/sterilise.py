"""`penctl sterilise [--no-wait]`: the dock's UV cycle (unlocks one session)."""

from penctl.commands import Command
from penctl.commands.common import open_pen


def add_arguments(p):
    p.add_argument("--no-wait", action="store_true", help="start the cycle and return at once")


def run(args, out):
    def progress(status):
        dose = status.get("dose") or 0
        out.progress("sterilising: UV dose %3.0f %%, %4.1f s, UV intensity %3.0f %%"
                     % (dose * 100, status.get("elapsed_s") or 0, (status.get("uv_intensity") or 0) * 100))

    with open_pen(args) as pen:
        status = pen.sterilise(wait=not args.no_wait, progress=progress)
    out.end_progress()
    if args.no_wait:
        human = "sterilisation cycle started (60 s at nominal UV); `penctl info` shows when the pen is READY"
    else:
        human = "sterilisation complete after %.1f s: the pen is %s for one session" % (
            status.get("elapsed_s") or 0, "unlocked" if status.get("unlocked") else "NOT unlocked")
    out.result({"sterilise": status, "state": status.get("state")}, human)
    return 0


COMMAND = Command(
    "sterilise", "run a UV sterilisation cycle in the dock (unlocks one session)", add_arguments, run,
    description="Run a UV sterilisation cycle in the closed dock (60 s at nominal UV intensity).\n"
                "A completed cycle unlocks the pen for exactly one session. Waits for the result\n"
                "(at most 180 s) by default (exit 1 if the cycle aborts, e.g. the lid was opened);\n"
                "Ctrl-C while waiting cancels the cycle.")
