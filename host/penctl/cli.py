"""`penctl`: the command line of the pen host tool (docs/design.md §4)."""

import argparse
import json
import math
import os
import signal
import sys
import time

from penctl import errors
from penctl.errors import EXIT_CONNECTION, EXIT_OK, EXIT_REFUSED, PenctlError, UsageError

EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Host tool for the motorised microneedling pen: configure depth profiles, run
the dock sterilisation cycle, run and stop treatment sessions, stream and
export telemetry, read the session log, clear faults, deploy the firmware.

Every value is checked on this computer before anything is sent; the pen
checks again and refuses what it must (locked out, used cartridge, fault)."""

EPILOG = """\
port selection:
  --port, else $PENCTL_PORT, else the single attached pen found by its USB id
  (2e8a:0005, MicroPython on an RP2040). No pen attached: exit 3. Several
  attached: exit 2, and the message lists them so you can pick one with --port.
  --port takes a device path (/dev/ttyACM0, /dev/pts/5) or any pyserial URL
  (socket://host:port, rfc2217://host:port).

exit codes:
  0  ok
  1  the pen refused (locked out, fault, used cartridge, invalid value);
     the message names the reason and --json gives its stable code
  2  usage or input-file error: nothing was sent to the pen
  3  connection, timeout or protocol error (no pen, no reply, wrong version)
  130 interrupted with Ctrl-C (a running session is stopped first)

--json prints exactly one JSON object on stdout for every command, errors
included: {"ok": false, "error": {"code": ..., "message": ...}}.

examples:
  penctl sim --clock fast                 # a virtual pen; prints "port: /dev/pts/N"
  penctl --port /dev/pts/N info
  penctl profile push profiles/scalp.toml
  penctl profile use scalp-crown
  penctl sterilise
  penctl session run --seconds 30 --csv run.csv --plot run.png"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UsageError (exit 2, JSON-aware)."""

    def error(self, message):
        raise UsageError("%s (see `%s --help`)" % (message, self.prog), code="USAGE")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds, not %r" % text) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a number of seconds > 0, not %r" % text)
    return value


