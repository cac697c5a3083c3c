"""Which serial port is the pen: --port, else $PENCTL_PORT, else USB auto-detection.

Auto-detection lists serial ports whose USB vendor/product id is the one
MicroPython's rp2 port enumerates with (Raspberry Pi Pico, USB-CDC REPL):

- exactly one  -> that port;
- none         -> LinkError (exit 3): nothing to talk to;
- several      -> UsageError (exit 2): ambiguous, the message lists them.
"""

import os

from penctl.errors import LinkError, UsageError

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


def _describe(info):
    parts = [info.device]
    if info.serial_number:
        parts.append("serial %s" % info.serial_number)
    if info.description and info.description != "n/a":
        parts.append(info.description)
    return ", ".join(parts)


def find_port():
    """The single attached pen's device path."""
    found = candidates()
    if len(found) == 1:
        return found[0].device
    hint = "pass --port PATH (or set %s)" % ENV_PORT
    if not found:
        raise LinkError("no pen found: no USB serial device with id %04x:%04x is attached. "
                        "Plug the pen in, or %s; for a virtual pen run `penctl sim`"
                        % (PEN_USB_VID, PEN_USB_PID, hint))
    raise UsageError("%d pens are attached (%s): %s to choose one"
                     % (len(found), "; ".join(_describe(info) for info in found), hint))


def resolve_port(port=None):
    """`port` if given, else $PENCTL_PORT, else the single attached pen."""
    if port:
        return port
    env = os.environ.get(ENV_PORT)
    if env:
        return env
    return find_port()
