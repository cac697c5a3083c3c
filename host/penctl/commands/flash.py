"""`penctl flash [--source DIR] [--force]`: deploy the firmware (docs/design.md §4.3)."""

from penctl.commands import Command
from penctl.errors import UsageError


def add_arguments(p):
    p.add_argument("--source", metavar="DIR",
                   help="firmware folder (default: the firmware shipped with this penctl)")
    p.add_argument("--force", action="store_true",
                   help="skip the busy guard: break in even if penctl cannot confirm that no session and no "
                        "sterilisation cycle runs (Ctrl-C stops the motor)")


def check(args):
    import os

    from penctl.flash.build import check_source_dir

    if args.source is not None:
        if not os.path.isdir(args.source):
            raise UsageError("--source %s: no such folder; nothing was sent" % args.source, code="FILE")
        check_source_dir(args.source)


def run(args, out):
    from penctl.discover import resolve_port
    from penctl.flash import flash_firmware

    port = resolve_port(args.port, args.serial)

    def progress(stage, done, total):
        out.progress("flash: %s %s/%s" % (stage, done, total))

    if args.force:
        out.note("--force: not checking whether a session or a sterilisation cycle runs; breaking in stops it")
    report = flash_firmware(port, source_dir=args.source, progress=progress, timeout=args.timeout, force=args.force,
                            trace=args.trace)
    out.end_progress()
    if not report["changed"]:
        human = "the firmware on %s is up to date (nothing changed)" % port
    else:
        human = "firmware deployed to %s: %s file(s) written (%s bytes), %s copied, %s removed" % (
            port, report["files_written"], report["bytes_written"], report["files_copied"], report["files_removed"])
        if report["factory_adopted"]:
            human += "\nthe factory firmware was kept in slot %s as the fallback" % report["fallback"]
    human += "\nslot %s, protocol %s, %s s" % (report["slot"], report["protocol"], report["seconds"])
    out.result({"port": port, "report": report}, human)
    return 0


COMMAND = Command(
    "flash", "deploy the firmware to the pen", add_arguments, run,
    description="Deploy the firmware: compiled .mpy files, only the changed ones, staged in the\n"
                "inactive slot, verified, switched atomically, then the pen is reset and must\n"
                "answer. The pen keeps a bootable fallback (its previous firmware, or its factory\n"
                "image) until the new firmware has started and answered.\n\n"
                "Busy guard (fail closed): flash breaks in (Ctrl-C stops the motor) only when the\n"
                "pen answered that it is idle, or is verifiably at the MicroPython REPL. A pen in\n"
                "a session or a sterilisation cycle: exit 1 (BUSY). No usable answer within\n"
                "--timeout (default 3 s): exit 3, nothing sent. --force skips the guard.",
    check=check)
