"""`penctl profile push FILE.toml | list | use NAME | rm NAME`: depth profiles on the pen."""

from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen
from penctl.output import num, table

PROFILE_FORMAT = """\
file format (one or more [[profile]] tables, exactly these fields; at most 1 MB):
  [[profile]]
  name = "scalp-crown"     # a-z, 0-9 and '-', 1-24 characters
  depth_mm = 1.0           # 0.25-2.5 mm, on the 0.05 mm grid
  stroke_hz = 110          # 50-150, whole Hz
  max_session_s = 600      # 10-1800, whole seconds
  min_interval_days = 14   # optional, 0-90 whole days between sessions (default 0: none)
The pen refuses profiles deeper than its depth ceiling (penctl info; penctl ceiling set)."""


def add_arguments(p):
    actions = add_actions(p, "profile_command")
    push = add_action(actions, "push", "validate a TOML file and store its profiles on the pen",
                      "Validate every profile of FILE.toml, then store them on the pen\n"
                      "(a profile with the same name is replaced). Nothing is sent if any\n"
                      "profile is invalid (exit 2).\n\n" + PROFILE_FORMAT)
    push.add_argument("file", metavar="FILE.toml")
    add_action(actions, "list", "the profiles on the pen (* = active)")
    use = add_action(actions, "use", "make a stored profile the active one")
    use.add_argument("name", metavar="NAME")
    rm = add_action(actions, "rm", "remove a stored profile")
    rm.add_argument("name", metavar="NAME")


def check(args):
    from penctl import profiles as host_profiles
    from penctl.client import check_profile_name

    if args.profile_command == "push":
        args.wire_profiles = host_profiles.load_file(args.file)     # read and validated once, here
    elif args.profile_command in ("use", "rm"):
        check_profile_name(args.name)


def _profile_rows(listing):
    rows = []
    for p in listing["profiles"]:
        rows.append(("*" if p["name"] == listing["active"] else " ", p["name"], num(p["depth_mm"]) + " mm",
                     "%s Hz" % p["stroke_hz"], "%s s" % p["max_session_s"],
                     "%s d" % p["min_interval_days"] if p.get("min_interval_days") else "-"))
    if not rows:
        return "(no profiles on the pen)"
    return table(("", "NAME", "DEPTH", "FREQUENCY", "MAX SESSION", "INTERVAL"), rows)


def run(args, out):
    from penctl import profiles as host_profiles

    with open_pen(args) as pen:
        if args.profile_command == "push":
            pushed = pen.profile_push([host_profiles.to_host(p) for p in args.wire_profiles])
            listing = pen.profile_list()
            out.result({"pushed": pushed, "profiles": listing["profiles"], "active": listing["active"]},
                       "stored %d profile%s: %s\n\n%s" % (len(pushed), "" if len(pushed) == 1 else "s",
                                                          ", ".join(pushed), _profile_rows(listing)))
        elif args.profile_command == "list":
            listing = pen.profile_list()
            out.result(listing, _profile_rows(listing))
        elif args.profile_command == "use":
            reply = pen.profile_use(args.name)
            out.result({"active": reply.get("active")}, "active profile: %s" % reply.get("active"))
        else:
            reply = pen.profile_rm(args.name)
            out.result({"removed": reply.get("removed"), "active": reply.get("active")},
                       "removed profile %s%s" % (args.name, "" if reply.get("active") else
                                                 " (no profile is active now)"))
    return 0


COMMAND = Command("profile", "manage the depth profiles stored on the pen", add_arguments, run, check=check)
