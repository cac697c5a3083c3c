"""The rig channel to a running firmware: a pipe pair to the sim board (PEN_SIM_RIG_IN / _OUT).

JSON lines in rigproto's codec, one reply per request, in order. A request the sim board does not
answer within `timeout` gets an error reply, and its late answer is skipped when it comes.
"""

from __future__ import annotations

import os
import selectors
import time
from collections import deque
from collections.abc import Callable

from penctl.firmware.boards import rigproto
from pensim.loop import EventLoop

Reply = Callable[[dict], None]

RIG_TIMEOUT_S = 5.0            # the sim board answers between two ticks; this is a hung firmware
LINE_MAX = 1 << 20             # a longer reply line is not the sim board's


class RigChannel:
    def __init__(self, loop: EventLoop, write_fd: int, read_fd: int, timeout: float = RIG_TIMEOUT_S):
        self._loop = loop
        self._w: int | None = write_fd
        self._r: int | None = read_fd
        self.timeout = timeout
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        self._wbuf = bytearray()
        self._rbuf = bytearray()
        self._pending: deque[tuple[float, Reply | None]] = deque()
        self._late = 0                  # replies still owed to requests that timed out
        loop.watch(read_fd, selectors.EVENT_READ, self._readable)

    @property
    def open(self) -> bool:
        return self._w is not None and self._r is not None

    def request(self, req: dict, reply: Reply | None) -> None:
        """Send `req`; `reply(answer)` is called once (None: nobody waits for the answer)."""
        if not self.open:
            if reply is not None:
                reply({"ok": False, "error": "firmware not running"})
            return
        self._pending.append((time.monotonic() + self.timeout, reply))
        self._wbuf += rigproto.encode(req)
        self._flush()
        self._loop.after(self.timeout + 0.001, self._expire)

    def close(self, reason: str = "firmware stopped") -> None:
        for fd in (self._w, self._r):
            if fd is not None:
                self._loop.forget(fd)
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = None
        self._wbuf.clear()
        pending = list(self._pending)
        self._pending.clear()
        for _deadline, reply in pending:
            if reply is not None:
                reply({"ok": False, "error": reason})

    def _flush(self, _mask: int = 0) -> None:
        if self._w is None:
            return
        if self._wbuf:
            try:
                n = os.write(self._w, self._wbuf)
                del self._wbuf[:n]
            except BlockingIOError:
                pass
            except OSError:          # the firmware closed its end: it is going away
                self._wbuf.clear()
        self._loop.watch(self._w, selectors.EVENT_WRITE if self._wbuf else 0, self._flush)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _deadline, reply = self._pending.popleft()
            self._late += 1
            if reply is not None:
                reply({"ok": False, "error": "rig channel timeout (firmware did not answer)"})

    def _readable(self, _mask: int) -> None:
        if self._r is None:
            return
        try:
            data = os.read(self._r, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:                 # the firmware exited; the interpreter closes the channel
            self._loop.forget(self._r)
            return
        self._rbuf += data
        while True:
            i = self._rbuf.find(b"\n")
            if i < 0:
                if len(self._rbuf) > LINE_MAX:
                    self._rbuf.clear()
                return
            line = bytes(self._rbuf[:i]).strip()
            del self._rbuf[: i + 1]
            if line:
                self._answer(line)

    def _answer(self, line: bytes) -> None:
        if self._late:
            self._late -= 1
            return
        if not self._pending:
            return  # unsolicited
        _deadline, reply = self._pending.popleft()
        if reply is None:
            return
        try:
            answer = rigproto.decode(line)
        except ValueError:
            answer = {"ok": False, "error": "bad reply from the firmware's rig channel",
                      "raw": line.decode("utf-8", "replace")}
        reply(answer)
