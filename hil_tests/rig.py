"""The bench rig as a small protocol (labgrid style).

A `Rig` is what a HIL fixture can do to a pen besides talking to it: inject a
fault, insert or remove a cartridge, cut and restore power, and measure the true
plant state. Three implementations:

- `SimRig`: the virtual pen's rig socket (`penctl sim --control SOCK`, docs/design.md §5).
- `NoRig`: a real pen on a bench with no fixture; every operation raises
  `RigUnavailable`, which the tests turn into a skip that names what is needed.
- `FakeRig`: in memory, records calls; used to test the harness itself.
"""
import json
import socket
import time

FAULTS = ("stall", "overcurrent", "overtemp", "tach_loss", "depth_jam", "cartridge_out",
          "lid_open", "low_battery")


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

    def cartridge(self, cartridge_id):
        """Insert a cartridge with this hex ID; None removes it."""
        raise NotImplementedError

    def power_cut(self):
        raise NotImplementedError

    def power_on(self):
        raise NotImplementedError

    def measure(self):
        """True plant state: depth_um, hz, motor_on, uv_on, ... (dict)."""
        raise NotImplementedError


class SimRig(Rig):
    name = "sim"
    REPLY_TIMEOUT_S = 10.0

    def __init__(self, socket_path):
        self.socket_path = socket_path
        self._sock = None
        self._buf = b""

    def _connect(self):
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.REPLY_TIMEOUT_S)
            sock.connect(self.socket_path)
            self._sock = sock
        return self._sock

    def request(self, **body):
        sock = self._connect()
        sock.sendall(json.dumps(body).encode() + b"\n")
        deadline = time.monotonic() + self.REPLY_TIMEOUT_S
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise RigError("rig socket %s: no reply to %s" % (self.socket_path, body))
            chunk = sock.recv(4096)
            if not chunk:
                self._sock = None
                raise RigError("rig socket %s closed" % self.socket_path)
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RigError("rig refused %s: %s" % (body, reply))
        return reply

    def inject(self, fault):
        if fault not in FAULTS:
            raise ValueError("unknown fault %r" % fault)
        return self.request(op="inject", fault=fault)

    def clear_injections(self):
        return self.request(op="clear_injections")

    def cartridge(self, cartridge_id):
        return self.request(op="cartridge", id=cartridge_id)

    def power_cut(self):
        return self.request(op="power_cut")

    def power_on(self):
        return self.request(op="power_on")

    def measure(self):
        return self.request(op="measure")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NoRig(Rig):
    name = "none"
    NEEDS = {
        "inject": "a fault-injection fixture (motor brake, current/temperature/battery simulators, lid actuator)",
        "clear_injections": "a fault-injection fixture",
        "cartridge": "a cartridge changer (or insert cartridges by hand and run the test interactively)",
        "power_cut": "a switchable power supply on the pen",
        "power_on": "a switchable power supply on the pen",
        "measure": "an independent measurement rig (laser depth gauge, stroke tachometer)",
    }

    def _unavailable(self, what):
        raise RigUnavailable("needs %s (no rig on this bench: pass --rig-socket)" % self.NEEDS[what])

    def inject(self, fault):
        self._unavailable("inject")

    def clear_injections(self):
        self._unavailable("clear_injections")

    def cartridge(self, cartridge_id):
        self._unavailable("cartridge")

    def power_cut(self):
        self._unavailable("power_cut")

    def power_on(self):
        self._unavailable("power_on")

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

    def cartridge(self, cartridge_id):
        self.calls.append(("cartridge", cartridge_id))
        return {"ok": True}

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
