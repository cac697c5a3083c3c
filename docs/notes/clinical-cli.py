# DRAFT for phase 2 (issue 11): the clinical commands of `penctl` as one command module,
# host/penctl/cli_clinical.py. Not importable from here (docs/notes/ is not a package); it is
# written against the current host/penctl/cli.py helpers (Out, _open_pen, _table, _Parser,
# EPILOG_SHORT), which it receives as arguments so that the CLI helper's rewrite can keep or
# rename them. Everything it calls in the library exists now: penctl.clinical
# (host/penctl/clinical.py) and penctl.Pen.
#
# Commands, arguments and exit codes (docs/design.md §4; 0 ok, 1 the pen refused, 2 usage or
# input file and nothing was sent, 3 connection/timeout/protocol):
#
#   penctl key new --key-file F.penkey [--pen-serial SN]
#       writes a new random key (O_EXCL, mode 0600); never talks to the pen.
#       0 written | 2 F exists (never overwritten), not *.penkey, a folder, missing parent,
#       no write permission, bad serial
#   penctl key provision --key-file F [--current-key-file G]
#       first key: sent once in clear; a pen that has a key needs G (the new key goes wrapped).
#       0 | 1 AUTH_FAILED, AUTH_LOCKED, STORE_CORRUPT ... | 2 bad key file, F is another pen's
#       key, or the pen has a key and G is missing (the new key was not sent) | 3
#   penctl ceiling set MM --key-file F
#       0 | 1 AUTH_FAILED, AUTH_LOCKED, NO_KEY, DEPTH_RANGE/DEPTH_GRID from the pen | 2 MM not
#       0.25-2.5 on the 0.05 grid (checked before the port is opened), bad key file | 3
#   penctl clock set [--key-file F]
#       sends this computer's UTC. 0 | 1 AUTH_REQUIRED (back by more than an hour: the message
#       says to pass --key-file), AUTH_FAILED, AUTH_LOCKED, NO_KEY | 2 bad key file | 3
#   penctl interval override --profile NAME --key-file F
#       0 | 1 UNKNOWN_PROFILE, AUTH_*, NO_KEY, STORE_CORRUPT | 2 bad NAME, bad key file | 3
#   penctl log [--kind K] [--csv F]        (global --json: {"entries": [...], "audit": {...}})
#       the session log and the audit trail, oldest first within each; K one of LOG_KINDS.
#       0 | 2 unknown K, bad --csv path (checked before the port is opened) | 3
import csv
import os

from penctl import clinical
from penctl.errors import EXIT_OK, UsageError

SESSION_KINDS = ("session", "sterilise", "fault", "fault_clear", "crash")
LOG_KINDS = SESSION_KINDS + clinical.AUDIT_KINDS


def add_parsers(add, epilog_short):
    """Register the commands; `add(name, help, description)` is cli.build_parser's helper."""
    p = add("key", "clinician key: make a key file, give a pen its key",
            "The clinician key authorises ceiling changes, clock steps back and interval\n"
            "overrides (docs/clinical.md). A key file is a secret: mode 0600, one per pen.")
    ksub = p.add_subparsers(dest="key_command", metavar="ACTION")
    ksub.required = True
    kn = ksub.add_parser("new", help="write a new random key file (never overwrites one)", epilog=epilog_short)
    kn.add_argument("--key-file", metavar="F.penkey", required=True, help="the key file to create")
    kn.add_argument("--pen-serial", metavar="SN", help="bind the key to this pen (penctl info shows the serial)")
    kp = ksub.add_parser("provision", help="give the pen its clinician key", epilog=epilog_short)
    kp.add_argument("--key-file", metavar="F", required=True, help="the key the pen will hold")
    kp.add_argument("--current-key-file", metavar="G",
                    help="the key the pen holds now (needed to replace it; the new key then travels wrapped)")

    p = add("ceiling", "the pen's depth ceiling (needs the clinician key)")
    csub = p.add_subparsers(dest="ceiling_command", metavar="ACTION")
    csub.required = True
    cs = csub.add_parser("set", help="set the deepest depth any profile may use", epilog=epilog_short)
    cs.add_argument("depth_mm", metavar="MM", help="0.25-2.5 mm on the 0.05 mm grid")
    cs.add_argument("--key-file", metavar="F", required=True)

    p = add("clock", "the pen's wall clock (UTC, lost at power-off)")
    tsub = p.add_subparsers(dest="clock_command", metavar="ACTION")
    tsub.required = True
    ts = tsub.add_parser("set", help="set the pen's clock to this computer's UTC", epilog=epilog_short)
    ts.add_argument("--key-file", metavar="F", help="needed to set it back by more than one hour")

    p = add("interval", "treatment intervals")
    isub = p.add_subparsers(dest="interval_command", metavar="ACTION")
    isub.required = True
    io = isub.add_parser("override", help="allow one early session with a profile (logged)", epilog=epilog_short)
    io.add_argument("--profile", metavar="NAME", required=True)
    io.add_argument("--key-file", metavar="F", required=True)
    # `log` exists already; it gains:  --kind K (choices=LOG_KINDS)  and  --csv F


