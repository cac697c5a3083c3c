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

Freshness (docs/design.md §3.3): nothing that was queued before this link opened is acted on. On
open, whatever the port delivers within a short window is read and discarded (an earlier client's
replies, a telemetry stream nobody reads); request ids start at a random value, so a late reply to
another client's request does not match ours; `request(..., fresh_events=True)` drops every event
that arrived before its reply (they were sent before the pen handled the request).
"""

import binascii
import collections
import json
import re
import secrets
import time

import serial

from penctl.firmware.pen import wire
from penctl.firmware.pen.limits import PROTOCOL_VERSION
from penctl.errors import LinkError, ProtocolError
from penctl.tracing import log, trace_write

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
    #: our request echoed back (a REPL, never the firmware): give up this soon after, plus the time
    #: the echo took to come back (a slow link delays an answer as much), not at the timeout
    ECHO_GRACE_S = 0.1
    #: on open, what arrives is discarded until the port has been quiet this long ...
    DRAIN_QUIET_S = 0.05
    #: ... or for at most this long (a pen still streaming to a client that died never goes quiet)
    DRAIN_MAX_S = 0.3

    def __init__(self, port, request_timeout=None, open_timeout=None, baudrate=None, trace=None):
        if not port:
            raise LinkError("no serial port given: pass --port or set PENCTL_PORT")
        self.port = port
        self.trace = trace
        if request_timeout is not None:
            self.REQUEST_TIMEOUT_S = float(request_timeout)
        if open_timeout is not None:
            self.OPEN_TIMEOUT_S = float(open_timeout)
        self._baudrate = baudrate or self.BAUDRATE
        self._serial = None
        self._rx = bytearray()
        self._next_id = secrets.randbelow(wire.NUM_MODULO - 1) + 1   # 1..65535: never an old client's id
        self._responses = {}
        self._awaiting = None        # (id, fresh_events) of the request being waited for
        self._foreign_prefix = None  # b"@VER,R,NUM,": the reply request_foreign() waits for
        self.discarded_at_open = 0   # frames read and dropped when the link opened
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
        kwargs = {"baudrate": self._baudrate, "timeout": self.POLL_S}
        if not self.port.startswith("rfc2217://"):       # pyserial's RFC 2217 client has no write timeout
            kwargs["write_timeout"] = self.REQUEST_TIMEOUT_S
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
        trace_write(self.trace, "#", "open %s" % self.port)
        log.info("opened %s", self.port)
        # Terminate whatever half line the pen may hold from an earlier client,
        # so our first request starts on a fresh line.
        self._write(b"\n")
        self._discard_stale()
        return self

    def _discard_stale(self):
        """Read and drop what the port delivers until it is quiet (bounded): replies and events
        meant for an earlier client. Non-frame lines are kept (they tell whether this is a REPL)."""
        start = time.monotonic()
        quiet_since = start
        before = self.events_received + len(self._responses)
        received = 0
        while True:
            now = time.monotonic()
            if now - quiet_since >= self.DRAIN_QUIET_S or now - start >= self.DRAIN_MAX_S:
                break
            got = self._pump(min(self.DRAIN_QUIET_S, self.DRAIN_MAX_S - (now - start)))
            if got:
                received += got
                quiet_since = time.monotonic()
        self.discarded_at_open = self.events_received + len(self._responses) - before
        self.events.clear()
        self._responses.clear()
        if received:
            log.info("discarded %d bytes (%d frames) the port held from before this command",
                     received, self.discarded_at_open)

    def close(self):
        if self._serial is not None:
            if self._rx:
                trace_write(self.trace, "<", bytes(self._rx))     # a partial line, e.g. a prompt
            trace_write(self.trace, "#", "close %s" % self.port)
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

    def request(self, body, timeout=None, fresh_events=False):
        """Send one request body (dict with "op"); return the response body (dict).

        The response may be {"ok": false, ...}: interpreting it is the caller's job.
        Raises LinkError on timeout or disconnect, ProtocolError when the pen
        speaks another protocol version. `fresh_events`: events that arrived before the
        response are dropped (the pen sent them before it handled this request).
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
        self._awaiting = (num, fresh_events)
        self._write(frame)
        sent = time.monotonic()
        timeout = self.REQUEST_TIMEOUT_S if timeout is None else timeout
        deadline = sent + timeout
        try:
            while num not in self._responses:
                remaining = deadline - time.monotonic()
                echo_grace = self.ECHO_GRACE_S + max(0.0, self._echo_t - sent)
                if remaining <= 0 or (self.echoed and time.monotonic() - self._echo_t > echo_grace):
                    raise LinkError(self._timeout_message(body.get("op"), timeout))
                self._pump(min(remaining, self.POLL_S))
                if self.foreign_version is not None and num not in self._responses:
                    raise ProtocolError("the pen on %s speaks protocol version %s, this penctl speaks %d: "
                                        "update penctl, or run `penctl flash` to give the pen matching "
                                        "firmware" % (self.port, self.foreign_version, PROTOCOL_VERSION))
        finally:
            self._awaiting = None
        return self._responses.pop(num)

    def request_foreign(self, version, body, timeout=None):
        """Send one request in the envelope of another protocol version (`@VER,Q,NUM,BODY*CRC`, which
        every version keeps) and return its response body, or LinkError on timeout. Only for asking a
        pen that speaks another version something every version answers (its `info` state)."""
        num = self._next_id
        self._next_id = num + 1 if num < 65535 else 1
        inner = ("%d,Q,%d,%s" % (version, num, wire.dumps(body))).encode()
        self._foreign_prefix = b"@%d,R,%d," % (version, num)
        self._responses.clear()
        self._write(b"@" + inner + b"*%08x\n" % (binascii.crc32(inner) & 0xFFFFFFFF))
        timeout = self.REQUEST_TIMEOUT_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            while num not in self._responses:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LinkError("no response from the pen on %s within %s s to a protocol %d request"
                                    % (self.port, _fmt_s(timeout), version))
                self._pump(min(remaining, self.POLL_S))
        finally:
            self._foreign_prefix = None
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
        trace_write(self.trace, ">", data)
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
                return self._read_available(ser, waiting)
            if wait <= 0:
                return b""
            wait = min(wait, self.POLL_S)
            if ser.timeout != wait:
                ser.timeout = wait     # pyserial reconfigures the port on every change: only if needed
            data = ser.read(1)
            if data:
                waiting = ser.in_waiting
                if waiting:
                    data += self._read_available(ser, waiting)
            return data
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise LinkError("lost the connection to the pen on %s: %s. Is it still plugged in?"
                            % (self.port, _os_reason(exc))) from None

    #: bytes read at once from a socket:// port
    SOCKET_CHUNK = 65536

    def _read_available(self, ser, waiting):
        """The bytes that have arrived. pyserial's socket:// port reports 1 as in_waiting whenever
        anything is there; reading that one byte at a time would take seconds for a backlog, so a
        socket is read without waiting (timeout 0) in large chunks."""
        if not self.port.startswith("socket://"):
            return ser.read(waiting)
        previous = ser.timeout
        ser.timeout = 0
        try:
            return ser.read(self.SOCKET_CHUNK)
        finally:
            ser.timeout = previous

    def _pump(self, wait):
        """Read what is available (waiting at most `wait` s for the first byte) and sort it.
        Returns the number of bytes read."""
        data = self._read_some(wait)
        if not data:
            return 0
        self._rx += data
        while True:
            end = self._rx.find(b"\n")
            if end < 0:
                if not self.echoed and _ECHO.match(self._rx):
                    self._echo_t = time.monotonic()
                    self.echoed = True
                if len(self._rx) > self.LINE_MAX:
                    trace_write(self.trace, "<", bytes(self._rx))
                    self._remember(bytes(self._rx[:200]) + b"...")
                    del self._rx[:]
                return len(data)
            line = bytes(self._rx[:end])
            del self._rx[:end + 1]
            self._line(line)

    def _line(self, line):
        trace_write(self.trace, "<", line)
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
                if self._foreign_prefix is not None and stripped[start:].startswith(self._foreign_prefix):
                    body = _decode_envelope(stripped[start:])
                    if body is not None:
                        self._responses[int(self._foreign_prefix.split(b",")[2])] = body
                        return
            self._remember(stripped)
            return
        if start:
            self._remember(stripped[:start])
        if kind == wire.KIND_RESPONSE:
            if num == 0 and body.get("ok") is False:
                # The pen could not parse a line (ours or noise): keep it for messages.
                self.last_pen_error = body
            self._responses[num] = body
            if self._awaiting is not None and self._awaiting == (num, True):
                self.events.clear()     # sent before the pen handled our request: not fresh
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
        # Only a pen seen at the REPL is told to flash: a silent one may be off, unplugged, another
        # device, or a slow link (a longer --timeout helps there).
        return text + (". Is the pen switched on and is %s its port (`penctl ports` lists attached pens)? "
                       "On a slow link, try a longer --timeout" % self.port)


def _decode_envelope(line):
    """The JSON object body of a frame of any protocol version whose CRC checks, else None."""
    try:
        text = line.decode("ascii")
        star = text.rindex("*")
        inner = text[1:star]
        if "%08x" % (binascii.crc32(inner.encode()) & 0xFFFFFFFF) != text[star + 1:]:
            return None
        body = json.loads(inner.split(",", 3)[3])
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


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
