"""labgrid's exporter, plus the lab's virtual pens as exportable devices (run in .venv-lab).

`python lab/exporter.py -c HOST:PORT --hostname 127.0.0.1 -n NAME CONFIG.yaml` is
`labgrid-exporter` with two more resource classes for its configuration:

- `VirtualPenSerialPort` (`status: FILE`): the pen's USB-CDC port. Exported like labgrid's own
  USBSerialPort: while a place holds it, a ser2net process serves it over RFC2217 on a free TCP port
  of the exporter's --hostname; clients see a standard `NetworkSerialPort`.
- `VirtualPenRig` (`status: FILE`): the pen's bench rig (the virtual pen's rig socket, JSON lines,
  docs/design.md §5.3), served by ser2net as a raw TCP stream; clients see a `NetworkSerialPort`
  with protocol "raw", as they would a rig fixture on its own USB serial port.

Both read the pen's status file, which the lab supervisor writes (lab/supervisor.py): the pen's pty,
its rig socket, its serial number, a generation that changes whenever the pen re-enumerates, and
whether it is plugged in. A pen that is unplugged or whose process died is published as unavailable
(`avail: false`); one that comes back on another pty is served on a new TCP port, as a USB pen that
re-enumerates as another /dev/ttyACM* is.

Unlike labgrid's own serial export, ser2net listens on the exporter's --hostname only (the lab stays
on loopback), and every ser2net this exporter started is stopped when it exits.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from socket import getfqdn

import attr
from labgrid.remote import exporter as lg_exporter
from labgrid.resource.common import Resource
from labgrid.util import get_free_port

SER2NET_START_S = 5.0       # ser2net must be listening within this time
SER2NET_STOP_S = 3.0        # ser2net takes about a second to react to SIGTERM
BAUDRATE = 115200           # USB-CDC ignores it; ser2net's serialdev needs one


def read_status(path):
    """The pen's status file as a dict, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listening(host, port):
    """True when a TCP socket listens on host:port (read from /proc: connecting to ser2net would
    open the pen's port)."""
    want = "%s:%04X" % ("".join("%02X" % b for b in reversed(socket.inet_aton(host))), port)
    try:
        with open("/proc/net/tcp") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":       # 0A: LISTEN
                    return True
    except OSError:
        return False
    return False


class Ser2net:
    """One ser2net process serving one connection (accepter -> connector), in the foreground."""

    def __init__(self, logger):
        self.logger = logger
        self.binary = _ser2net_binary()
        self.child = None
        self.port = None

    def start(self, host, filters, connector):
        """Serve `connector` on host:port (a free port) through the accepter filters `filters`
        (e.g. "telnet(rfc2217,mode=server)", or "" for a raw TCP stream)."""
        assert self.child is None
        port = get_free_port()
        # Low latency, as a USB cable has: no Nagle on the TCP side (tcp(nodelay)), and no
        # "chardelay" (ser2net otherwise waits up to 20 ms for more characters before sending).
        # With ser2net's defaults a request/reply exchange costs ~45 ms instead of ~3 ms.
        accepter = "%stcp(nodelay),%s,%d" % (filters + "," if filters else "", host, port)
        cmd = [self.binary, "-d", "-n",
               "-Y", "connection: &lab#  accepter: %s" % accepter,
               "-Y", "  connector: %s" % connector,
               "-Y", "  options:",
               "-Y", "    max-connections: 10",
               "-Y", "    chardelay: false"]
        self.logger.info("starting ser2net: %s", " ".join(cmd))
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SER2NET_START_S
        while not listening(host, port):
            if child.poll() is not None:
                raise lg_exporter.ExporterError("ser2net for %s exited at once (%s)" % (connector, child.returncode))
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise lg_exporter.ExporterError("ser2net for %s not listening on %s:%d within %.0f s"
                                                % (connector, host, port, SER2NET_START_S))
            time.sleep(0.02)
        self.child = child
        self.port = port
        self.logger.info("ser2net serves %s on %s:%d", connector, host, port)

    def stop(self):
        child, self.child, self.port = self.child, None, None
        if child is None:
            return
        child.terminate()
        try:
            child.wait(SER2NET_STOP_S)
        except subprocess.TimeoutExpired:
            self.logger.warning("ser2net %d still running after SIGTERM: killing it", child.pid)
            child.kill()
            child.wait()


def _ser2net_binary():
    for path in (os.environ.get("LAB_SER2NET"), "/usr/sbin/ser2net", "/usr/bin/ser2net"):
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit("ser2net not found: install Debian's ser2net (make lab-setup does)")


