"""Network links to a virtual pen for the penctl tests: real sockets on loopback, real threads.

- `LatencyLink`: a TCP server (`socket://127.0.0.1:PORT`) in front of the pen's pty, adding a fixed
  delay to every byte in each direction and, optionally, a bandwidth limit. It keeps the pty open
  between clients and keeps what the pen sends while no client is connected (up to BACKLOG_MAX), then
  delivers it to the next client: a USB-serial bridge with a buffer, a remote console server, or the
  pen's own USB transmit buffer. Several clients may be connected at once (the pen's output goes to
  all of them): that is how a second program on the same pen is modelled.
- `Rfc2217Server`: an RFC 2217 server (pyserial's `serial.rfc2217.PortManager`, as in pyserial's
  rfc2217_server example) on the pen's pty, one client at a time, with an optional delay per
  direction: `rfc2217://127.0.0.1:PORT`, what ser2net publishes in a lab.

Both stop their threads and close their sockets on close().
"""

import collections
import os
import socket
import threading
import time

import serial
import serial.rfc2217

BACKLOG_MAX = 1 << 20


class _DelayLine:
    """Delivers chunks to `sink(data)` `delay_s` after they were put, in order, at most `rate` bytes/s."""

    def __init__(self, sink, delay_s, rate=None):
        self.sink = sink
        self.delay_s = delay_s
        self.rate = rate
        self.items = collections.deque()
        self.cond = threading.Condition()
        self.alive = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, data):
        with self.cond:
            self.items.append((time.monotonic() + self.delay_s, data))
            self.cond.notify()

    def _run(self):
        while True:
            with self.cond:
                while self.alive and not self.items:
                    self.cond.wait(0.1)
                if not self.alive:
                    return
                due, data = self.items[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if self.rate:
                data = data[:max(1, int(self.rate * 0.01))]   # what the line carries in 10 ms
                time.sleep(len(data) / self.rate)
            with self.cond:
                if not self.items:
                    continue
                head_due, head = self.items[0]
                if len(data) < len(head):
                    self.items[0] = (head_due, head[len(data):])
                else:
                    self.items.popleft()
            try:
                self.sink(data)
            except OSError:
                pass

    def close(self):
        with self.cond:
            self.alive = False
            self.cond.notify()
        self.thread.join(2)


class LatencyLink:
    """`socket://` access to the pen's pty with `delay_s` each way (and an optional rate limit)."""

    def __init__(self, pty_path, delay_s=0.15, rate=None):
        self.fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY)
        self.clients = []
        self.backlog = bytearray()
        self.lock = threading.Lock()
        self.alive = True
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.server.settimeout(0.2)
        self.address = self.server.getsockname()
        self.url = "socket://127.0.0.1:%d" % self.address[1]
        self.to_host = _DelayLine(self._deliver, delay_s, rate)
        self.to_pen = _DelayLine(lambda data: os.write(self.fd, data), delay_s)
        self.threads = [threading.Thread(target=self._accept, daemon=True),
                        threading.Thread(target=self._read_pen, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _deliver(self, data):
        with self.lock:
            clients = list(self.clients)
            if not clients:
                self.backlog += data
                del self.backlog[:max(0, len(self.backlog) - BACKLOG_MAX)]
                return
        for client in clients:
            try:
                client.sendall(data)
            except OSError:
                self._drop(client)

    def _drop(self, client):
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)
        client.close()

    def _accept(self):
        while self.alive:
            try:
                client, _addr = self.server.accept()
            except (socket.timeout, OSError):
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                backlog, self.backlog = bytes(self.backlog), bytearray()
                self.clients.append(client)
            if backlog:
                self.to_host.put(backlog)   # behind the delay like everything else
            threading.Thread(target=self._read_client, args=(client,), daemon=True).start()

    def _read_client(self, client):
        while self.alive:
            try:
                data = client.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            self.to_pen.put(data)

    def _read_pen(self):
        import select

        while self.alive:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.05)
                continue
            if data:
                self.to_host.put(data)

    def close(self):
        self.alive = False
        self.to_host.close()
        self.to_pen.close()
        self.server.close()
        with self.lock:
            clients, self.clients = list(self.clients), []
        for client in clients:
            client.close()
        for thread in self.threads:
            thread.join(2)
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _PtySerial(serial.Serial):
    """The pen's pty as pyserial sees it. A pty has no modem lines or break: setting them is a no-op and
    reading them gives a connected line (a USB-CDC pen ignores them too); the RFC 2217 server reports
    them to the client."""

    cts = dsr = cd = property(lambda self: True)
    ri = property(lambda self: False)

    def _update_rts_state(self):
        pass

    def _update_dtr_state(self):
        pass

    def _update_break_state(self):
        pass


class Rfc2217Server:
    """`rfc2217://127.0.0.1:PORT` for the pen's pty, `delay_s` added each way."""

    def __init__(self, pty_path, delay_s=0.0):
        self.pty_path = pty_path
        self.delay_s = delay_s
        self.alive = True
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.server.settimeout(0.2)
        self.url = "rfc2217://127.0.0.1:%d" % self.server.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.alive:
            try:
                client, _addr = self.server.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._session(client)
            finally:
                client.close()

    def _session(self, client):
        ser = _PtySerial(self.pty_path, timeout=0.05)
        lock = threading.Lock()

        class Connection:
            def write(self, data):
                with lock:
                    client.sendall(data)

        connection = Connection()
        to_host = _DelayLine(connection.write, self.delay_s)
        manager = serial.rfc2217.PortManager(ser, connection)
        to_pen = _DelayLine(lambda data: ser.write(b"".join(manager.filter(data))), self.delay_s)
        done = threading.Event()

        def pen_to_host():
            while not done.is_set():
                try:
                    data = ser.read(ser.in_waiting or 1)
                except (OSError, serial.SerialException):
                    break
                if data:
                    to_host.put(b"".join(manager.escape(data)))

        reader = threading.Thread(target=pen_to_host, daemon=True)
        reader.start()
        client.settimeout(0.2)
        try:
            while self.alive:
                try:
                    data = client.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                to_pen.put(data)
        finally:
            time.sleep(self.delay_s)        # what is in flight to the pen still arrives
            done.set()
            reader.join(2)
            to_pen.close()
            to_host.close()
            ser.close()

    def close(self):
        self.alive = False
        self.server.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
