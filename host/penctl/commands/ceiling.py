"""`penctl ceiling set MM --key-file F`: the pen's depth ceiling (S16), with the clinician key."""

from penctl import clinical
from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen
from penctl.output import num


def add_arguments(p):
    actions = add_actions(p, "ceiling_command")
    set_ = add_action(actions, "set", "set the deepest depth any profile may use (needs the clinician key)",
                      "Set the pen's depth ceiling: profiles deeper than it are refused when pushed,\n"
                      "selected or used (DEPTH_CEILING). A factory-fresh pen allows 0.5 mm.")
    set_.add_argument("depth_mm", metavar="MM", help="0.25-2.5 mm on the 0.05 mm grid")
    set_.add_argument("--key-file", metavar="F", required=True, help="the clinician key file")


def check(args):
    clinical.ceiling_um(args.depth_mm)                    # range and grid, before the port opens
    args.key = clinical.load_key_file(args.key_file)


def run(args, out):
    with open_pen(args) as pen:
        result = clinical.set_ceiling(pen, args.depth_mm, args.key)
    out.result(result, "depth ceiling %s mm" % num(result["depth_ceiling_mm"], "%g"))
    return 0


COMMAND = Command("ceiling", "the pen's depth ceiling (needs the clinician key)", add_arguments, run, check=check)