@attr.s(eq=False)
class VirtualPenDevice(Resource):
    """The local view of one virtual pen: what its status file says, checked against the system."""

    status = attr.ib(validator=attr.validators.instance_of(str))

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.port = None
        self.rig = None
        self.serial = None
        self.generation = None
        self.avail = False

    def poll(self):
        info = read_status(self.status) or {}
        port, rig = info.get("port"), info.get("rig")
        # Plugged in, its process alive, its pty and rig socket present: else it is offline.
        online = bool(info.get("online") and pid_alive(info.get("pid")) and isinstance(port, str)
                      and os.path.exists(port) and isinstance(rig, str) and os.path.exists(rig))
        self.avail = online
        self.port = port if online else None
        self.rig = rig if online else None
        self.serial = info.get("serial") if online else None
        self.generation = info.get("generation") if online else None


@attr.s(eq=False)
class _VirtualPenExport(lg_exporter.ResourceExport):
    """Shared by the pen's port and its rig: a local VirtualPenDevice served by one ser2net while
    a place holds it; served anew (new TCP port) whenever the pen re-enumerates."""

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.local = VirtualPenDevice(target=None, name=None, **self.local_params)
        self.data["cls"] = "NetworkSerialPort"
        self.ser2net = Ser2net(self.logger)

    def _get_start_params(self):
        return {"path": self._served_path(), "generation": self.local.generation}

    def _start(self, start_params):
        assert self.local.avail
        self.ser2net.start(self.host, *self._ser2net_args(start_params["path"]))

    def _stop(self, start_params):
        self.ser2net.stop()


@attr.s(eq=False)
class VirtualPenSerialExport(_VirtualPenExport):
    def _served_path(self):
        return self.local.port

    def _ser2net_args(self, path):
        return ("telnet(rfc2217,mode=server)", "serialdev(nouucplock=true),%s,%dn81,local" % (path, BAUDRATE))

    def _get_params(self):
        return {"host": self.host, "port": self.ser2net.port, "speed": BAUDRATE, "protocol": "rfc2217",
                "extra": {"path": self.local.port, "serial": self.local.serial,
                          "generation": self.local.generation}}


@attr.s(eq=False)
class VirtualPenRigExport(_VirtualPenExport):
    def _served_path(self):
        return self.local.rig

    def _ser2net_args(self, path):
        return ("", "unix,%s" % path)

    def _get_params(self):
        return {"host": self.host, "port": self.ser2net.port, "speed": BAUDRATE, "protocol": "raw",
                "extra": {"path": self.local.rig, "serial": self.local.serial,
                          "generation": self.local.generation}}


lg_exporter.exports["VirtualPenSerialPort"] = VirtualPenSerialExport
lg_exporter.exports["VirtualPenRig"] = VirtualPenRigExport


def _stop_exports(exporter):
    """Stop every ser2net this exporter started (labgrid leaves them to garbage collection)."""
    for group in exporter.groups.values():
        for resource in group.values():
            if isinstance(resource, lg_exporter.ResourceExport) and resource.start_params is not None:
                try:
                    resource.stop()
                except Exception as exc:   # noqa: BLE001 - keep stopping the others
                    print("exporter: stopping %s failed: %s" % (resource, exc), file=sys.stderr)


async def _amain(config):
    exporter = lg_exporter.Exporter(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(exporter.stop()))
    try:
        await exporter.run()
    finally:
        _stop_exports(exporter)


def main(argv=None):
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--coordinator", required=True, metavar="HOST:PORT")
    parser.add_argument("-n", "--name", required=True, help="public name of this exporter")
    parser.add_argument("--hostname", required=True,
                        help="address published for the resources, and the one ser2net listens on")
    parser.add_argument("-d", "--debug", action="store_true")
    parser.add_argument("resources", help="resource configuration (YAML, Jinja2 template)")
    args = parser.parse_args(argv)
    try:
        socket.inet_aton(args.hostname)
    except OSError:
        parser.error("--hostname must be an IPv4 address (ser2net listens on it): %r" % args.hostname)
    if not os.path.isfile(args.resources):
        parser.error("no such resource configuration: %s" % args.resources)
    _ser2net_binary()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = {"name": args.name, "hostname": args.hostname, "resources": args.resources,
              "coordinator": args.coordinator, "isolated": False}
    print("exporter %s for coordinator %s (proxy name %s)" % (args.name, args.coordinator, getfqdn()), flush=True)
    asyncio.run(_amain(config))
    return 100 if lg_exporter.reexec else 0


if __name__ == "__main__":
    sys.exit(main())