def build_parser():
    parser = _Parser(prog="penctl", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", metavar="URL|PATH", default=os.environ.get("PENCTL_PORT") or None,
                        help="serial port of the pen: device path or pyserial URL "
                             "(default: $PENCTL_PORT, else auto-detect by USB id)")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output: exactly one JSON object on stdout")
    parser.add_argument("--timeout", metavar="S", type=_positive_float, default=None,
                        help="seconds to wait for each reply from the pen (default 3)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, help_text, description=None):
        return sub.add_parser(name, help=help_text, description=description or help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SHORT)

    p = add("sim", "run a virtual pen in the foreground until Ctrl-C / SIGTERM",
            "Run a virtual pen (the real firmware on the MicroPython unix port, behind a pty)\n"
            "until SIGINT/SIGTERM. The first stdout line is `port: <path>` (with --json:\n"
            '{"port": ..., "pid": ...}); pass that path to --port in another terminal.')
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pen's port")
    p.add_argument("--state", metavar="DIR",
                   help="folder used as the pen's flash (persists across restarts; default: a temporary one)")
    p.add_argument("--clock", choices=("real", "fast", "target"), default="real",
                   help="real: wall-clock time; fast: simulated time as fast as possible; target: the pen's "
                        "CPU speed (firmware work scaled to the RP2040, docs/design.md §5.2) (default real)")
    p.add_argument("--pen-time-start", metavar="S", type=int, default=0,
                   help="start the pen clock at S seconds (uptime wrap tests; default 0)")
    p.add_argument("--blank", action="store_true",
                   help="start with no firmware (REPL only), e.g. to try `penctl flash`")
    p.add_argument("--control", metavar="SOCK", help="open the rig socket (fault injection, cartridge) at SOCK")

    add("info", "firmware, board, state, depth, frequency, active profile, limits, counters")

    p = add("profile", "manage the depth profiles stored on the pen")
    psub = p.add_subparsers(dest="profile_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    pp = psub.add_parser("push", help="validate a TOML file and store its profiles on the pen",
                         description="Validate every profile of FILE.toml, then store them on the pen\n"
                         "(a profile with the same name is replaced). Nothing is sent if any\n"
                         "profile is invalid (exit 2).\n\n" + PROFILE_FORMAT,
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SHORT)
    pp.add_argument("file", metavar="FILE.toml")
    psub.add_parser("list", help="the profiles on the pen (* = active)", epilog=EPILOG_SHORT,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    pu = psub.add_parser("use", help="make a stored profile the active one", epilog=EPILOG_SHORT,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pu.add_argument("name", metavar="NAME")
    pr = psub.add_parser("rm", help="remove a stored profile", epilog=EPILOG_SHORT,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("name", metavar="NAME")

    p = add("sterilise", "run a UV sterilisation cycle in the dock (unlocks one session)",
            "Run a UV sterilisation cycle in the closed dock (60 s at nominal UV intensity).\n"
            "A completed cycle unlocks the pen for exactly one session. Waits for the result\n"
            "by default (exit 1 if the cycle aborts, e.g. the lid was opened); Ctrl-C while\n"
            "waiting cancels the cycle.")
    p.add_argument("--no-wait", action="store_true", help="start the cycle and return at once")

    p = add("session", "start, stop or run a treatment session")
    ssub = p.add_subparsers(dest="session_command", metavar="ACTION", parser_class=_Parser)
    ssub.required = True
    ss = ssub.add_parser("start", help="start a session (needs a sterilised pen and a fresh cartridge)",
                         description="Start a session and return; it runs until `session stop`, the\n"
                         "profile's max_session_s, a fault or cartridge removal.",
                         epilog=EPILOG_SHORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    ss.add_argument("--profile", metavar="NAME", help="profile to use (default: the active one)")
    ssub.add_parser("stop", help="stop the running session (motor off, needles retracted)",
                    epilog=EPILOG_SHORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    sr = ssub.add_parser("run", help="start a session, record telemetry for N seconds, stop it",
                         description="Start a session, record telemetry for N seconds of pen time, then\n"
                         "stop it. The session is stopped whatever happens (Ctrl-C included).\n"
                         "Exit 1 if the pen ends it early for a fault or a removed cartridge\n"
                         "(the recording is still written).",
                         epilog=EPILOG_SHORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    sr.add_argument("--seconds", metavar="N", type=_positive_float, required=True,
                    help="how long to run, in seconds of pen time")
    sr.add_argument("--profile", metavar="NAME", help="profile to use (default: the active one)")
    sr.add_argument("--csv", metavar="F", help="write the telemetry rows to this CSV file")
    sr.add_argument("--plot", metavar="F.png", help="plot frequency, depth, current, temperature to this PNG")

    p = add("telemetry", "stream live telemetry for N seconds",
            "Stream the pen's telemetry (50 samples/s) for N seconds of pen time.\n\n" + TELEMETRY_COLUMNS)
    p.add_argument("--seconds", metavar="N", type=_positive_float, required=True,
                   help="how long to record, in seconds of pen time")
    p.add_argument("--csv", metavar="FILE", help="write the rows to this CSV file")
    p.add_argument("--plot", metavar="FILE.png", help="plot frequency, depth, current, temperature to this PNG")

    add("log", "the session log (sessions, sterilisation cycles, faults, fault clears)")

    p = add("flash", "deploy the firmware to the pen",
            "Deploy the firmware: compiled .mpy files, only the changed ones, staged then\n"
            "swapped, verified, then the pen is reset. The pen keeps its previous firmware\n"
            "if anything fails.")
    p.add_argument("--source", metavar="DIR", help="firmware folder (default: this repository's firmware/)")

    p = add("fault", "clear a latched fault")
    fsub = p.add_subparsers(dest="fault_command", metavar="ACTION", parser_class=_Parser)
    fsub.required = True
    fc = fsub.add_parser("clear", help="clear the latched fault; the pen then re-checks itself (homing)",
                         description="Clear a latched fault. The reason is recorded in the session log.\n"
                         "The pen then homes the needles and re-checks (state BOOT, then LOCKED\n"
                         "or READY).", epilog=EPILOG_SHORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    fc.add_argument("--reason", metavar="TEXT", required=True,
                    help="why the fault may be cleared (1-64 printable ASCII characters; logged)")
    return parser


EPILOG_SHORT = "exit codes: 0 ok, 1 the pen refused, 2 usage/input file (nothing sent), " \
               "3 connection/timeout/protocol, 130 interrupted"

PROFILE_FORMAT = """\
file format (one or more [[profile]] tables, exactly these fields):
  [[profile]]
  name = "scalp-crown"     # a-z, 0-9 and '-', 1-24 characters
  depth_mm = 1.0           # 0.25-2.5 mm, on the 0.05 mm grid
  stroke_hz = 110          # 50-150, whole Hz
  max_session_s = 600      # 10-1800, whole seconds"""

TELEMETRY_COLUMNS = """\
CSV columns / JSON row keys: t_s (pen time since power-on, s), state, depth_set_mm,
depth_mm, hz_set, hz, duty (0..1), current_ma, temp_c, battery_v, strokes, faults,
overruns, tick_max_us"""


# ---------------------------------------------------------------------------------------------
# output


class Out:
    def __init__(self, json_mode):
        self.json = json_mode
        self.progress_on = _stderr_is_tty()
        self._last_progress = 0.0
        self._progress_shown = False

    def result(self, obj, human=None):
        if self.json:
            payload = {"ok": True}
            payload.update(obj)
            sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
        elif human:
            sys.stdout.write(human.rstrip("\n") + "\n")
        sys.stdout.flush()

    def error(self, exc, extra=None):
        self.end_progress()
        text = str(exc.message)
        if isinstance(exc, errors.PenRefused) and exc.code not in text:
            text = "%s (%s)" % (text, exc.code)       # the stable code names the reason
        for line in text.splitlines() or [""]:
            sys.stderr.write("penctl: %s\n" % line)
        sys.stderr.flush()
        if self.json:
            err = {"code": exc.code, "message": exc.message}
            if getattr(exc, "field", None):
                err["field"] = exc.field
            payload = {"ok": False, "error": err}
            if extra:
                payload.update(extra)
            sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
            sys.stdout.flush()

    def progress(self, text, force=False):
        if not self.progress_on:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.1:
            return
        self._last_progress = now
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()
        self._progress_shown = True

    def end_progress(self):
        if self._progress_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._progress_shown = False


def _stderr_is_tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _num(value, fmt="%.2f", none="-"):
    if value is None:
        return none
    text = fmt % value
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]                              # no "-0.00" from sensor noise
    return text


def _table(headers, rows):
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    lines = ["  ".join(str(h).ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# commands


def _open_pen(args):
    from penctl.client import Pen

    return Pen(args.port, timeout=args.timeout)


def cmd_info(args, out):
    with _open_pen(args) as pen:
        info = pen.info()
    lim = info["limits"]
    counters = info.get("counters") or {}
    state = info["state"] + (" (%s)" % info["fault"] if info.get("fault") else "")
    lines = [
        ("firmware", "%s (protocol %s)" % (info["firmware"], info["protocol"])),
        ("board", "%s, serial %s%s" % (info["board"], info["serial"],
                                       ", %s clock" % info["clock"] if info.get("clock") else "")),
        ("state", state),
        ("depth", "%s mm (set %s mm)" % (_num(info["depth_mm"]), _num(info["depth_set_mm"]))),
        ("frequency", "%s Hz (set %s Hz)" % (_num(info["stroke_hz"], "%.1f"), _num(info["stroke_hz_set"], "%.1f"))),
        ("profile", info["profile"] or "(none active)"),
        ("limits", "depth %g-%g mm in %g mm steps, %d-%d Hz, sessions %s-%s s"
         % (lim["depth_min_mm"], lim["depth_max_mm"], lim["depth_step_mm"], lim["hz_min"], lim["hz_max"],
            lim.get("session_min_s"), lim.get("session_max_s"))),
        ("counters", ", ".join("%s %s" % (k, v) for k, v in counters.items())),
    ]
    out.result(info, "\n".join("%-10s %s" % pair for pair in lines))
    return EXIT_OK


def _profile_rows(listing):
    rows = []
    for p in listing["profiles"]:
        rows.append(("*" if p["name"] == listing["active"] else " ", p["name"], _num(p["depth_mm"]) + " mm",
                     "%s Hz" % p["stroke_hz"], "%s s" % p["max_session_s"]))
    return _table(("", "NAME", "DEPTH", "FREQUENCY", "MAX SESSION"), rows) if rows else "(no profiles on the pen)"


def cmd_profile(args, out):
    from penctl import profiles as host_profiles

    if args.profile_command == "push":
        wire_profiles = host_profiles.load_file(args.file)     # UsageError before connecting
        with _open_pen(args) as pen:
            pushed = pen.profile_push([host_profiles.to_host(p) for p in wire_profiles])
            listing = pen.profile_list()
        out.result({"pushed": pushed, "profiles": listing["profiles"], "active": listing["active"]},
                   "stored %d profile%s: %s\n\n%s" % (len(pushed), "" if len(pushed) == 1 else "s",
                                                      ", ".join(pushed), _profile_rows(listing)))
        return EXIT_OK
    if args.profile_command == "list":
        with _open_pen(args) as pen:
            listing = pen.profile_list()
        out.result(listing, _profile_rows(listing))
        return EXIT_OK
    from penctl.client import check_profile_name

    name = check_profile_name(args.name)                      # before connecting
    with _open_pen(args) as pen:
        if args.profile_command == "use":
            reply = pen.profile_use(name)
            out.result({"active": reply.get("active")}, "active profile: %s" % reply.get("active"))
        else:
            reply = pen.profile_rm(name)
            out.result({"removed": reply.get("removed"), "active": reply.get("active")},
                       "removed profile %s%s" % (name, "" if reply.get("active") else " (no profile is active now)"))
    return EXIT_OK


def cmd_sterilise(args, out):
    def progress(status):
        dose = status.get("dose") or 0
        out.progress("sterilising: UV dose %3.0f %%, %4.1f s, UV intensity %3.0f %%"
                     % (dose * 100, status.get("elapsed_s") or 0, (status.get("uv_intensity") or 0) * 100))

    with _open_pen(args) as pen:
        status = pen.sterilise(wait=not args.no_wait, progress=progress)
    out.end_progress()
    if args.no_wait:
        human = "sterilisation cycle started (60 s at nominal UV); `penctl info` shows when the pen is READY"
    else:
        human = "sterilisation complete after %.1f s: the pen is %s for one session" % (
            status.get("elapsed_s") or 0, "unlocked" if status.get("unlocked") else "NOT unlocked")
    out.result({"sterilise": status, "state": status.get("state")}, human)
    return EXIT_OK


def _sample_progress(out, label):
    def show(row):
        out.progress("%s: t %8.2f s  %-11s %6.1f Hz  depth %s mm  %5d mA  %5.1f degC"
                     % (label, row["t_s"], row["state"], row["hz"], _num(row["depth_mm"]), row["current_ma"],
                        row["temp_c"]))
    return show


def _write_outputs(args, rows, title):
    written = {}
    if args.csv:
        from penctl import telemetry as tm

        try:
            tm.write_csv(rows, args.csv)
        except OSError as exc:
            raise UsageError("cannot write %s: %s" % (args.csv, exc.strerror or exc), code="FILE") from None
        written["csv"] = args.csv
    if args.plot:
        from penctl import telemetry as tm

        try:
            tm.plot(rows, args.plot, title=title)
        except OSError as exc:
            raise UsageError("cannot write %s: %s" % (args.plot, exc.strerror or exc), code="FILE") from None
        written["plot"] = args.plot
    return written


def _check_output_paths(args):
    """Fail before touching the pen if an output file cannot be written."""
    for path in (args.csv, args.plot):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError("cannot write %s: folder %s does not exist" % (path, folder), code="FILE")
        if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise UsageError("cannot write %s: permission denied" % path, code="FILE")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError("--plot writes a PNG: give a file name ending in .png (got %s)" % args.plot,
                         code="USAGE")


def _rows_summary(rows, every_s=1.0):
    """A short table: about one row per `every_s` of pen time, plus the last."""
    picked = []
    next_t = None
    for row in rows:
        if next_t is None or row["t_s"] >= next_t:
            picked.append(row)
            next_t = row["t_s"] + every_s
    if rows and picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    return _table(("T_S", "STATE", "DEPTH_MM", "HZ", "DUTY", "CURRENT_MA", "TEMP_C", "BATTERY_V", "STROKES"),
                  [("%.2f" % r["t_s"], r["state"], "%s/%s" % (_num(r["depth_mm"]), _num(r["depth_set_mm"])),
                    "%s/%s" % (_num(r["hz"], "%.1f"), _num(r["hz_set"], "%.1f")), _num(r["duty"]),
                    r["current_ma"], _num(r["temp_c"], "%.1f"), _num(r["battery_v"]), r["strokes"])
                   for r in picked])


def cmd_session(args, out):
    from penctl.client import check_profile_name

    profile = getattr(args, "profile", None)
    if profile is not None:
        check_profile_name(profile)
    if args.session_command == "start":
        with _open_pen(args) as pen:
            reply = pen.session_start(profile)
        out.result(reply, "session %s started: profile %s, cartridge %s. Stop it with `penctl session stop`"
                   % (reply.get("session"), reply.get("profile"), reply.get("cartridge")))
        return EXIT_OK
    if args.session_command == "stop":
        with _open_pen(args) as pen:
            reply = pen.session_stop()
        out.result(reply, "session %s stopped" % reply.get("session"))
        return EXIT_OK
    _check_output_paths(args)
    with _open_pen(args) as pen:
        result = pen.session_run(args.seconds, on_sample=_sample_progress(out, "session"), profile=profile)
    out.end_progress()
    rows = result["rows"]
    written = _write_outputs(args, rows, "session %s, profile %s" % (result["session"], result["profile"]))
    result.update(written)
    summary = ("session %s, profile %s, cartridge %s: ended %s after %s s, %s strokes, %d samples%s"
               % (result["session"], result["profile"], result["cartridge"], result["end_reason"],
                  _num(result["duration_s"], "%.2f"), result["strokes"], result["samples"],
                  "".join(", %s written to %s" % kv for kv in written.items())))
    if result["end_reason"] in ("FAULT", "CARTRIDGE_OUT"):
        why = "fault %s" % ", ".join(result["faults"]) if result["faults"] else result["end_reason"]
        exc = errors.PenRefused(result["end_reason"], "the pen ended the session early (%s); %s"
                                % (why, summary))
        out.error(exc, extra={"session": {k: v for k, v in result.items()}})
        return EXIT_REFUSED
    human = summary if args.csv else summary + "\n\n" + _rows_summary(rows)
    out.result(result, human)
    return EXIT_OK


def cmd_telemetry(args, out):
    _check_output_paths(args)
    with _open_pen(args) as pen:
        result = pen.telemetry(args.seconds, on_sample=_sample_progress(out, "telemetry"))
    out.end_progress()
    written = _write_outputs(args, result["rows"], "pen telemetry")
    result.update(written)
    summary = "%d samples over %g s of pen time (%d missed)%s" % (
        result["samples"], args.seconds, result["sample_gaps"],
        "".join(", %s written to %s" % kv for kv in written.items()))
    human = summary if args.csv else summary + "\n\n" + _rows_summary(result["rows"])
    out.result(result, human)
    return EXIT_OK


def _log_details(entry):
    kind = entry.get("kind")
    if kind == "session":
        return "%s %s mm %s Hz, cartridge %s, %s after %s s, %s strokes" % (
            entry.get("profile"), _num(entry.get("depth_mm")), entry.get("stroke_hz"), entry.get("cartridge"),
            entry.get("end"), _num(entry.get("duration_s"), "%.1f"), entry.get("strokes"))
    if kind == "sterilise":
        return "%s%s" % (entry.get("result"), "" if entry.get("reason") in (None, "NONE")
                         else " (%s)" % entry.get("reason"))
    if kind == "fault":
        return entry.get("fault") or ""
    if kind == "fault_clear":
        return "%s cleared: %s" % (entry.get("fault"), entry.get("reason"))
    skip = {"id", "kind", "t_s", "start_s"}
    return ", ".join("%s %s" % (k, v) for k, v in entry.items() if k not in skip)


def cmd_log(args, out):
    with _open_pen(args) as pen:
        entries = pen.log()
    rows = [(e.get("id"), e.get("kind"), _num(e.get("t_s", e.get("start_s")), "%.1f"), _log_details(e))
            for e in entries]
    human = _table(("ID", "KIND", "PEN_T_S", "DETAILS"), rows) if rows else "(the log is empty)"
    out.result({"entries": entries}, human)
    return EXIT_OK


def cmd_fault(args, out):
    from penctl.client import check_reason

    reason = check_reason(args.reason)                         # before connecting
    with _open_pen(args) as pen:
        reply = pen.fault_clear(reason)
        state = pen.state()
    out.result({"cleared": reply.get("cleared"), "state": state},
               "cleared %s; the pen is re-checking itself (state %s)" % (reply.get("cleared"), state))
    return EXIT_OK


#: how long `flash` waits for the firmware's answer when it checks the pen is idle
FLASH_PROBE_TIMEOUT_S = 0.2


def _refuse_flash_mid_treatment(port):
    """Flashing breaks into the firmware (Ctrl-C: the motor stops, S9). Never do that to
    a running session or sterilisation cycle behind the user's back: refuse, nothing sent
    but one `info`. A pen that does not answer the protocol (blank, at the REPL) is fine."""
    from penctl.transport import SerialLink

    try:
        with SerialLink(port, request_timeout=FLASH_PROBE_TIMEOUT_S,
                        open_timeout=FLASH_PROBE_TIMEOUT_S) as link:
            state = link.request({"op": "info"}).get("state")
    except errors.PenctlError:
        return
    if state in ("RUNNING", "STERILISING"):
        raise errors.PenRefused("BUSY", "the pen is %s: stop it first (penctl session stop / wait for the "
                                "cycle); flashing would interrupt it" % state)


def cmd_flash(args, out):
    from penctl.discover import resolve_port

    if args.source and not os.path.isdir(args.source):
        raise UsageError("--source %s: no such folder" % args.source, code="FILE")
    try:
        from penctl.flash import flash_firmware
    except ImportError as exc:
        raise errors.FlashError("flashing is not available in this installation: %s" % exc) from None
    port = resolve_port(args.port)

    def progress(*parts, **named):
        text = " ".join(str(p) for p in parts)
        if named:
            text += " " + " ".join("%s=%s" % kv for kv in named.items())
        out.progress("flash: " + text.strip()[:100])

    _refuse_flash_mid_treatment(port)
    kwargs = {"source_dir": args.source, "progress": progress}
    if args.timeout is not None:
        kwargs["timeout"] = args.timeout
    report = flash_firmware(port, **kwargs)
    out.end_progress()
    report = dict(report or {})
    if report.get("changed") is False:
        human = "the firmware on %s is up to date (nothing changed)" % port
    else:
        human = "firmware deployed to %s" % port
        if "files_written" in report:
            human += ": %s file(s) written (%s bytes), %s copied, %s removed" % (
                report.get("files_written"), report.get("bytes_written"), report.get("files_copied", 0),
                report.get("files_removed", 0))
    if "slot" in report or "seconds" in report:
        human += "\nslot %s, protocol %s, %s s" % (report.get("slot"), report.get("protocol"), report.get("seconds"))
    out.result({"port": port, "report": report}, human)
    return EXIT_OK


def cmd_sim(args, out):
    from pensim.supervisor import run_sim

    return run_sim(link=args.link, state_dir=args.state, clock=args.clock, blank=args.blank,
                   control=args.control, json_out=args.json, pen_time_start_s=args.pen_time_start)


COMMANDS = {
    "sim": cmd_sim, "info": cmd_info, "profile": cmd_profile, "sterilise": cmd_sterilise,
    "session": cmd_session, "telemetry": cmd_telemetry, "log": cmd_log, "flash": cmd_flash,
    "fault": cmd_fault,
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # --json is known before parsing, so that even usage errors answer in JSON.
    json_guess = "--json" in argv[:_command_index(argv)]
    out = Out(json_guess)
    saved = {}
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:     # --help / --version: argparse printed it
            return int(exc.code or 0)
        out = Out(args.json)
        if args.command != "sim":
            saved = _stop_on_signals()
        try:
            return COMMANDS[args.command](args, out)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    except PenctlError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error(PenctlError("interrupted (any running session was stopped)", code="INTERRUPTED"))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_CONNECTION


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_signals():
    """SIGTERM / SIGHUP behave like Ctrl-C: a running `session run` stops the motor before exiting.
    Returns the previous handlers (main() restores them: it may run inside another program)."""
    saved = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                saved[sig] = signal.signal(sig, _raise_interrupt)
            except (ValueError, OSError):    # not the main thread
                pass
    return saved


def _command_index(argv):
    """Index of the first positional (the command) in argv; len(argv) if none."""
    takes_value = {"--port", "--timeout"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in takes_value:
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        i += 1
    return len(argv)


if __name__ == "__main__":
    sys.exit(main())
