"""Which serial port is the pen (docs/design.md §4.2).

`--port`, else `--serial SN` (the attached pen with that USB serial number), else $PENCTL_PORT, else
the single attached pen. Attached pens are the serial ports whose USB vendor/product id is the one
MicroPython's rp2 port enumerates with (Raspberry Pi Pico, USB-CDC REPL); their USB serial number is
the RP2040's unique id.

- exactly one  -> that port;
- none         -> LinkError (exit 3): nothing to talk to;
- several      -> UsageError (exit 2): ambiguous, the message lists them.

`--serial` is explicit on the command line, so it wins over the environment variable (an ambient
default); `--port` together with `--serial` is a usage error.
"""

import os

from penctl.errors import LinkError, UsageError
from penctl.tracing import log

#: Raspberry Pi (the RP2040's USB vendor id)
PEN_USB_VID = 0x2E8A
#: MicroPython's rp2 port, USB-CDC REPL
PEN_USB_PID = 0x0005
ENV_PORT = "PENCTL_PORT"


def candidates():
    """ListPortInfo of every attached port with the pen's VID/PID."""
    from serial.tools import list_ports

    return [info for info in list_ports.comports()
            if info.vid == PEN_USB_VID and info.pid == PEN_USB_PID]


def list_pens():
    """The attached pens as dicts: device, serial_number, description, usb (vid:pid)."""
    return [{"device": info.device, "serial_number": info.serial_number or None,
             "description": info.description if info.description and info.description != "n/a" else None,
             "usb": "%04x:%04x" % (info.vid, info.pid)}
            for info in candidates()]


def _describe(pen):
    parts = [pen["device"]]
    if pen["serial_number"]:
        parts.append("serial %s" % pen["serial_number"])
    if pen["description"]:
        parts.append(pen["description"])
    return ", ".join(parts)


def find_port():
    """The single attached pen's device path."""
    found = list_pens()
    if len(found) == 1:
        return found[0]["device"]
    hint = "pass --port PATH or --serial SN (or set %s)" % ENV_PORT
    if not found:
        raise LinkError("no pen found: no USB serial device with id %04x:%04x is attached. "
                        "Plug the pen in, or %s; for a virtual pen run `penctl sim`"
                        % (PEN_USB_VID, PEN_USB_PID, hint))
    raise UsageError("%d pens are attached (%s): %s to choose one"
                     % (len(found), "; ".join(_describe(pen) for pen in found), hint))


def find_serial(serial_number):
    """The device path of the attached pen whose USB serial number is `serial_number`."""
    found = list_pens()
    for pen in found:
        if pen["serial_number"] and pen["serial_number"].lower() == serial_number.lower():
            return pen["device"]
    attached = "; ".join(_describe(pen) for pen in found) or "none"
    raise LinkError("no pen with USB serial number %s is attached (attached pens: %s); `penctl ports` "
                    "lists them" % (serial_number, attached))


def resolve_port(port=None, serial_number=None):
    """`port` if given, else the pen with `serial_number`, else $PENCTL_PORT, else the single pen."""
    if port and serial_number:
        raise UsageError("give --port or --serial, not both")
    if port:
        return port
    if serial_number:
        device = find_serial(serial_number)
        log.info("USB serial number %s is %s", serial_number, device)
        return device
    env = os.environ.get(ENV_PORT)
    if env:
        log.info("port from $%s: %s", ENV_PORT, env)
        return env
    device = find_port()
    log.info("the attached pen is %s", device)
    return device
