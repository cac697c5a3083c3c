"""`penctl interval override --profile NAME --key-file F`: one early session (S18), logged."""

from penctl import clinical
from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen


def add_arguments(p):
    actions = add_actions(p, "interval_command")
    over = add_action(actions, "override", "allow one early session with a profile (needs the clinician key)",
                      "Allow the next session with PROFILE even inside its min_interval_days. The\n"
                      "override and the early session are written to the pen's audit trail.")
    over.add_argument("--profile", metavar="NAME", required=True)
    over.add_argument("--key-file", metavar="F", required=True, help="the clinician key file")


def check(args):
    from penctl.client import check_profile_name

    check_profile_name(args.profile)
    args.key = clinical.load_key_file(args.key_file)


def run(args, out):
    with open_pen(args) as pen:
        result = clinical.interval_override(pen, args.profile, args.key)
    out.result(result, "one early session allowed with profile %s (logged)" % args.profile)
    return 0


COMMAND = Command("interval", "treatment intervals: allow one early session (needs the clinician key)",
                  add_arguments, run, check=check)
