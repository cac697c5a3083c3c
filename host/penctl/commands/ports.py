"""`penctl ports`: the attached pens (USB id 2e8a:0005) with their USB serial numbers."""

from penctl.commands import Command
from penctl.output import table


def add_arguments(p):
    pass


def run(args, out):
    from penctl.discover import list_pens

    pens = list_pens()
    human = table(("DEVICE", "SERIAL", "DESCRIPTION"),
                  [(p["device"], p["serial_number"] or "-", p["description"] or "") for p in pens]) \
        if pens else "no pen attached (no USB serial device with id 2e8a:0005)"
    out.result({"ports": pens}, human)
    return 0


COMMAND = Command(
    "ports", "list the attached pens: device, USB serial number, description", add_arguments, run,
    description="List the attached pens (USB serial devices with MicroPython's RP2040 id 2e8a:0005):\n"
                "device, USB serial number and description. Pick one with --port DEVICE or\n"
                "--serial SERIAL.", stops_on_signals=False)
