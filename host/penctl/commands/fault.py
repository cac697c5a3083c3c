"""`penctl fault clear --reason TEXT`: clear a latched fault."""

from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen


def add_arguments(p):
    actions = add_actions(p, "fault_command")
    clear = add_action(actions, "clear", "clear the latched fault; the pen then re-checks itself (homing)",
                       "Clear a latched fault. The reason is recorded in the session log.\n"
                       "The pen then homes the needles and re-checks (state BOOT, then LOCKED\n"
                       "or READY). The pen refuses while the cause is still present.")
    clear.add_argument("--reason", metavar="TEXT", required=True,
                       help="why the fault may be cleared (1-64 printable ASCII characters; logged)")


def check(args):
    from penctl.client import check_reason

    check_reason(args.reason)


def run(args, out):
    with open_pen(args) as pen:
        reply = pen.fault_clear(args.reason)
        state = pen.state()
    out.result({"cleared": reply.get("cleared"), "state": state},
               "cleared %s; the pen is re-checking itself (state %s)" % (reply.get("cleared"), state))
    return 0


COMMAND = Command("fault", "clear a latched fault", add_arguments, run, check=check)
