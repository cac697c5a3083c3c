"""`penctl telemetry --seconds N [--csv F] [--plot F.png]`: this command's own telemetry stream."""

from penctl import errors
from penctl.client import TELEMETRY_MAX_S
from penctl.commands import Command
from penctl.commands.common import (add_recording_outputs, check_recording_outputs, open_pen, rows_summary,
                                    sample_progress, save_partial_recording, save_recording, seconds_type)

TELEMETRY_COLUMNS = """\
CSV columns / JSON row keys: t_s (pen time since power-on, s), state, depth_set_mm,
depth_mm, hz_set, hz, duty (0..1), current_ma, temp_c, battery_v, strokes, faults,
overruns, tick_max_us. Only samples of this command's own subscription, taken after
it started, are recorded (docs/design.md §3.3)."""


def add_arguments(p):
    p.add_argument("--seconds", metavar="N", type=seconds_type(TELEMETRY_MAX_S), required=True,
                   help="how long to record, in seconds of pen time (0 < N <= %d)" % TELEMETRY_MAX_S)
    add_recording_outputs(p)


def run(args, out):
    try:
        with open_pen(args) as pen:
            result = pen.telemetry(args.seconds, on_sample=sample_progress(out, "telemetry"))
    except BaseException as exc:
        save_partial_recording(args, out, exc, "pen telemetry")
        raise
    out.end_progress()
    try:
        result.update(save_recording(args, result["rows"], "pen telemetry"))
    except errors.OutputError as exc:
        result.update(exc.written)
        out.error(exc, extra={"telemetry": result})
        return exc.exit_code
    summary = "%d samples over %g s of pen time (%d missed, %d stale dropped)%s" % (
        result["samples"], args.seconds, result["sample_gaps"], result["stale_dropped"],
        "".join(", %s written to %s" % kv for kv in result.items() if kv[0] in ("csv", "plot")))
    human = summary if args.csv else summary + "\n\n" + rows_summary(result["rows"])
    out.result(result, human)
    return 0


COMMAND = Command("telemetry", "stream live telemetry for N seconds", add_arguments, run,
                  description="Stream the pen's telemetry (50 samples/s) for N seconds of pen time.\n\n"
                              + TELEMETRY_COLUMNS, check=check_recording_outputs)
