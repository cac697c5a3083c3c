"""`penctl clock set [--key-file F]`: the pen's wall clock from this computer's UTC (S18)."""

from penctl import clinical
from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen


def add_arguments(p):
    actions = add_actions(p, "clock_command")
    set_ = add_action(actions, "set", "set the pen's clock to this computer's UTC",
                      "Set the pen's wall clock to this computer's time (UTC). The pen loses it at\n"
                      "every power-off; profiles with min_interval_days are refused until it is set\n"
                      "(CLOCK_UNSET). Setting it back by more than one hour needs the clinician key.")
    set_.add_argument("--key-file", metavar="F", help="the clinician key file (to set the clock back > 1 h)")


def check(args):
    args.key = clinical.load_key_file(args.key_file) if args.key_file else None


def run(args, out):
    with open_pen(args) as pen:
        result = clinical.set_clock(pen, key=args.key)
    out.result(result, "pen clock set to %s%s" % (result["utc"], " (with the clinician key)" if args.key else ""))
    return 0


COMMAND = Command("clock", "the pen's wall clock (UTC; lost at power-off)", add_arguments, run, check=check)
