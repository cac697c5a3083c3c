"""The lab supervisor: one labgrid lab on loopback with N virtual pens (run in .venv-lab).

Started in the background by `lab/labctl.py start` (`make lab`), in a process group of its own; every
process it starts carries PEN_LAB_STATE=<state folder> in its environment, so `lab/labctl.py stop`
finds exactly the lab's processes. It runs, as its children:

- labgrid's coordinator on 127.0.0.1 (a free port; the address goes to lab.json);
- N virtual pens (`penctl --json sim --blank --clock C --state ... --control ...`), each described
  to the exporter by a status file `pens/pen-I.json` (pty, rig socket, serial, generation, online);
- the exporter (lab/exporter.py with lab/exporter-sim.yaml) publishing each pen's port (RFC2217)
  and rig (raw TCP) through ser2net, on 127.0.0.1 only.

and keeps places pen-1 ... pen-N (tags board=sim, clock=C, online=yes|no) on the coordinator:

- **online tag** (lab/watch.py): labgrid's scheduler allocates reservations by tags only, so the
  supervisor mirrors the availability of each place's resources into `online`; the harness
  reserves with `online=yes`, so a reservation is never handed a place whose pen is offline (the
  harness checks again after acquiring, for the moment between the two).
- **fresh pens**: when a place is released, its virtual pen is reset to a blank pen (flash wiped,
  serial kept, restarted): the next run gets what the HIL suite's local path gives, a blank pen it
  flashes itself.
- **control socket** (`control.sock`, JSON lines): `status`; `replug` (stop the pen, wait, start
  it again on a new pty: what USB re-enumeration does to a real pen), `unplug`, `plug`.

Layout of the state folder: lab.json, supervisor.log, coordinator.log, exporter.log,
coordinator/ (its places.yaml), pens/pen-I.json, pens/pen-I/{flash/,rig.sock,sim.log,sim.out},
control.sock.
"""
import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from labctl import CLOCKS, MARKER
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
from watch import WatchSession, online, sync_online_tags, wait_for_change

HERE = Path(__file__).resolve().parent
EXPORTER_NAME = "lab-sim"
EXPORTER_CONFIG = HERE / "exporter-sim.yaml"
LOOPBACK = "127.0.0.1"
BOARD = "sim"
START_TIMEOUT_S = 30.0            # a child (coordinator, pen) must be up within this
STOP_TIMEOUT_S = 10.0             # SIGTERM, then SIGKILL after this
REPLUG_DOWN_MAX_S = 60.0

log = logging.getLogger("lab")


def write_json(path, data):
    """Write atomically (temp + rename): readers never see half a file."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def place_names(pens):
    return ["pen-%d" % i for i in range(1, pens + 1)]


class Pen:
    """One virtual pen process (`penctl sim`) and its status file."""

    def __init__(self, lab, place):
        self.lab = lab
        self.place = place
        self.dir = lab.state / "pens" / place
        self.flash = self.dir / "flash"
        self.rig = self.dir / "rig.sock"
        self.status_path = lab.state / "pens" / ("%s.json" % place)
        self.proc = None
        self.info = {}
        self.generation = 0
        self.serial = None               # the last one the pen reported (kept while it is unplugged)
        self.plugged = False
        self.busy = asyncio.Lock()      # one start/stop/reset at a time

    def write_status(self):
        write_json(self.status_path, {
            "place": self.place, "online": bool(self.plugged and self.proc and self.proc.returncode is None),
            "port": self.info.get("port"), "pid": self.proc.pid if self.proc else None,
            "serial": self.info.get("serial") or self.serial, "rig": str(self.rig), "generation": self.generation,
            "state_dir": str(self.flash)})

    async def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flash.mkdir(exist_ok=True)
        out = self.dir / "sim.out"
        out.write_text("")
        cmd = [self.lab.penctl, "--json", "sim", "--blank", "--clock", self.lab.clock,
               "--state", str(self.flash), "--control", str(self.rig)]
        with open(out, "ab") as stdout, open(self.dir / "sim.log", "ab") as stderr:
            self.proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                             stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            text = out.read_text()
            if text.endswith("\n"):
                self.info = json.loads(text.splitlines()[0])
                break
            if self.proc.returncode is not None or time.monotonic() > deadline:
                tail = (self.dir / "sim.log").read_text()[-600:]
                await self.stop()
                raise RuntimeError("virtual pen %s did not start: %s" % (self.place, tail or "no output"))
            await asyncio.sleep(0.05)
        self.generation += 1
        self.serial = self.info.get("serial")
        self.plugged = True
        self.write_status()
        log.info("%s: virtual pen up on %s (serial %s, generation %d, pid %d)", self.place,
                 self.info["port"], self.info.get("serial"), self.generation, self.proc.pid)

    async def stop(self):
        self.plugged = False
        if self.proc is not None:
            self.write_status()          # offline first: the exporter stops serving it
            await terminate(self.proc, "pen %s" % self.place)
            self.proc = None
            self.info = {}
        self.write_status()

    def wipe(self):
        """Erase the pen's flash but its serial number (a factory-fresh pen keeps its unique id)."""
        if not self.flash.exists():
            return
        for entry in self.flash.iterdir():
            if entry.name == ".serial":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    async def restart(self, down_s=0.0, wipe=False):
        async with self.busy:
            await self.stop()
            if wipe:
                self.wipe()
            if down_s:
                await asyncio.sleep(down_s)
            await self.start()


