"""`penctl log [--kind K] [--csv F]`: the session log (sessions, sterilisation cycles, faults, fault
clears, crashes) and the audit trail (S20: privileged operations, refused authentication, clock,
ceiling and interval changes; docs/clinical.md §6).

JSON: {"entries": [session-log entries], "audit": {"entries": [audit entries], "oldest", "end",
"lost", "totals"}}; `--kind` keeps the entries of that kind in both. `--csv F` writes both logs, one
row per entry (column `log`: session or audit), oldest first within each.
"""

import csv

from penctl import clinical, paths
from penctl.commands import Command
from penctl.commands.common import open_pen
from penctl.errors import EXIT_USAGE, OutputError, UsageError
from penctl.output import num, table

#: the session log's kinds (pen.app / pen.ops); the audit trail's are penctl.clinical.AUDIT_KINDS
SESSION_KINDS = ("session", "sterilise", "fault", "fault_clear", "crash")
LOG_KINDS = SESSION_KINDS + clinical.AUDIT_KINDS
#: the CSV's first columns; the fields of each kind follow, in order of appearance
CSV_FIRST = ("log", "id", "kind", "t_s", "utc")


def add_arguments(p):
    p.add_argument("--kind", metavar="K", help="only entries of this kind: %s" % ", ".join(LOG_KINDS))
    p.add_argument("--csv", metavar="F.csv", help="also write the entries to this CSV file")


def check(args):
    if args.kind is not None and args.kind not in LOG_KINDS:
        raise UsageError("unknown --kind %r (one of %s)" % (args.kind, ", ".join(LOG_KINDS)), code="USAGE")
    if args.csv:
        args.csv = paths.check_output_path(args.csv, "--csv", ".csv")


def _details(entry):
    kind = entry.get("kind")
    if kind == "session":
        return "%s %s mm %s Hz, cartridge %s, %s after %s s, %s strokes" % (
            entry.get("profile"), num(entry.get("depth_mm")), entry.get("stroke_hz"), entry.get("cartridge"),
            entry.get("end"), num(entry.get("duration_s"), "%.1f"), entry.get("strokes"))
    if kind == "sterilise":
        return "%s%s" % (entry.get("result"), "" if entry.get("reason") in (None, "NONE")
                         else " (%s)" % entry.get("reason"))
    if kind == "fault":
        return entry.get("fault") or ""
    if kind == "fault_clear":
        return "%s cleared: %s" % (entry.get("fault"), entry.get("reason"))
    skip = {"id", "kind", "t_s", "start_s", "utc", "source"}
    return ", ".join("%s %s" % (k, v) for k, v in entry.items() if k not in skip)


def _csv_rows(sessions, audit):
    rows = [dict(e, log="session") for e in sessions]
    rows += [dict({k: v for k, v in e.items() if k != "source"}, log="audit") for e in audit]
    columns = list(CSV_FIRST)
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns, rows


def _write_csv(path, columns, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value):
    if isinstance(value, (dict, list)):
        import json
        return json.dumps(value, sort_keys=True)
    return value


def run(args, out):
    with open_pen(args) as pen:
        sessions = pen.log()
        audit = clinical.read_audit(pen)
    if args.kind is not None:
        sessions = [e for e in sessions if e.get("kind") == args.kind]
        audit["entries"] = [e for e in audit["entries"] if e.get("kind") == args.kind]
    result = {"entries": sessions, "audit": audit}
    if args.csv:
        columns, rows = _csv_rows(sessions, audit["entries"])
        where, exc = paths.write_with_fallback(lambda p: _write_csv(p, columns, rows), args.csv, "log", ".csv")
        if exc is not None:
            # docs/design.md §4: exit 2 (FILE) after the pen was used; the result goes with the error.
            result["csv_fallback"] = where
            out.error(OutputError("--csv %s could not be written (%s); %s" % (
                args.csv, paths.describe_os_error(exc), "the %d rows were saved to %s" % (len(rows), where)
                if where else "no fallback file could be written: run again with --json")), extra=result)
            return EXIT_USAGE
        result["csv"] = where
    lines = []
    rows = [(e.get("id"), e.get("kind"), num(e.get("t_s", e.get("start_s")), "%.1f"), _details(e)) for e in sessions]
    lines.append(table(("ID", "KIND", "PEN_T_S", "DETAILS"), rows) if rows else "(the session log is empty%s)"
                 % (" for kind %s" % args.kind if args.kind else ""))
    rows = [(e.get("id"), e.get("kind"), e.get("utc"), num(e.get("t_s"), "%.1f"), _details(e))
            for e in audit["entries"]]
    lines.append("")
    lines.append("audit trail:")
    lines.append(table(("ID", "KIND", "UTC", "PEN_T_S", "DETAILS"), rows) if rows else "(no audit entries%s)"
                 % (" of kind %s" % args.kind if args.kind else ""))
    if audit.get("oldest"):
        lines.append("%d older audit entries were overwritten (counts of every entry ever written, by kind: %s)"
                     % (audit["oldest"], ", ".join("%s %d" % kv for kv in sorted(audit["totals"].items()))))
    if audit.get("lost"):
        lines.append("%d audit entries could not be written on the pen" % audit["lost"])
    if args.csv:
        lines.append("wrote %s" % args.csv)
    out.result(result, "\n".join(lines))
    return 0


COMMAND = Command("log", "the session log and the audit trail (--kind K, --csv F)", add_arguments, run,
                  check=check)
