"""`penctl info`: firmware, board, state, depth, frequency, active profile, limits, the clinical
state (depth ceiling, clinician key provisioned or not, wall clock, authentication lock), counters."""

from penctl.commands import Command
from penctl.commands.common import open_pen
from penctl.output import num


def add_arguments(p):
    pass


def run(args, out):
    with open_pen(args) as pen:
        info = pen.info()
    lim = info["limits"]
    counters = info.get("counters") or {}
    state = "%s%s" % (info["state"], " (%s)" % info["fault"] if info.get("fault") else "")
    lines = [
        ("firmware", "%s (protocol %s)" % (info["firmware"], info["protocol"])),
        ("board", "%s, serial %s%s" % (info["board"], info["serial"],
                                       ", %s clock" % info["clock"] if info.get("clock") else "")),
        ("state", state),
        ("depth", "%s mm (set %s mm)" % (num(info["depth_mm"]), num(info["depth_set_mm"]))),
        ("frequency", "%s Hz (set %s Hz)" % (num(info["stroke_hz"], "%.1f"), num(info["stroke_hz_set"], "%.1f"))),
        ("profile", info["profile"] or "(none active)"),
        ("limits", "depth %s-%s mm in %s mm steps, %s-%s Hz, sessions %s-%s s"
         % (num(lim["depth_min_mm"], "%g"), num(lim["depth_max_mm"], "%g"), num(lim["depth_step_mm"], "%g"),
            lim["hz_min"], lim["hz_max"], lim.get("session_min_s"), lim.get("session_max_s"))),
        ("ceiling", "%s mm (deepest profile allowed)" % num(info.get("depth_ceiling_mm"), "%g")),
        ("key", "clinician key %s" % {True: "provisioned", False: "not provisioned"}.get(info.get("key_provisioned"),
                                                                                        "unknown")),
        ("clock", "%s (UTC)" % info["utc"] if info.get("wall_clock_set") else "not set (penctl clock set)"),
        ("lock", "privileged operations locked for %s s" % info["auth_locked_s"] if info.get("auth_locked_s")
         else "none"),
        ("audit", "%s entries written%s" % (info.get("audit_entries"),
                                            ", %s lost" % info["audit_lost"] if info.get("audit_lost") else "")),
        ("counters", ", ".join("%s %s" % (k, v) for k, v in counters.items())),
    ]
    out.result(info, "\n".join("%-10s %s" % pair for pair in lines))
    return 0


COMMAND = Command("info", "firmware, board, state, depth, frequency, active profile, limits, ceiling, key, clock",
                  add_arguments, run)