async def terminate(proc, what):
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.warning("%s did not stop on SIGTERM within %.0f s: killing it", what, STOP_TIMEOUT_S)
        proc.kill()
        await proc.wait()


class Lab:
    def __init__(self, state, pens, clock, penctl, fresh_on_release=True):
        self.state = state
        self.clock = clock
        self.penctl = penctl
        self.fresh_on_release = fresh_on_release
        self.places = place_names(pens)
        self.pens = {name: Pen(self, name) for name in self.places}
        self.coordinator = None
        self.exporter = None
        self.address = None
        self.session = None
        self.stopping = asyncio.Event()
        self.summary = {"state": "starting", "pid": os.getpid(), "pgid": os.getpgid(0), "pens": pens,
                        "clock": clock, "places": self.places, "exporter": EXPORTER_NAME,
                        "tags": {"board": BOARD, "clock": clock}, "coordinator": None,
                        "fresh_on_release": fresh_on_release}
        self.tasks = []

    def publish(self, **changes):
        self.summary.update(changes)
        write_json(self.state / "lab.json", self.summary)

    # ---- start ---------------------------------------------------------------------------

    async def start(self):
        self.publish()
        coord_dir = self.state / "coordinator"
        shutil.rmtree(coord_dir, ignore_errors=True)      # a fresh lab: no places, no locks from before
        coord_dir.mkdir(parents=True)
        coord_log = self.state / "coordinator.log"
        with open(coord_log, "wb") as out:
            self.coordinator = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "labgrid-coordinator"), "-l", "%s:0" % LOOPBACK,
                cwd=coord_dir, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
        port = await self._wait_for_line(coord_log, re.compile(r"listening on %s:(\d+)" % re.escape(LOOPBACK)),
                                         self.coordinator, "coordinator")
        self.address = "%s:%s" % (LOOPBACK, port)
        self.publish(coordinator=self.address)
        log.info("coordinator listening on %s", self.address)

        self.session = WatchSession(self.address, asyncio.get_running_loop())
        self.session.setup_watch()
        await self.session.start()
        for name in self.places:
            await self.session.stub.AddPlace(pb2.AddPlaceRequest(name=name))
            await self.session.stub.AddPlaceMatch(pb2.AddPlaceMatchRequest(
                placename=name, pattern="%s/%s/*" % (EXPORTER_NAME, name)))
            await self.session.stub.SetPlaceTags(pb2.SetPlaceTagsRequest(
                placename=name, tags={"board": BOARD, "clock": self.clock, "online": "no"}))

        for pen in self.pens.values():
            pen.wipe()                   # a new lab starts with blank pens, as a run of make hil does
            await pen.start()

        env = dict(os.environ, LAB_PENS=str(len(self.places)), LAB_STATE=str(self.state))
        with open(self.state / "exporter.log", "wb") as out:
            self.exporter = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "exporter.py"), "-c", self.address, "-n", EXPORTER_NAME,
                "--hostname", LOOPBACK, str(EXPORTER_CONFIG), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT)
        self.tasks.append(asyncio.ensure_future(self._watch()))
        self.tasks.append(asyncio.ensure_future(self._resets()))
        self.control = await asyncio.start_unix_server(self._control, path=str(self.state / "control.sock"))

        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self._online(name) for name in self.places):
            if self.exporter.returncode is not None:
                raise RuntimeError("the exporter exited (%s): see %s" % (self.exporter.returncode,
                                                                         self.state / "exporter.log"))
            if time.monotonic() > deadline:
                raise RuntimeError("places not online within %.0f s: %s" % (START_TIMEOUT_S, ", ".join(
                    name for name in self.places if not self._online(name))))
            await asyncio.sleep(0.1)
        await sync_online_tags(self.session, self.places)
        self.publish(state="ready", children=self._children(), ready_at=time.time())
        log.info("lab ready: %s on %s", ", ".join(self.places), self.address)

    async def _wait_for_line(self, path, pattern, proc, what):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            found = pattern.search(path.read_text(errors="replace"))
            if found:
                return found.group(1)
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("%s did not start: %s" % (what, path.read_text(errors="replace")[-600:]))
            await asyncio.sleep(0.05)

    def _children(self):
        children = {"coordinator": self.coordinator.pid, "exporter": self.exporter.pid}
        for name, pen in self.pens.items():
            if pen.proc is not None:
                children[name] = pen.proc.pid
        return children

    # ---- watching ------------------------------------------------------------------------

    def _online(self, name):
        return online(self.session, name)

    async def _watch(self):
        while not self.stopping.is_set():
            await wait_for_change(self.session)
            if self.session.stopping.is_set():
                log.error("lost the coordinator: stopping the lab")
                self.stopping.set()
                return
            for name, pen in self.pens.items():
                if pen.plugged and pen.proc is not None and pen.proc.returncode is not None:
                    log.error("%s: the virtual pen exited unexpectedly (exit %s); it stays offline until "
                              "`lab/labctl.py plug %s`", name, pen.proc.returncode, name)
                    pen.plugged = False
                    pen.write_status()
            if self.exporter.returncode is not None:
                log.error("the exporter exited (%s): stopping the lab", self.exporter.returncode)
                self.stopping.set()
                return
            try:
                await sync_online_tags(self.session, self.places)
            except Exception:   # noqa: BLE001 - the next round tries again
                log.exception("updating the online tags failed")

    async def _resets(self):
        """Give the next holder of a released place a fresh, blank pen."""
        while True:
            name = await self.session.released.get()
            pen = self.pens.get(name)
            if pen is None or not self.fresh_on_release or not pen.plugged:
                continue
            log.info("%s released: resetting its virtual pen to blank", name)
            try:
                await pen.restart(wipe=True)
            except Exception:   # noqa: BLE001 - the pen stays offline, the log says why
                log.exception("%s: reset failed", name)

    # ---- control socket -----------------------------------------------------------------

    async def _control(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    reply = await self._handle(json.loads(line))
                except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()

    async def _handle(self, request):
        op = request.get("op")
        if op == "status":
            places = {}
            for name in self.places:
                place = self.session.places.get(name)
                places[name] = {"online": self._online(name), "acquired": place.acquired if place else None,
                                "tags": dict(place.tags) if place else {},
                                "pen": json.loads(self.pens[name].status_path.read_text())}
            return dict(self.summary, ok=True, places=places)
        name = request.get("place")
        if name not in self.pens:
            raise ValueError("no place %r in this lab (%s)" % (name, ", ".join(self.places)))
        pen = self.pens[name]
        if op == "replug":
            down_s = request.get("down_s", 1.0)
            if not isinstance(down_s, (int, float)) or not 0 <= down_s <= REPLUG_DOWN_MAX_S:
                raise ValueError("down_s must be a number 0-%g" % REPLUG_DOWN_MAX_S)
            old = pen.info.get("port")
            await pen.restart(down_s=down_s, wipe=bool(request.get("wipe", False)))
            return {"ok": True, "place": name, "old_port": old, "port": pen.info["port"],
                    "generation": pen.generation}
        if op == "unplug":
            async with pen.busy:
                await pen.stop()
            return {"ok": True, "place": name}
        if op == "plug":
            async with pen.busy:
                if pen.proc is None or pen.proc.returncode is not None:
                    await pen.start()
            return {"ok": True, "place": name, "port": pen.info["port"], "generation": pen.generation}
        raise ValueError("unknown op %r (status, replug, unplug, plug)" % op)

    # ---- stop ----------------------------------------------------------------------------

    async def stop(self):
        self.publish(state="stopping")
        for task in self.tasks:
            task.cancel()
        if getattr(self, "control", None) is not None:
            self.control.close()
        if self.session is not None:
            try:
                await asyncio.wait_for(self.session.stop(), 5)
                await self.session.close()
            except Exception:   # noqa: BLE001 - stopping anyway
                log.exception("closing the coordinator session")
        if self.exporter is not None:
            await terminate(self.exporter, "exporter")        # stops its ser2net processes
        for pen in self.pens.values():
            await pen.stop()
        if self.coordinator is not None:
            await terminate(self.coordinator, "coordinator")
        self.publish(state="stopped", stopped_at=time.time())
        log.info("lab stopped")


async def amain(args):
    lab = Lab(args.state, args.pens, args.clock, args.penctl, fresh_on_release=not args.keep_pens)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lab.stopping.set)
    rc = 0
    try:
        await lab.start()
        await lab.stopping.wait()
    except Exception as exc:   # noqa: BLE001 - reported in lab.json, then everything is stopped
        log.exception("lab failed")
        lab.summary["error"] = str(exc)
        rc = 1
    finally:
        await lab.stop()
        if rc:
            lab.publish(state="failed")
    return rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--pens", required=True, type=int)
    parser.add_argument("--clock", required=True, choices=CLOCKS)
    parser.add_argument("--penctl", required=True)
    parser.add_argument("--keep-pens", action="store_true", help="do not reset a pen when its place is released")
    args = parser.parse_args(argv)
    args.state = args.state.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(args.state / "supervisor.log")])
    if os.environ.get(MARKER) != str(args.state):
        parser.error("start the supervisor through lab/labctl.py start (it marks the lab's processes)")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
