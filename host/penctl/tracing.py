"""Field debugging: `--trace FILE` (every frame both ways, host timestamps) and `-v` (what penctl does).

A trace line is

    2025-03-01T10:42:07.123456Z +0.004512 > @2,Q,1234,{"op": "info"}*0a1b2c3d

UTC wall time, seconds since the trace was opened (monotonic), the direction (`>` to the pen, `<`
from it, `#` a note such as "open /dev/ttyACM0"), and the bytes with everything outside printable
ASCII escaped (`\\r`, `\\x03`): frames are printable ASCII, so they read as they travel. The raw REPL
that `penctl flash` drives is traced the same way, chunk by chunk.

Verbose messages go through the `penctl` logger (standard `logging`): a library user can switch them
on with `logging.getLogger("penctl").setLevel(logging.INFO)`.
"""

import datetime
import logging
import time

log = logging.getLogger("penctl")


def _escape(data):
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x0D:
            out.append("\\r")
        else:
            out.append("\\x%02x" % byte)
    return "".join(out)


class Trace:
    """A trace file (opened by the caller, who checked the path first). `write(direction, data)`."""

    def __init__(self, handle):
        self._handle = handle
        self._t0 = time.monotonic()

    @classmethod
    def open(cls, path):
        return cls(open(path, "w", encoding="ascii", buffering=1))   # line buffered: a crash keeps it

    def write(self, direction, data):
        if isinstance(data, str):
            data = data.encode("ascii", "backslashreplace")
        now = datetime.datetime.now(datetime.timezone.utc)
        self._handle.write("%s +%.6f %s %s\n" % (now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                                                 time.monotonic() - self._t0, direction, _escape(data)))

    def note(self, text):
        self.write("#", text)

    def close(self):
        self._handle.close()


def trace_write(trace, direction, data):
    """`trace.write(...)` when a trace is on (trace may be None)."""
    if trace is not None:
        trace.write(direction, data)
