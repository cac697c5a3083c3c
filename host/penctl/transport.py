"""Serial transport of the pen protocol (docs/design.md §3): frames over a serial port.

`SerialLink` opens a device path or any pyserial URL (`serial.serial_for_url`:
`/dev/ttyACM0`, `/dev/pts/5`, `socket://host:port`, `rfc2217://...`, `loop://`),
writes request frames, reads lines, and sorts what arrives:

- responses are matched to their request by id (ids run 1..65535, then wrap);
- events go to a bounded queue; their sequence numbers are checked and gaps
  are counted (`event_gaps`);
- anything that is not a frame (REPL output, boot messages, echo) is ignored
  but the last `RECENT_LINES` lines are kept, so a timeout can say what the
  port did print (e.g. that the pen sits at the MicroPython REPL).

Reading happens in the caller's thread, only while a request or an event is
being waited for; there is no background thread.
"""

import collections
import re
import time

import serial

from penctl.firmware.pen import wire
from penctl.firmware.pen.limits import PROTOCOL_VERSION
from penctl.errors import LinkError, ProtocolError

_REPL_PROMPTS = (b">>>", b"raw REPL; CTRL-B to exit")
# A line that starts (after an optional REPL prompt) like one of our request frames.
_ECHO = re.compile(rb"(?:>>> |\.\.\. |>)?@[0-9]+,Q,[0-9]+,")


def _fmt_s(seconds):
    return ("%.1f" % seconds).rstrip("0").rstrip(".")


