"""The bench rig as a small protocol (labgrid style).

A `Rig` is what a HIL fixture can do to a pen besides talking to it: inject a
fault, insert or remove a cartridge, open the dock lid, cut and restore power,
and measure the true plant state. The protocol (JSON lines, docs/design.md §5.3)
is defined once in `firmware/boards/rigproto.py`. Implementations:

- `SimRig`: the virtual pen's rig socket (`penctl sim --control SOCK`).
- `UrlRig`: the same protocol over a pyserial URL: a lab place's rig as its
  exporter serves it (`socket://host:port`, or `rfc2217://host:port` for a rig
  fixture on its own USB serial port; docs/lab.md).
- `NoRig`: a real pen on a bench with no fixture; every operation raises
  `RigUnavailable`, which the tests turn into a skip that names what is needed.
- `FakeRig`: in memory, records calls; used to test the harness itself.
"""
import socket
import time

from penctl.firmware.boards import rigproto

FAULTS = rigproto.FAULTS


class RigUnavailable(Exception):
    """The rig cannot do this; the message says what hardware would be needed."""


class RigError(Exception):
    """The rig tried and failed."""


class Rig:
    name = "rig"

    def inject(self, fault):
        raise NotImplementedError

    def clear_injections(self):
        raise NotImplementedError

    def cartridge(self, cartridge_id, used=False):
        """Insert a cartridge with this hex ID (`used`: already marked used elsewhere); None removes it."""
        raise NotImplementedError

    def lid(self, closed):
        """Open or close the dock lid."""
        raise NotImplementedError

    def hold_output(self, ms):
        """The pen's USB link stops draining for `ms` of pen time (a host that stops reading)."""
        raise NotImplementedError

    def power_cut(self):
        raise NotImplementedError

    def power_on(self):
        raise NotImplementedError

    def status(self):
        """The supply side: powered, firmware or REPL, counters (dict)."""
        raise NotImplementedError

    def measure(self):
        """True plant state: depth_um, hz, motor_on, uv_on, ... (dict)."""
        raise NotImplementedError

    def close(self):
        pass


class _LineRig(Rig):
    """The rig protocol over a byte stream: one request line, one reply line (docs/design.md §5.3)."""

    REPLY_TIMEOUT_S = 10.0

    def __init__(self, where):
        self.where = where
        self._buf = b""

    def _send(self, data):
        raise NotImplementedError

    def _recv(self, timeout):
        """Some bytes, b"" when nothing came within `timeout`; raises RigError when the link closed."""
        raise NotImplementedError

    def request(self, **body):
        problem = rigproto.check_request(body)
        if problem:
            raise ValueError("rig request %s: %s" % (body, problem))
        self._send(rigproto.encode(body))
        deadline = time.monotonic() + self.REPLY_TIMEOUT_S
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RigError("rig %s: no reply to %s within %.0f s" % (self.where, body, self.REPLY_TIMEOUT_S))
            self._buf += self._recv(remaining)
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = rigproto.decode(line)
        except ValueError:
            raise RigError("rig %s answered %r to %s" % (self.where, line[:200], body)) from None
        if not reply.get("ok"):
            raise RigError("rig refused %s: %s" % (body, reply))
        return reply

    def inject(self, fault):
        if fault not in FAULTS:
            raise ValueError("unknown fault %r" % fault)
        return self.request(op=rigproto.OP_INJECT, fault=fault)

    def clear_injections(self):
        return self.request(op=rigproto.OP_CLEAR_INJECTIONS)

    def cartridge(self, cartridge_id, used=False):
        return self.request(op=rigproto.OP_CARTRIDGE, id=cartridge_id, used=used)

    def lid(self, closed):
        return self.request(op=rigproto.OP_LID, closed=closed)

    def hold_output(self, ms):
        return self.request(op=rigproto.OP_HOLD_OUTPUT, ms=ms)

    def power_cut(self):
        return self.request(op=rigproto.OP_POWER_CUT)

    def power_on(self):
        return self.request(op=rigproto.OP_POWER_ON)

    def status(self):
        return self.request(op=rigproto.OP_STATUS)

    def measure(self):
        return self.request(op=rigproto.OP_MEASURE)


