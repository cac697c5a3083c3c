"""`penctl`: the command line of the pen host tool (docs/design.md §4).

The core only: global options, the parser built from the command table (penctl.commands), and the
one place that turns exceptions into `penctl: message` and an exit code. Each command checks its
arguments, input files and output paths (`check`) before anything touches the pen (`run`).
"""

import argparse
import logging
import signal
import sys
import time
import traceback

from penctl import paths
from penctl.commands import TABLE
from penctl.commands.common import EPILOG_SHORT, Parser, timeout_type
from penctl.errors import EXIT_CONNECTION, EXIT_INTERRUPTED, EXIT_OK, PenctlError, UsageError
from penctl.output import Out
from penctl.tracing import Trace, log

DESCRIPTION = """\
Host tool for the motorised microneedling pen: configure depth profiles, run
the dock sterilisation cycle, run and stop treatment sessions, stream and
export telemetry, read the session log and the audit trail, manage the
clinician key (depth ceiling, clock, interval override), clear faults, deploy
the firmware.

Every value, input file and output path is checked on this computer before
anything is sent; the pen checks again and refuses what it must (locked out,
used cartridge, fault)."""

EPILOG = """\
port selection:
  --port, else --serial SN (the attached pen with that USB serial number), else
  $PENCTL_PORT, else the single attached pen found by its USB id (2e8a:0005,
  MicroPython on an RP2040). No pen attached: exit 3. Several attached: exit 2,
  and the message lists them (`penctl ports` too). --port takes a device path
  (/dev/ttyACM0, /dev/pts/5) or any pyserial URL (socket://host:port,
  rfc2217://host:port for a pen in a lab).

exit codes:
  0  ok
  1  the pen refused (locked out, fault, busy, used cartridge, invalid value);
     the message names the reason and --json gives its stable code
  2  usage, input-file or output-file error: nothing was sent to the pen
     (an output that fails after a session names the fallback file it used)
  3  connection, timeout or protocol error, or no usable answer
  130 interrupted with Ctrl-C, SIGTERM or SIGHUP (a running session is stopped first)

--json prints exactly one JSON object on stdout for every command, errors
included: {"ok": false, "error": {"code": ..., "message": ...}}.
-v shows what penctl does on stderr; --trace FILE logs every frame both ways
with host timestamps (for a bug report).

examples:
  penctl sim --clock fast                 # a virtual pen; prints "port: /dev/pts/N"
  penctl --port /dev/pts/N info
  penctl ports                            # attached pens and their serial numbers
  penctl profile push profiles/scalp.toml
  penctl profile use scalp-crown
  penctl sterilise
  penctl session run --seconds 30 --csv run.csv --plot run.png"""

_VALUE_OPTIONS = ("--port", "--serial", "--timeout", "--trace")


def build_parser():
    parser = Parser(prog="penctl", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", metavar="URL|PATH", default=None,
                        help="serial port of the pen: device path or pyserial URL (default: $PENCTL_PORT, "
                             "else auto-detect by USB id)")
    parser.add_argument("--serial", metavar="SN", default=None,
                        help="the attached pen with this USB serial number (see `penctl ports`)")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output: exactly one JSON object on stdout")
    parser.add_argument("--timeout", metavar="S", type=timeout_type, default=None,
                        help="seconds to wait for each reply from the pen, 0 < S <= 3600 (default 3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what penctl does, on stderr")
    parser.add_argument("--trace", metavar="FILE",
                        help="write every frame in both directions, with host timestamps, to FILE")
    parser.add_argument("--version", action="store_true",
                        help="print the versions of penctl, of the firmware it ships and of the protocol")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in TABLE.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.description or command.help,
                                  epilog=EPILOG_SHORT, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub)
    return parser


def versions():
    """{"penctl": tool version, "firmware": version of the firmware it ships, "protocol": N}."""
    from importlib import metadata

    from penctl.firmware.pen import limits

    try:
        tool = metadata.version("penctl")
    except metadata.PackageNotFoundError:
        tool = "unknown (not installed)"
    return {"penctl": tool, "firmware": limits.FIRMWARE_VERSION, "protocol": limits.PROTOCOL_VERSION}


class _VerboseFormatter(logging.Formatter):
    def __init__(self):
        super().__init__()
        self._t0 = time.monotonic()

    def format(self, record):
        return "penctl: [%.3f s] %s" % (time.monotonic() - self._t0, record.getMessage())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # --json is known before parsing, so that even usage errors answer in JSON.
    out = Out("--json" in argv[:_command_index(argv)])
    saved = {}
    handler = None
    trace = None
    verbose = False
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:     # --help: argparse printed it
            return int(exc.code or 0)
        out = Out(args.json)
        verbose = args.verbose
        if args.version:
            info = versions()
            out.result(info, "penctl %(penctl)s (firmware %(firmware)s, protocol %(protocol)s)" % info)
            return EXIT_OK
        if args.command is None:
            raise UsageError("a command is needed (see `penctl --help`)")
        if verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_VerboseFormatter())
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        for option, value in (("--port", args.port), ("--serial", args.serial)):
            if value is not None and not value.strip():
                raise UsageError("%s needs a value, not an empty text" % option)
        command = TABLE[args.command]
        trace_path = paths.check_output_path(args.trace, "--trace") if args.trace else None
        command.check(args)                       # everything is validated before any side effect
        if trace_path:
            trace = Trace.open(trace_path)
            log.info("tracing every frame to %s", trace_path)
        args.trace = trace
        if command.stops_on_signals:
            saved = _stop_on_signals()
        try:
            return command.run(args, out)
        finally:
            for sig, previous in saved.items():
                signal.signal(sig, previous)
    except PenctlError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error(PenctlError("interrupted (any running session was stopped)", code="INTERRUPTED"))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_CONNECTION
    except Exception as exc:  # noqa: BLE001 - a bug in penctl: say so without a wall of traceback
        if verbose:
            traceback.print_exc()
        out.error(PenctlError("internal error: %s: %s (run with -v for the traceback; please report it)"
                              % (type(exc).__name__, exc), code="INTERNAL"))
        return EXIT_CONNECTION
    finally:
        if trace is not None:
            trace.close()
        if handler is not None:
            log.removeHandler(handler)


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
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        i += 1
    return len(argv)


if __name__ == "__main__":
    sys.exit(main())
