"""`penctl log`: the session log (sessions, sterilisation cycles, faults, fault clears)."""

from penctl.commands import Command
from penctl.commands.common import open_pen
from penctl.output import num, table


def add_arguments(p):
    pass


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
    skip = {"id", "kind", "t_s", "start_s"}
    return ", ".join("%s %s" % (k, v) for k, v in entry.items() if k not in skip)


def run(args, out):
    with open_pen(args) as pen:
        entries = pen.log()
    rows = [(e.get("id"), e.get("kind"), num(e.get("t_s", e.get("start_s")), "%.1f"), _details(e)) for e in entries]
    human = table(("ID", "KIND", "PEN_T_S", "DETAILS"), rows) if rows else "(the log is empty)"
    out.result({"entries": entries}, human)
    return 0


COMMAND = Command("log", "the session log (sessions, sterilisation cycles, faults, fault clears)", add_arguments,
                  run)
