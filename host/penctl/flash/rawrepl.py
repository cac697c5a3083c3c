"""The raw REPL over mpremote's SerialTransport: the only module of penctl that imports mpremote.

It uses mpremote's port handling (pyserial URLs, exclusive open, RTS/DTR) and byte sequences (Ctrl-C /
Ctrl-A entry, raw-paste with flow control, Ctrl-B / Ctrl-D), but buffered bulk reads and bounded waits:
mpremote reads one byte per call, polls non-pty ports every 10 ms and waits up to 10 s per phase, and
a pen that lost power must be noticed in settings.TIMEOUT_SILENT.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from penctl.errors import FlashError, LinkError
from penctl.flash import settings
from penctl.tracing import log, trace_write


class Gone(Exception):
    """The pen stopped answering (power cut, unplugged, reset)."""


class RawRepl:
    RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"

    def __init__(self, port: str, trace=None):
        self.port = port
        self.trace = trace
        self.buf = bytearray()
        if "://" not in port and not os.path.exists(port):
            raise LinkError("no such port %s: check --port / PENCTL_PORT (is the pen plugged in, "
                            "or `penctl sim` running?)" % port)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints while it retries
                self.t = SerialTransport(port, baudrate=settings.BAUDRATE, timeout=0.05)
        except (TransportError, OSError, ValueError, serial.SerialException) as exc:
            reason = exc
            try:  # the reason mpremote swallowed
                serial.serial_for_url(port, timeout=0, exclusive=True).close()
            except Exception as exc2:  # noqa: BLE001 - only for the message
                reason = exc2
            raise LinkError("cannot open %s (%s): is another program (mpremote, a terminal, another "
                            "penctl) holding it? check --port / PENCTL_PORT" % (port, reason)) from None
        self.ser = self.t.serial
        trace_write(trace, "#", "raw REPL: open %s" % port)

    def close(self):
        trace_write(self.trace, "#", "raw REPL: close %s" % self.port)
        try:
            self.t.close()  # clears RTS/DTR first, which a pty may refuse ...
        except (OSError, serial.SerialException):
            pass
        with contextlib.suppress(Exception):
            self.ser.close()  # ... and then the port would stay open and locked

    def _fill(self, deadline: float, silent_since: float) -> float:
        """Read what has arrived into self.buf (blocking up to the port timeout for one byte)."""
        try:
            chunk = self.ser.read(self.ser.in_waiting or 1)
        except (OSError, serial.SerialException) as exc:
            raise Gone(str(exc)) from None
        now = time.monotonic()
        if chunk:
            trace_write(self.trace, "<", chunk)
            self.buf += chunk
            return now
        if now - silent_since > settings.TIMEOUT_SILENT:
            raise Gone("the pen has been silent for %.1f s" % settings.TIMEOUT_SILENT)
        if now > deadline:
            raise Gone("step not finished in time")
        return silent_since

    def _read_until(self, ending: bytes, deadline: float) -> bytes:
        """Bytes up to and including `ending`."""
        since = time.monotonic()
        while True:
            i = self.buf.find(ending)
            if i >= 0:
                out = bytes(self.buf[:i + len(ending)])
                del self.buf[:i + len(ending)]
                return out
            since = self._fill(deadline, since)

    def _read(self, n: int, deadline: float) -> bytes:
        since = time.monotonic()
        while len(self.buf) < n:
            since = self._fill(deadline, since)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _write(self, data: bytes):
        trace_write(self.trace, ">", data)
        try:
            self.ser.write(data)
        except (OSError, serial.SerialException) as exc:
            raise Gone(str(exc)) from None

    def enter(self, timeout: float):
        """Ctrl-C (stops the firmware; it stops the motor first), then Ctrl-A: the raw REPL."""
        log.info("breaking into the REPL on %s (Ctrl-C, Ctrl-A)", self.port)
        deadline = time.monotonic() + timeout
        self._write(b"\r\x03")
        with contextlib.suppress(OSError, serial.SerialException):
            self.ser.reset_input_buffer()   # whatever the firmware was sending
        self.buf.clear()
        self._write(b"\r\x01")
        self._read_until(self.RAW_BANNER, deadline)
        self._read_until(b">", deadline)

    def _raw_paste(self, code: bytes, deadline: float):
        """mpremote's raw-paste exchange (SerialTransport.raw_paste_write)."""
        self._write(b"\x05A\x01")
        head = self._read(2, deadline)
        if head == b"R\x00":
            raise FlashError("the pen's REPL does not support raw-paste mode: it needs MicroPython 1.13 "
                             "or later")
        if head != b"R\x01":
            raise Gone("no raw-paste answer (got %r)" % head)
        size = remain = struct.unpack("<H", self._read(2, deadline))[0]
        i = 0
        while i < len(code):
            while remain == 0 or self.buf or self.ser.in_waiting:
                b = self._read(1, deadline)
                if b == b"\x01":
                    remain += size
                elif b == b"\x04":
                    self._write(b"\x04")  # the pen ended the paste early (e.g. memory): acknowledge
                    raise FlashError("the pen aborted receiving a flash step (out of memory?): "
                                     "lower penctl.flash.settings.WRITE_BATCH_BYTES")
                else:
                    raise Gone("unexpected %r during raw paste" % b)
            piece = code[i:i + remain]
            self._write(piece)
            remain -= len(piece)
            i += len(piece)
        self._write(b"\x04")
        self._read_until(b"\x04", deadline)

    def exec(self, code: str, timeout: float) -> str:
        """Run code in the raw REPL; its stdout, or FlashError with the pen's exception."""
        deadline = time.monotonic() + timeout
        self._raw_paste(code.encode(), deadline)
        out = self._read_until(b"\x04", deadline)[:-1]
        err = self._read_until(b"\x04", deadline)[:-1]
        self._read_until(b">", deadline)   # ready for the next one
        if err.strip():
            text = err.decode(errors="replace").strip()
            last = text.splitlines()[-1]
            hint = " (the pen's flash is full)" if ("ENOSPC" in text or "28" in last.split()) else ""
            raise FlashError("the pen failed a flash step%s: %s" % (hint, last))
        return out.decode(errors="replace")

    def soft_reset(self, timeout: float):
        """Ctrl-B (friendly REPL), Ctrl-D (soft reboot: runs main.py, i.e. the firmware)."""
        log.info("soft reset of %s (Ctrl-B, Ctrl-D)", self.port)
        deadline = time.monotonic() + timeout
        self._write(b"\r\x02")
        self._write(b"\x04")
        self._read_until(b"soft reboot\r\n", deadline)

    def resume(self):
        """Best effort after a failure: Ctrl-C (ends a raw paste in progress), then soft reset."""
        with contextlib.suppress(Exception):
            self._write(b"\r\x03")
            self.soft_reset(1.0)
