"""What several commands share: the argument parser class, argument types, opening the pen, and the
recording outputs (--csv, --plot) checked before and written (with a fallback) after a session."""

import argparse
import csv
import io
import math
import os
import sys

from penctl import extras, paths
from penctl.errors import OutputError, UsageError
from penctl.output import num, table

EPILOG_SHORT = "exit codes: 0 ok, 1 the pen refused, 2 usage/input file (nothing sent), " \
               "3 connection/timeout/protocol/no usable answer, 130 interrupted"
#: --timeout and the other waits: a finite number of seconds in 0 < S <= this
TIMEOUT_MAX_S = 3600


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UsageError (exit 2, JSON-aware)."""

    def error(self, message):
        raise UsageError("%s (see `%s --help`)" % (message, self.prog), code="USAGE")


def seconds_type(maximum, what="seconds"):
    """An argparse type: a finite number of seconds in 0 < N <= maximum; the message states the range."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not 0 < value <= maximum:
            raise argparse.ArgumentTypeError("must be a number of %s in the range 0 < N <= %g, not %r"
                                             % (what, maximum, text))
        return value
    parse.__name__ = "seconds"
    return parse


timeout_type = seconds_type(TIMEOUT_MAX_S)


def add_actions(parser, dest):
    """Sub-actions of a command group (`profile push`, `session stop`): returns the subparsers."""
    actions = parser.add_subparsers(dest=dest, metavar="ACTION", parser_class=Parser)
    actions.required = True
    return actions


def add_action(actions, name, help_text, description=None):
    return actions.add_parser(name, help=help_text, description=description or help_text, epilog=EPILOG_SHORT,
                              formatter_class=argparse.RawDescriptionHelpFormatter)


def open_pen(args):
    """The pen the global options name (--port / --serial / $PENCTL_PORT / the single attached one)."""
    from penctl.client import Pen

    return Pen(args.port, timeout=args.timeout, serial_number=args.serial, trace=args.trace)


# ---- recordings: --csv and --plot ----

def add_recording_outputs(parser):
    parser.add_argument("--csv", metavar="F.csv", help="write the telemetry rows to this CSV file")
    parser.add_argument("--plot", metavar="F.png",
                        help="plot frequency, depth, current, temperature to this PNG (needs penctl[plot])")


def check_recording_outputs(args):
    """Before the pen is touched: the output paths can be written, and matplotlib is there for --plot."""
    if args.csv:
        args.csv = paths.check_output_path(args.csv, "--csv", ".csv")
    if args.plot:
        extras.require_plot()
        args.plot = paths.check_output_path(args.plot, "--plot", ".png")
    if args.csv and args.plot and paths_same(args.csv, args.plot):
        raise UsageError("--csv and --plot name the same file", code="FILE")


def paths_same(a, b):
    return os.path.abspath(a) == os.path.abspath(b)


def _csv_text(rows):
    from penctl import telemetry as tm

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(tm.COLUMNS)
    for row in rows:
        writer.writerow([row[col] for col in tm.COLUMNS])
    return buffer.getvalue()


def save_recording(args, rows, title):
    """Write --csv / --plot after the pen was used. Returns {"csv": path, "plot": path} of what was
    written. If a write fails, the rows go to a fallback CSV (and the plot to a fallback PNG) in the
    temp folder and OutputError (exit 2) names them; if even that fails, the CSV goes to stdout."""
    from penctl import telemetry as tm

    written = {}
    problems = []
    csv_saved = None
    if args.csv:
        where, exc = paths.write_with_fallback(lambda p: tm.write_csv(rows, p), args.csv, "recording", ".csv")
        if exc is None:
            written["csv"] = csv_saved = where
        else:
            problems.append("--csv %s could not be written (%s)" % (args.csv, paths.describe_os_error(exc)))
            if where is not None:
                written["csv_fallback"] = csv_saved = where
    if args.plot:
        where, exc = paths.write_with_fallback(lambda p: tm.plot(rows, p, title=title), args.plot, "plot", ".png")
        if exc is None:
            written["plot"] = where
        else:
            problems.append("--plot %s could not be written (%s)" % (args.plot, paths.describe_os_error(exc)))
            if where is not None:
                written["plot_fallback"] = where
    if not problems:
        return written
    if csv_saved is None:
        where = paths.write_fallback(lambda p: tm.write_csv(rows, p), "recording", ".csv")
        if where is not None:
            written["csv_fallback"] = csv_saved = where
    saved = []
    if csv_saved is not None:
        saved.append("the %d rows were saved to %s" % (len(rows), csv_saved))
    else:
        saved.append("no file could be written: the %d rows follow on standard output as CSV" % len(rows))
        if not args.json:
            sys.stdout.write(_csv_text(rows))
            sys.stdout.flush()
    if "plot_fallback" in written:
        saved.append("the plot to %s" % written["plot_fallback"])
    exc = OutputError("%s; %s. The pen was used (the recording is not lost)." % ("; ".join(problems), ", ".join(saved)))
    exc.written = written
    raise exc


def save_partial_recording(args, out, exc, title):
    """The command failed or was interrupted after recording started: write what it recorded (the
    exception carries it as `recording`) to --csv / --plot, and say where it went."""
    rows = getattr(exc, "recording", None)
    if not rows or not (args.csv or args.plot):
        return
    out.end_progress()
    try:
        written = save_recording(args, rows, title)
        out.note("the %d rows recorded before this ended were written to %s" % (len(rows), ", ".join(written.values())))
    except OutputError as problem:
        out.note(problem.message)


def sample_progress(out, label):
    def show(row):
        out.progress("%s: t %8.2f s  %-11s %6.1f Hz  depth %s mm  %5d mA  %5.1f degC"
                     % (label, row["t_s"], row["state"], row["hz"], num(row["depth_mm"]), row["current_ma"],
                        row["temp_c"]))
    return show


def rows_summary(rows, every_s=1.0):
    """A short table: about one row per `every_s` of pen time, plus the last."""
    picked = []
    next_t = None
    for row in rows:
        if next_t is None or row["t_s"] >= next_t:
            picked.append(row)
            next_t = row["t_s"] + every_s
    if rows and picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    return table(("T_S", "STATE", "DEPTH_MM", "HZ", "DUTY", "CURRENT_MA", "TEMP_C", "BATTERY_V", "STROKES"),
                 [("%.2f" % r["t_s"], r["state"], "%s/%s" % (num(r["depth_mm"]), num(r["depth_set_mm"])),
                   "%s/%s" % (num(r["hz"], "%.1f"), num(r["hz_set"], "%.1f")), num(r["duty"]),
                   r["current_ma"], num(r["temp_c"], "%.1f"), num(r["battery_v"]), r["strokes"])
                  for r in picked])