class SerialLink:
    """One open connection to a pen. Use as a context manager or call close()."""

    #: seconds to wait for the first reply after opening the port (handshake)
    OPEN_TIMEOUT_S = 3.0
    #: seconds to wait for the reply to one request (`--timeout` overrides it)
    REQUEST_TIMEOUT_S = 3.0
    #: non-frame lines kept for error messages
    RECENT_LINES = 20
    #: events kept until read; the oldest are dropped (and counted) beyond this
    EVENT_QUEUE_MAX = 20000
    #: longest line kept in the receive buffer before it is discarded as noise
    LINE_MAX = 4 * 1024
    #: USB-CDC ignores the baud rate; a real UART bridge would need it
    BAUDRATE = 115200
    #: how long one blocking read may wait before the deadline is checked again
    POLL_S = 0.05
    #: our request echoed back (a REPL, never the firmware): give up this soon after, not at the timeout
    ECHO_GRACE_S = 0.3

    def __init__(self, port, request_timeout=None, open_timeout=None, baudrate=None):
        if not port:
            raise LinkError("no serial port given: pass --port or set PENCTL_PORT")
        self.port = port
        if request_timeout is not None:
            self.REQUEST_TIMEOUT_S = float(request_timeout)
        if open_timeout is not None:
            self.OPEN_TIMEOUT_S = float(open_timeout)
        self._baudrate = baudrate or self.BAUDRATE
        self._serial = None
        self._rx = bytearray()
        self._next_id = 1
        self._responses = {}
        self.events = collections.deque()
        self.recent = collections.deque(maxlen=self.RECENT_LINES)
        self.event_gaps = 0          # events missing according to their sequence numbers
        self.events_received = 0
        self.events_dropped = 0      # dropped here because nobody read them
        self.bad_frames = 0          # lines that looked like frames but did not decode
        self.foreign_version = None  # protocol version of a frame we could not speak
        self.last_pen_error = None   # last id-0 error response (the pen could not parse a line)
        self._last_seq = None
        self.echoed = False          # our request came back: something echoes (the REPL does)
        self._echo_t = 0.0

    # ---- open / close ----

    def open(self):
        kwargs = {"baudrate": self._baudrate, "timeout": self.POLL_S, "write_timeout": self.REQUEST_TIMEOUT_S}
        if "://" not in self.port:
            kwargs["exclusive"] = True   # two programs on one pen would steal each other's replies
        try:
            self._serial = serial.serial_for_url(self.port, **kwargs)
        except (serial.SerialException, ValueError, OSError) as exc:
            if "exclusively lock" in str(exc) or isinstance(exc.__context__, BlockingIOError):
                raise LinkError("cannot open %s: the port is in use by another program (another penctl, "
                                "a terminal or mpremote?): close it and try again" % self.port) from None
            raise LinkError("cannot open %s: %s. Check the cable and the port name "
                            "(pass --port or set PENCTL_PORT; `penctl sim` prints the port of a virtual pen)"
                            % (self.port, _os_reason(exc))) from None
        # Terminate whatever half line the pen may hold from an earlier client,
        # so our first request starts on a fresh line.
        self._write(b"\n")
        return self

    def close(self):
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
            self._serial = None

    def __enter__(self):
        if self._serial is None:
            self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def is_open(self):
        return self._serial is not None

    # ---- requests ----

    def request(self, body, timeout=None):
        """Send one request body (dict with "op"); return the response body (dict).

        The response may be {"ok": false, ...}: interpreting it is the caller's job.
        Raises LinkError on timeout or disconnect, ProtocolError when the pen
        speaks another protocol version.
        """
        if self._serial is None:
            raise LinkError("the connection to %s is closed" % self.port)
        num = self._next_id
        self._next_id = num + 1 if num < 65535 else 1
        try:
            frame = wire.encode(wire.KIND_REQUEST, num, body)
        except (TypeError, ValueError) as exc:
            raise ProtocolError("cannot encode request %r: %s" % (body.get("op"), exc)) from None
        self._responses.clear()
        self._write(frame)
        timeout = self.REQUEST_TIMEOUT_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while num not in self._responses:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.echoed and time.monotonic() - self._echo_t > self.ECHO_GRACE_S):
                raise LinkError(self._timeout_message(body.get("op"), timeout))
            self._pump(min(remaining, self.POLL_S))
            if self.foreign_version is not None and num not in self._responses:
                raise ProtocolError("the pen on %s speaks protocol version %s, this penctl speaks %d: "
                                    "update penctl, or run `penctl flash` to give the pen matching firmware"
                                    % (self.port, self.foreign_version, PROTOCOL_VERSION))
        return self._responses.pop(num)

    def next_event(self, timeout):
        """The next queued event as (seq, body), waiting up to `timeout` s; None on timeout."""
        deadline = time.monotonic() + timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining)
        return self.events.popleft()

    def drain_events(self):
        """Read what has arrived without waiting and return all queued events."""
        if self._serial is not None:
            self._pump(0)
        out = list(self.events)
        self.events.clear()
        return out

    # ---- internals ----

    def _write(self, data):
        try:
            self._serial.write(data)
            self._serial.flush()
        except serial.SerialTimeoutException:
            raise LinkError("the pen on %s does not accept data (write timed out): "
                            "unplug and replug it" % self.port) from None
        except (serial.SerialException, OSError) as exc:
            raise LinkError("lost the connection to the pen on %s: %s" % (self.port, _os_reason(exc))) from None

    def _read_some(self, wait):
        ser = self._serial
        try:
            waiting = ser.in_waiting
            if waiting:
                return ser.read(waiting)
            if wait <= 0:
                return b""
            wait = min(wait, self.POLL_S)
            if ser.timeout != wait:
                ser.timeout = wait     # pyserial reconfigures the port on every change: only if needed
            data = ser.read(1)
            if data:
                waiting = ser.in_waiting
                if waiting:
                    data += ser.read(waiting)
            return data
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise LinkError("lost the connection to the pen on %s: %s. Is it still plugged in?"
                            % (self.port, _os_reason(exc))) from None

    def _pump(self, wait):
        """Read what is available (waiting at most `wait` s for the first byte) and sort it."""
        data = self._read_some(wait)
        if not data:
            return
        self._rx += data
        while True:
            end = self._rx.find(b"\n")
            if end < 0:
                if not self.echoed and _ECHO.match(self._rx):
                    self._echo_t = time.monotonic()
                    self.echoed = True
                if len(self._rx) > self.LINE_MAX:
                    self._remember(bytes(self._rx[:200]) + b"...")
                    del self._rx[:]
                return
            line = bytes(self._rx[:end])
            del self._rx[:end + 1]
            self._line(line)

    def _line(self, line):
        stripped = line.strip(b"\r")
        start = stripped.find(b"@")
        if start < 0:
            if stripped:
                self._remember(stripped)
            return
        try:
            kind, num, body = wire.decode(stripped[start:])
        except wire.WireError as exc:
            self.bad_frames += 1
            if exc.code == wire.E_FRAME_VERSION:
                self.foreign_version = _frame_version(stripped[start:])
            self._remember(stripped)
            return
        if start:
            self._remember(stripped[:start])
        if kind == wire.KIND_RESPONSE:
            if num == 0 and body.get("ok") is False:
                # The pen could not parse a line (ours or noise): keep it for messages.
                self.last_pen_error = body
            self._responses[num] = body
        elif kind == wire.KIND_EVENT:
            self._event(num, body)
        else:
            # Our own request echoed back: a REPL (or a terminal) is reading what we type.
            if not self.echoed:
                self._echo_t = time.monotonic()
            self.echoed = True

    def _event(self, seq, body):
        if self._last_seq is not None:
            expected = (self._last_seq + 1) % wire.NUM_MODULO
            if seq != expected:
                self.event_gaps += (seq - expected) % wire.NUM_MODULO
        self._last_seq = seq
        self.events_received += 1
        if len(self.events) >= self.EVENT_QUEUE_MAX:
            self.events.popleft()
            self.events_dropped += 1
        self.events.append((seq, body))

    def _remember(self, line):
        self.recent.append(line.decode("ascii", "replace"))

    def at_repl(self):
        """True when the port looks like a MicroPython REPL: it echoes our requests back
        (the REPL echoes what it is typed; \n alone does not end a REPL line, so the echo
        may be a partial line), or it printed a prompt."""
        if self.echoed or _ECHO.match(bytes(self._rx)):
            return True
        tail = b"\n".join(line.encode("ascii", "replace") for line in self.recent) + bytes(self._rx)
        tail = tail[-300:]
        return any(prompt in tail for prompt in _REPL_PROMPTS)

    def _last_exception(self):
        """The exception line of the last traceback the port printed, if any."""
        lines = list(self.recent)
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].startswith("Traceback"):
                for line in lines[index + 1:]:
                    if line and not line.startswith(" "):
                        return line.strip()[:120]
        return None

    def _timeout_message(self, op, timeout):
        where = "on %s" % self.port
        if self.at_repl():
            crash = self._last_exception()
            return ("the pen %s is at the MicroPython REPL, not running its firmware%s: "
                    "reset it (unplug/replug) or run `penctl flash`"
                    % (where, " (it stopped with %s)" % crash if crash else ""))
        text = "no response from the pen %s within %s s (request '%s')" % (where, _fmt_s(timeout), op)
        if self.last_pen_error is not None:
            text += "; the pen reported %s: %s" % (self.last_pen_error.get("code"),
                                                  self.last_pen_error.get("msg"))
        recent = [line for line in self.recent if line.strip()][-3:]
        if recent:
            text += "; it printed: " + " | ".join(line[:100] for line in recent)
            return text + ". Is the firmware running? try `penctl flash`"
        return text + ": is the firmware running? try `penctl flash` (or a longer --timeout)"


def _frame_version(line):
    try:
        return int(line[1:line.index(b",")])
    except ValueError:
        return "?"


def _os_reason(exc):
    """The operating system's words for `exc` (pyserial wraps them in long messages)."""
    for cause in (exc.__cause__, exc.__context__, exc):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    if isinstance(exc, serial.SerialException) and exc.args and isinstance(exc.args[-1], str):
        return exc.args[-1]
    return str(exc) or type(exc).__name__
