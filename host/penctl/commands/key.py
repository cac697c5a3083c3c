"""`penctl key new --key-file F.penkey [--pen-serial SN]` / `key provision --key-file F
[--current-key-file G]`: the clinician key (S17, docs/clinical.md §1.3, §2)."""

from penctl import clinical, paths
from penctl.commands import Command
from penctl.commands.common import add_action, add_actions, open_pen


def add_arguments(p):
    actions = add_actions(p, "key_command")
    new = add_action(actions, "new", "write a new random key file (never overwrites a file)",
                     "Write a new random clinician key to F.penkey (mode 0600). Nothing is sent\n"
                     "to a pen. The file is a secret: one per pen, named by the pen's serial\n"
                     "(docs/clinical.md, \"Key files and how a clinic keeps them\").")
    new.add_argument("--key-file", metavar="F.penkey", required=True, help="the key file to create")
    new.add_argument("--pen-serial", metavar="SN",
                     help="bind the key to this pen (penctl info shows the serial); penctl then refuses it for others")
    prov = add_action(actions, "provision", "give the pen its clinician key",
                      "Give the pen the key of F. A pen without a key takes it once, in clear (do it on\n"
                      "a cable, at the clinic). Replacing a key needs the current one\n"
                      "(--current-key-file): the new key then travels wrapped with it.")
    prov.add_argument("--key-file", metavar="F", required=True, help="the key the pen will hold")
    prov.add_argument("--current-key-file", metavar="G",
                      help="the key the pen holds now (needed to replace it)")


def check(args):
    if args.key_command == "new":
        clinical.check_new_key_path(args.key_file)               # never overwrites, .penkey
        paths.check_output_path(args.key_file, "--key-file", clinical.KEY_FILE_SUFFIX)
        if args.pen_serial is not None and not (args.pen_serial.isascii() and args.pen_serial.isalnum()):
            from penctl.errors import UsageError
            raise UsageError("--pen-serial must be letters and digits (got %r)" % args.pen_serial, code="USAGE")
        return
    args.key = clinical.load_key_file(args.key_file)
    args.current_key = clinical.load_key_file(args.current_key_file) if args.current_key_file else None


def run(args, out):
    if args.key_command == "new":
        key = clinical.new_key_file(args.key_file, pen_serial=args.pen_serial)
        out.result({"key_file": args.key_file, "key_id": key.key_id, "pen_serial": key.pen_serial},
                   "wrote %s (key id %s%s): keep it private, it is the clinician key"
                   % (args.key_file, key.key_id, ", for pen %s" % key.pen_serial if key.pen_serial else ""))
        return 0
    with open_pen(args) as pen:
        reply = clinical.provision_key(pen, args.key, current=args.current_key)
    out.result({"key_id": reply.get("key_id"), "replaced": args.current_key is not None},
               "the pen now holds key %s%s" % (reply.get("key_id"),
                                               " (replacing %s)" % args.current_key.key_id if args.current_key else ""))
    return 0


COMMAND = Command("key", "clinician key: write a key file, give a pen its key", add_arguments, run,
                  description="The clinician key authorises depth-ceiling changes, setting the clock back and\n"
                              "interval overrides. It is never sent again after the first provisioning and\n"
                              "never read back (docs/clinical.md).",
                  check=check)
