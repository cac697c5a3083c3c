"""The rig socket (`--control SOCK`, docs/design.md §5.3): the bench fixture's side of the pen.

A unix stream socket; each client sends JSON lines (rigproto's codec) and gets one reply line per
request, in order: a client's next request is handled once the previous one is answered. Requests
are checked with `rigproto.check_request` here, before the supervisor sees them.
"""

from __future__ import annotations

import selectors
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

from penctl.firmware.boards import rigproto
from pensim.loop import EventLoop
from pensim.owned_paths import OwnedSocket

Reply = Callable[[dict], None]
Handler = Callable[[dict, Reply], None]

REQUEST_LINE_MAX = 1 << 20     # a longer line is not a rig request: answered with an error


def parse_request(line: bytes) -> tuple[dict | None, dict | None]:
    """(request, None) for a valid request line, else (None, error reply)."""
    try:
        req = rigproto.decode(line)
    except ValueError as e:
        return None, {"ok": False, "error": f"bad JSON: {e}"}
    problem = rigproto.check_request(req)
    if problem is not None:
        return None, {"ok": False, "error": problem, "ops": list(rigproto.OPS)}
    return req, None


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.lines: deque[bytes] = deque()
        self.busy = False               # a request is with the supervisor
        self.eof = False
        self.closed = False
        self.on_event: Callable[[int], None] = lambda _mask: None


class RigServer:
    def __init__(self, loop: EventLoop, path: Path, handler: Handler):
        self._loop = loop
        self._socket = OwnedSocket(path)
        self._handler = handler
        self._clients: list[_Client] = []

    def open(self) -> None:
        srv = self._socket.bind()
        self._loop.watch(srv.fileno(), selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for c in list(self._clients):
            self._close_client(c)
        if self._socket.sock is not None:
            self._loop.forget(self._socket.sock.fileno())
        self._socket.close()

    def _accept(self, _mask: int) -> None:
        srv = self._socket.sock
        while srv is not None:
            try:
                sock, _ = srv.accept()
            except OSError:  # BlockingIOError: no more; others: try again on the next event
                return
            sock.setblocking(False)
            c = _Client(sock)
            c.on_event = lambda mask, c=c: self._event(c, mask)
            self._clients.append(c)
            self._watch(c)

    def _event(self, c: _Client, mask: int) -> None:
        if c.closed:
            return
        if mask & selectors.EVENT_READ:
            self._receive(c)
        if mask & selectors.EVENT_WRITE:
            self._flush(c)
        self._next(c)

    def _receive(self, c: _Client) -> None:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            c.eof = True
            self._watch(c)  # an ended stream stays readable: stop listening to it
            return
        c.rbuf += data
        while True:
            i = c.rbuf.find(b"\n")
            if i < 0:
                break
            line = bytes(c.rbuf[:i]).strip()
            del c.rbuf[: i + 1]
            if line:
                c.lines.append(line)
        if len(c.rbuf) > REQUEST_LINE_MAX:
            c.rbuf.clear()
            c.lines.append(b"<oversized line>")

    def _next(self, c: _Client) -> None:
        while not c.busy and c.lines and not c.closed:
            req, error = parse_request(c.lines.popleft())
            c.busy = True
            if req is None:
                assert error is not None
                self._reply(c, error)
            else:
                self._handler(req, lambda rep, c=c: self._reply(c, rep))
        self._close_if_done(c)

    def _reply(self, c: _Client, rep: dict) -> None:
        c.busy = False
        if c.closed:
            return
        c.wbuf += rigproto.encode(rep)
        self._flush(c)
        if c.lines:
            self._loop.after(0, lambda: self._next(c))

    def _flush(self, c: _Client) -> None:
        if c.closed:
            return
        if c.wbuf:
            try:
                n = c.sock.send(c.wbuf)
                del c.wbuf[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._close_client(c)
                return
        self._watch(c)
        self._close_if_done(c)

    def _watch(self, c: _Client) -> None:
        mask = (0 if c.eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if c.wbuf else 0)
        self._loop.watch(c.sock.fileno(), mask, c.on_event)

    def _close_if_done(self, c: _Client) -> None:
        if c.eof and not c.busy and not c.lines and not c.wbuf:
            self._close_client(c)

    def _close_client(self, c: _Client) -> None:
        if c.closed:
            return
        c.closed = True
        self._loop.forget(c.sock.fileno())
        if c in self._clients:
            self._clients.remove(c)
        try:
            c.sock.close()
        except OSError:
            pass