def cmd_key(args, out, open_pen):
    if args.key_command == "new":
        key = clinical.new_key_file(args.key_file, pen_serial=args.pen_serial)
        out.result({"key_file": args.key_file, "key_id": key.key_id, "pen_serial": key.pen_serial},
                   "wrote %s (key id %s%s): keep it private, it is the clinician key"
                   % (args.key_file, key.key_id, ", pen %s" % key.pen_serial if key.pen_serial else ""))
        return EXIT_OK
    key = clinical.load_key_file(args.key_file)                  # before the port is opened
    current = clinical.load_key_file(args.current_key_file) if args.current_key_file else None
    with open_pen(args) as pen:
        reply = clinical.provision_key(pen, key, current=current)
    out.result({"key_id": reply.get("key_id"), "replaced": current is not None},
               "the pen now holds key %s" % reply.get("key_id"))
    return EXIT_OK


def cmd_ceiling(args, out, open_pen):
    clinical.ceiling_um(args.depth_mm)                           # exit 2 before anything is sent
    key = clinical.load_key_file(args.key_file)
    with open_pen(args) as pen:
        result = clinical.set_ceiling(pen, args.depth_mm, key)
    out.result(result, "depth ceiling %g mm" % result["depth_ceiling_mm"])
    return EXIT_OK


def cmd_clock(args, out, open_pen):
    key = clinical.load_key_file(args.key_file) if args.key_file else None
    with open_pen(args) as pen:
        result = clinical.set_clock(pen, key=key)
    out.result(result, "pen clock set to %s%s" % (result["utc"], " (with the clinician key)" if key else ""))
    return EXIT_OK


def cmd_interval(args, out, open_pen):
    from penctl.client import check_profile_name

    check_profile_name(args.profile)
    key = clinical.load_key_file(args.key_file)
    with open_pen(args) as pen:
        result = clinical.interval_override(pen, args.profile, key)
    out.result(result, "one early session allowed with profile %s (logged)" % args.profile)
    return EXIT_OK


def check_log_args(args):
    """--kind and --csv, before the port is opened (exit 2)."""
    if args.kind is not None and args.kind not in LOG_KINDS:
        raise UsageError("unknown --kind %r (one of %s)" % (args.kind, ", ".join(LOG_KINDS)), code="USAGE")
    if args.csv:
        if not args.csv.lower().endswith(".csv"):
            raise UsageError("--csv writes a CSV file: give a name ending in .csv (got %s)" % args.csv, code="USAGE")
        folder = os.path.dirname(os.path.abspath(args.csv))
        if os.path.isdir(args.csv) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError("cannot write %s" % args.csv, code="FILE")


def cmd_log(args, out, open_pen, table):
    check_log_args(args)
    with open_pen(args) as pen:
        sessions = [dict(e, source="session") for e in pen.log()]
        audit = clinical.read_audit(pen)
    if args.kind is not None:
        sessions = [e for e in sessions if e.get("kind") == args.kind]
        audit["entries"] = [e for e in audit["entries"] if e.get("kind") == args.kind]
    entries = sessions + audit["entries"]
    if args.csv:
        columns = ["source", "id", "kind", "t_s", "utc"]
        for entry in entries:
            columns += [k for k in entry if k not in columns]
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(entries)
    notes = []
    if audit["oldest"]:
        notes.append("%d older audit entries were overwritten (counts by kind: %s)"
                     % (audit["oldest"], ", ".join("%s %d" % kv for kv in sorted(audit["totals"].items()))))
    if audit["lost"]:
        notes.append("%d audit entries could not be written on the pen" % audit["lost"])
    rows = [(e.get("source"), e.get("id"), e.get("kind"), e.get("utc", "-"),
             ", ".join("%s %s" % kv for kv in e.items() if kv[0] not in ("source", "id", "kind", "utc")))
            for e in entries]
    human = table(("LOG", "ID", "KIND", "UTC", "DETAILS"), rows) if rows else "(the log is empty)"
    out.result({"entries": entries, "audit": {k: audit[k] for k in ("oldest", "end", "lost", "totals")}},
               "\n".join([human] + notes))
    return EXIT_OK


# In cli.py (phase 2):
#   from penctl import cli_clinical
#   cli_clinical.add_parsers(add, EPILOG_SHORT)                      # in build_parser()
#   COMMANDS.update({
#       "key": lambda a, o: cli_clinical.cmd_key(a, o, _open_pen),
#       "ceiling": lambda a, o: cli_clinical.cmd_ceiling(a, o, _open_pen),
#       "clock": lambda a, o: cli_clinical.cmd_clock(a, o, _open_pen),
#       "interval": lambda a, o: cli_clinical.cmd_interval(a, o, _open_pen),
#       "log": lambda a, o: cli_clinical.cmd_log(a, o, _open_pen, _table),
#   })
# and `log` gets  --kind K  and  --csv F  arguments. `penctl info` adds the clinical fields
# with penctl.clinical.clinical_info_to_host(raw) (Pen.info() drops unknown keys today).