class SimRig(_LineRig):
    """The virtual pen's rig socket (a Unix socket)."""

    name = "sim"

    def __init__(self, socket_path):
        super().__init__(socket_path)
        self.socket_path = socket_path
        self._sock = None

    def _connect(self):
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise RigError("rig socket %s: %s" % (self.socket_path, exc)) from None
            self._sock = sock
            self._buf = b""
        return self._sock

    def _send(self, data):
        try:
            self._connect().sendall(data)
        except OSError as exc:
            self.close()
            raise RigError("rig socket %s: %s" % (self.socket_path, exc)) from None

    def _recv(self, timeout):
        sock = self._connect()
        sock.settimeout(timeout)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            return b""
        except OSError as exc:
            self.close()
            raise RigError("rig socket %s: %s" % (self.socket_path, exc)) from None
        if not chunk:
            self.close()
            raise RigError("rig socket %s closed" % self.socket_path)
        return chunk

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class UrlRig(_LineRig):
    """The rig protocol over a pyserial URL (a lab place's rig, docs/lab.md)."""

    name = "lab"
    POLL_S = 0.05

    def __init__(self, url):
        super().__init__(url)
        self.url = url
        self._port = None

    def _connect(self):
        import serial

        if self._port is None:
            try:
                self._port = serial.serial_for_url(self.url, timeout=self.POLL_S)
            except (serial.SerialException, ValueError, OSError) as exc:
                raise RigError("rig %s: %s" % (self.url, exc)) from None
            self._buf = b""
        return self._port

    def _send(self, data):
        import serial

        try:
            self._connect().write(data)
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise RigError("rig %s: %s" % (self.url, exc)) from None

    def _recv(self, timeout):
        import serial

        port = self._connect()
        deadline = time.monotonic() + timeout
        try:
            while True:
                chunk = port.read(port.in_waiting or 1)
                if chunk or time.monotonic() >= deadline:
                    return chunk
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise RigError("rig %s: the link closed (%s)" % (self.url, exc)) from None

    def close(self):
        if self._port is not None:
            try:
                self._port.close()
            except Exception:   # noqa: BLE001 - closing a dead link
                pass
            self._port = None


class NoRig(Rig):
    name = "none"
    NEEDS = {
        "inject": "a fault-injection fixture (motor brake, current/temperature/battery simulators, lid actuator)",
        "clear_injections": "a fault-injection fixture",
        "cartridge": "a cartridge changer (or insert cartridges by hand and run the test interactively)",
        "lid": "a dock lid actuator",
        "hold_output": "a USB link the fixture can stall (a host that stops reading)",
        "power_cut": "a switchable power supply on the pen",
        "power_on": "a switchable power supply on the pen",
        "status": "a switchable power supply on the pen",
        "measure": "an independent measurement rig (laser depth gauge, stroke tachometer)",
    }

    def _unavailable(self, what):
        raise RigUnavailable("needs %s (no rig on this bench: pass --rig-socket)" % self.NEEDS[what])

    def inject(self, fault):
        self._unavailable("inject")

    def clear_injections(self):
        self._unavailable("clear_injections")

    def cartridge(self, cartridge_id, used=False):
        self._unavailable("cartridge")

    def lid(self, closed):
        self._unavailable("lid")

    def hold_output(self, ms):
        self._unavailable("hold_output")

    def power_cut(self):
        self._unavailable("power_cut")

    def power_on(self):
        self._unavailable("power_on")

    def status(self):
        self._unavailable("status")

    def measure(self):
        self._unavailable("measure")


class FakeRig(Rig):
    """Records what the harness asked for; `plant` is returned by measure()."""

    name = "fake"

    def __init__(self, plant=None):
        self.calls = []
        self.plant = dict(plant or {"depth_um": 0, "hz": 0.0, "motor_on": False, "uv_on": False})
        self.powered = True

    def inject(self, fault):
        if fault not in FAULTS:
            raise ValueError("unknown fault %r" % fault)
        self.calls.append(("inject", fault))
        return {"ok": True}

    def clear_injections(self):
        self.calls.append(("clear_injections",))
        return {"ok": True}

    def cartridge(self, cartridge_id, used=False):
        self.calls.append(("cartridge", cartridge_id) + (("used",) if used else ()))
        return {"ok": True}

    def lid(self, closed):
        self.calls.append(("lid", closed))
        return {"ok": True}

    def hold_output(self, ms):
        self.calls.append(("hold_output", ms))
        return {"ok": True}

    def status(self):
        self.calls.append(("status",))
        return {"ok": True, "powered": self.powered}

    def power_cut(self):
        self.calls.append(("power_cut",))
        self.powered = False
        return {"ok": True}

    def power_on(self):
        self.calls.append(("power_on",))
        self.powered = True
        return {"ok": True}

    def measure(self):
        self.calls.append(("measure",))
        return dict(self.plant, ok=True, powered=self.powered)
