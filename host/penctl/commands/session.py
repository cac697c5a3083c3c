"""`penctl session start | stop | run`: treatment sessions (docs/design.md §4, §4.1)."""

from penctl import errors
from penctl.client import BACKSTOP, SESSION_RUN_MAX_S, Pen
from penctl.commands import Command
from penctl.commands.common import (add_action, add_actions, add_recording_outputs, check_recording_outputs,
                                    open_pen, rows_summary, sample_progress, save_partial_recording, save_recording,
                                    seconds_type, timeout_type)
from penctl.output import num


def _add_stop_timeout(parser):
    parser.add_argument("--stop-timeout", metavar="S", type=timeout_type, default=Pen.STOP_TIMEOUT_S,
                        help="how long to wait for the pen to confirm the session ended: motor off, needles "
                             "retracted, LOCKED or FAULT (default %g s)" % Pen.STOP_TIMEOUT_S)


def add_arguments(p):
    actions = add_actions(p, "session_command")
    start = add_action(actions, "start", "start a session (needs a sterilised pen and a fresh cartridge)",
                       "Start a session and return; it runs until `session stop`, the\n"
                       "profile's max_session_s, a fault or cartridge removal.")
    start.add_argument("--profile", metavar="NAME", help="profile to use (default: the active one)")
    stop = add_action(actions, "stop", "stop the running session and wait until it has ended",
                      "Stop the running session. Returns once the pen confirms the end: the motor\n"
                      "is off, the needles are retracted and the state is LOCKED (or FAULT). Exit 3\n"
                      "if it does not within --stop-timeout.")
    stop.add_argument("--no-wait", action="store_true", help="return as soon as the pen accepted the stop")
    _add_stop_timeout(stop)
    run = add_action(actions, "run", "start a session, record telemetry for N seconds, stop it",
                     "Start a session that the pen itself ends after N seconds of pen time (it\n"
                     "does not depend on this computer to stop it), record telemetry, and wait\n"
                     "until the pen confirms the end. The session is stopped at once whatever\n"
                     "happens here (Ctrl-C, SIGTERM, SIGHUP: exit 130).\n"
                     "Exit 0 only when it ran the N seconds asked, or the pen ended it at the\n"
                     "profile's max_session_s (the summary says which). Exit 1 if the pen ended it\n"
                     "early (fault, cartridge removed); the recording is still written.\n"
                     "Output paths are checked before the pen is touched.")
    run.add_argument("--seconds", metavar="N", type=seconds_type(SESSION_RUN_MAX_S), required=True,
                     help="how long to run, in seconds of pen time (0 < N <= %d)" % SESSION_RUN_MAX_S)
    run.add_argument("--profile", metavar="NAME", help="profile to use (default: the active one)")
    add_recording_outputs(run)
    _add_stop_timeout(run)


def check(args):
    from penctl.client import check_profile_name

    if getattr(args, "profile", None) is not None:
        check_profile_name(args.profile)
    if args.session_command == "run":
        check_recording_outputs(args)


def _run(args, out):
    title = "session, profile %s" % (args.profile or "(active)")
    try:
        with open_pen(args) as pen:
            result = pen.session_run(args.seconds, on_sample=sample_progress(out, "session"), profile=args.profile,
                                     stop_timeout=args.stop_timeout)
    except BaseException as exc:
        save_partial_recording(args, out, exc, title)
        raise
    out.end_progress()
    rows = result["rows"]
    file_problem = None
    try:
        result.update(save_recording(args, rows, "session %s, profile %s" % (result["session"], result["profile"])))
    except errors.OutputError as exc:
        file_problem = exc
        result.update(exc.written)
    if result["complete"]:
        how = ("ran the %g s asked" % args.seconds if result["ended_by"] == "the time asked"
               else "ended at the profile's max_session_s (%s)" % result["end_reason"])
    else:
        how = "ended early: %s" % result["end_reason"]
    summary = ("session %s, profile %s, cartridge %s: %s; %s after %s s, %s strokes, %d samples, state %s%s"
               % (result["session"], result["profile"], result["cartridge"], how, result["end_reason"],
                  num(result["duration_s"], "%.2f"), result["strokes"], result["samples"], result["state"],
                  "".join(", %s written to %s" % kv for kv in result.items()
                          if kv[0] in ("csv", "plot", "csv_fallback", "plot_fallback"))))
    if not result["complete"]:
        if file_problem is not None:
            out.note(file_problem.message)
        reason = result["end_reason"]
        if result["ended_by"] == BACKSTOP:
            exc = errors.PenRefused("OVERRAN", "the pen did not end the session at the %g s asked; penctl stopped "
                                    "it %g s later (check the pen's firmware); %s"
                                    % (args.seconds, Pen.RUN_BACKSTOP_MS / 1000, summary))
        elif reason in ("FAULT", "CARTRIDGE_OUT"):
            why = "fault %s" % ", ".join(result["faults"]) if result["faults"] else reason
            exc = errors.PenRefused(reason, "the pen ended the session early (%s); %s" % (why, summary))
        else:
            exc = errors.PenRefused("ENDED_EARLY", "the session did not run the %g s asked; %s"
                                    % (args.seconds, summary))
        out.error(exc, extra={"session": result})
        return exc.exit_code
    if file_problem is not None:
        file_problem.message = "%s\n%s" % (summary, file_problem.message)
        out.error(file_problem, extra={"session": result})
        return file_problem.exit_code
    human = summary if args.csv else summary + "\n\n" + rows_summary(rows)
    out.result(result, human)
    return 0


def run(args, out):
    if args.session_command == "run":
        return _run(args, out)
    with open_pen(args) as pen:
        if args.session_command == "start":
            reply = pen.session_start(args.profile)
            out.result(reply, "session %s started: profile %s, cartridge %s. Stop it with `penctl session stop`"
                       % (reply.get("session"), reply.get("profile"), reply.get("cartridge")))
            return 0
        reply = pen.session_stop(wait=not args.no_wait, timeout=args.stop_timeout)
    if args.no_wait:
        out.result(reply, "session %s: stop accepted (not waiting for the end)" % reply.get("session"))
        return 0
    end = reply.get("session_end") or {}
    ran = end.get("duration_ms")
    out.result(reply, "session %s stopped: state %s, needles at %s mm%s"
               % (reply.get("session"), reply.get("state"), num(reply.get("depth_mm")),
                  ", ran %s s, %s strokes" % (num(ran / 1000 if isinstance(ran, int) else None), end.get("strokes"))
                  if end else ""))
    return 0


COMMAND = Command("session", "start, stop or run a treatment session", add_arguments, run, check=check)
