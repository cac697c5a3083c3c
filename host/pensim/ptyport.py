"""The pen's USB-CDC port: a raw pty pair whose slave is the port the host opens.

The supervisor holds the master. Bytes from the host go to `on_input`; bytes for the host are
written as the pty takes them, and kept while it does not. `hold_input(True)` stops reading the
host, like USB flow control, so a host that writes faster than the interpreter reads blocks in its
own write().

The other way, the host paces the pen (docs/design.md §5.2): once BACKLOG_HIGH bytes wait for the
host, `on_backlog(True)` tells the supervisor to stop reading the interpreter's output, whose
writes then wait (the simulated board waits outside pen time); `on_backlog(False)` below
BACKLOG_LOW. A pen on an unpaced clock produces telemetry faster than real time: without this, a
host that reads slower (pyserial's RFC 2217 client) would lose samples a real pen never loses.
Output the pen must not keep (OUT_CAP) is dropped oldest first, as over USB.
"""

from __future__ import annotations

import errno
import os
import selectors
import tty
from collections.abc import Callable

from pensim.loop import EventLoop

OUT_CAP = 256 * 1024           # host-bound bytes kept at most (oldest dropped beyond)
BACKLOG_HIGH = 64 * 1024       # stop reading the interpreter's output above this ...
BACKLOG_LOW = 16 * 1024        # ... until the host has taken the backlog down to this
EIO_RETRY_S = 0.05             # master read failed with EIO (no slave open): try again after this


class PtyPort:
    def __init__(self, loop: EventLoop, on_input: Callable[[bytes], None],
                 on_backlog: Callable[[bool], None] | None = None):
        self._loop = loop
        self._on_input = on_input
        self._on_backlog = on_backlog
        self.backlogged = False         # on_backlog(True) was the last call
        self.master: int | None = None
        self.slave: int | None = None   # kept open: the port exists while the pen does
        self.path: str | None = None
        self._out = bytearray()         # bytes waiting for the host
        self._eio_pause = False         # the master read EIO: stop reading for a moment
        self._held = False              # the interpreter is not taking input: stop reading

    def open(self) -> str:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self._update()
        return self.path

    def close(self) -> None:
        self._loop.forget(self.master)
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None
        self._out.clear()
        self.backlogged = False

    # ---- pen -> host ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self.master is None:
            return
        if not self._out:
            try:
                n = os.write(self.master, data)
            except BlockingIOError:
                n = 0
            except OSError:
                return
            data = data[n:]
            if not data:
                return
        self._out += data
        if len(self._out) > OUT_CAP:  # more than the backlog allows: the oldest bytes are lost
            del self._out[: len(self._out) - OUT_CAP]
        if not self.backlogged and len(self._out) >= BACKLOG_HIGH:
            self._set_backlog(True)
        self._update()

    def _set_backlog(self, on: bool) -> None:
        self.backlogged = on
        if self._on_backlog is not None:
            self._on_backlog(on)

    def _flush(self) -> None:
        if self._out and self.master is not None:
            try:
                n = os.write(self.master, self._out)
                del self._out[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._out.clear()
        if self.backlogged and len(self._out) <= BACKLOG_LOW:
            self._set_backlog(False)
        self._update()

    # ---- host -> pen ------------------------------------------------------------------------

    def hold_input(self, on: bool) -> None:
        if on != self._held:
            self._held = on
            self._update()

    def _read(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            # no slave open (cannot happen while we hold our own slave fd): retry later
            self._eio_pause = True
            self._update()
            self._loop.after(EIO_RETRY_S, self._resume_after_eio)
            return
        if data:
            self._on_input(data)

    def _resume_after_eio(self) -> None:
        self._eio_pause = False
        self._update()

    # ---- selector ---------------------------------------------------------------------------

    def _update(self) -> None:
        if self.master is None:
            return
        mask = 0 if (self._eio_pause or self._held) else selectors.EVENT_READ
        if self._out:
            mask |= selectors.EVENT_WRITE
        self._loop.watch(self.master, mask, self._event)

    def _event(self, mask: int) -> None:
        if self.master is None:
            return
        if mask & selectors.EVENT_READ:
            self._read()
        if mask & selectors.EVENT_WRITE:
            self._flush()
