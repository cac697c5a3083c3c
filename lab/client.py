"""The HIL harness's labgrid client (run in .venv-lab): reserve, acquire, resolve and release a place.

    client.py -x HOST:PORT claim --tags board=sim,clock=fast --holder PID --run ID --worker NAME [--timeout S]
    client.py -x HOST:PORT resolve --place NAME
    client.py -x HOST:PORT release --place NAME --token TOKEN --run ID
    client.py -x HOST:PORT places [--tags k=v,...]

Prints one JSON object on stdout (`"error"` on failure) and progress on stderr. Exit status: 0 ok,
1 no place (timeout, held, offline: the message says which place and by whom), 2 usage,
3 the coordinator cannot be reached.

`claim`:
1. **Stale locks**: a place with the tags, acquired by this host/user for a HIL run whose process
   no longer exists (killed), is released and its reservation cancelled: the run that held it
   cannot. A place held by anyone else is never touched; if nothing frees up in time, the message
   lists each place with its holder and how to release it.
2. **Reservation** by tags plus `online=yes` (the lab keeps that tag, docs/lab.md), polled until a
   place is allocated.
3. **Offline check** before acquiring, and again after: a place whose resources are not all
   available is given back and the reservation made again; a place is never acquired while its pen
   is offline.
4. **Acquire**, write the holder into the place's comment (`hil-lab run=... holder=HOST:BOOT:PID:START
   ...`: what step 1 of a later run reads), and wait until the exporter serves the pen (its port).
On any failure, what was reserved or acquired is given back before exiting.
"""
import argparse
import datetime
import json
import os
import re
import signal
import socket
import sys
import time

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")    # before grpc loads: no C-core log lines on stderr

from labgrid.remote.client import start_session
from labgrid.remote.common import Reservation, ReservationState
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
from lgcommon import PEN_RESOURCE, RIG_RESOURCE, offline_reason, place_resources

POLL_S = 0.25
SERVE_TIMEOUT_S = 15.0        # after acquiring: the exporter must publish the pen's port within this
COMMENT_RE = re.compile(r"^hil-lab run=(?P<run>\S+) worker=(?P<worker>\S+) "
                        r"holder=(?P<host>[^:\s]+):(?P<boot>[0-9a-f]+):(?P<pid>\d+):(?P<start>\d+) "
                        r"since=(?P<since>\S+)$")
EXIT_NO_PLACE = 1
EXIT_COORDINATOR = 3


class NoPlace(Exception):
    """No place can be given (timeout, held, offline): the message says which and why."""


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as handle:
        return handle.read().strip().replace("-", "")[:12]


def process_start(pid):
    """The start time of process `pid` (clock ticks after boot), or None if there is none."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])         # field 22 of stat, counted after the command name


def holder_comment(run, worker, pid):
    start = process_start(pid)
    if start is None:
        raise SystemExit("client: holder pid %d is not running" % pid)
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return "hil-lab run=%s worker=%s holder=%s:%s:%d:%d since=%s" % (
        run, worker, socket.gethostname(), boot_id(), pid, start, since)


def holder_state(comment):
    """("alive"|"dead"|"elsewhere"|"none", parsed comment or None) for a place's comment."""
    found = COMMENT_RE.match(comment or "")
    if not found:
        return "none", None
    info = found.groupdict()
    if info["host"] != socket.gethostname():
        return "elsewhere", info
    if info["boot"] != boot_id():
        return "dead", info            # this machine rebooted since
    start = process_start(int(info["pid"]))
    return ("alive" if start == int(info["start"]) else "dead"), info


def parse_tags(text):
    tags = {}
    for pair in filter(None, (text or "").split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]+", key) or not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
            raise SystemExit("client: bad tag %r (key=value; key: a-z, 0-9, _; value: letters, digits, _ . : -)"
                             % pair)
        tags[key] = value
    return tags


class Client:
    def __init__(self, address):
        self.address = address
        try:
            self.session = start_session(address)
        except Exception as exc:   # noqa: BLE001 - labgrid raises several kinds
            raise ConnectionError("cannot reach the labgrid coordinator at %s: %s (is the lab running? "
                                  "`make lab`)" % (address, exc)) from None
        self.me = "%s/%s" % (self.session.gethostname(), self.session.getuser())

    def call(self, coro):
        return self.session.loop.run_until_complete(coro)

    def sync(self):
        self.call(self.session.sync_with_coordinator())

    def close(self):
        try:
            self.call(self.session.stop())
            self.call(self.session.close())
        except Exception:   # noqa: BLE001 - exiting anyway
            pass

    def matching(self, tags):
        """The places whose tags include `tags` (and `name`, as labgrid's scheduler reads it), by name."""
        return {name: place for name, place in sorted(self.session.places.items())
                if all(dict(place.tags, name=name).get(k) == v for k, v in tags.items())}

    # ---- describing places -----------------------------------------------------------------

    def describe(self, place):
        """One line: what keeps this place from being allocated, and how to free it."""
        name = place.name
        if place.acquired:
            since = datetime.datetime.fromtimestamp(place.changed).strftime("%H:%M:%S")
            state, info = holder_state(place.comment)
            who = "%s: acquired by %s (since %s)" % (name, place.acquired, since)
            if state == "alive":
                return "%s for HIL run %s, worker %s, pid %s, which is still running" % (
                    who, info["run"], info["worker"], info["pid"])
            if state == "elsewhere":
                return "%s for HIL run %s on host %s (pid %s): only that host can tell whether it still runs; " \
                       "release it there, or `labgrid-client -p %s release --kick` if you are sure" % (
                           who, info["run"], info["host"], info["pid"], name)
            if state == "dead":
                return "%s for HIL run %s (pid %s), which no longer runs, by another user: " \
                       "`labgrid-client -p %s release --kick` frees it" % (who, info["run"], info["pid"], name)
            return "%s, not by the HIL harness (comment %r): its owner releases it with " \
                   "`labgrid-client -p %s release` (or --kick)" % (who, place.comment, name)
        reason = offline_reason(self.session, place)
        if reason or place.tags.get("online") != "yes":
            return "%s: offline (%s)" % (name, reason or "tag online=%s" % place.tags.get("online"))
        if place.reservation:
            return "%s: allocated to reservation %s, not acquired yet (a reservation nobody polls " \
                   "expires after 60 s)" % (name, place.reservation)
        return "%s: free" % name

    def describe_all(self, tags):
        """describe() of every place with these tags (whatever its online tag)."""
        return [self.describe(p) for p in self.matching({k: v for k, v in tags.items() if k != "online"}).values()]

    def place_json(self, place):
        return {"name": place.name, "tags": dict(place.tags), "acquired": place.acquired,
                "comment": place.comment, "reservation": place.reservation,
                "offline": offline_reason(self.session, place),
                "resources": {n: {"cls": r.cls, "avail": r.avail, "params": r.params}
                              for n, r in place_resources(self.session, place).items()}}

    # ---- claim ------------------------------------------------------------------------------

    def reclaim_stale(self, tags):
        reclaimed = []
        for name, place in self.matching({k: v for k, v in tags.items() if k != "online"}).items():
            if not place.acquired or place.acquired != self.me:
                continue
            state, info = holder_state(place.comment)
            if state != "dead":
                continue
            token = place.reservation
            self.call(self.session.stub.ReleasePlace(pb2.ReleasePlaceRequest(placename=name)))
            if token:
                try:
                    self.call(self.session.stub.CancelReservation(pb2.CancelReservationRequest(token=token)))
                except Exception:   # noqa: BLE001 - it may have expired meanwhile
                    pass
            note = "reclaimed %s: it was held for HIL run %s (worker %s, pid %s, since %s), which no longer runs" % (
                name, info["run"], info["worker"], info["pid"], info["since"])
            print("lab: " + note, file=sys.stderr, flush=True)
            reclaimed.append(note)
        if reclaimed:
            self.sync()
        return reclaimed

    def reserve(self, tags):
        reply = self.call(self.session.stub.CreateReservation(pb2.CreateReservationRequest(
            filters={"main": pb2.Reservation.Filter(filter=tags)}, prio=0.0)))
        return reply.reservation.token

    def poll(self, token):
        reply = self.call(self.session.stub.PollReservation(pb2.PollReservationRequest(token=token)))
        return Reservation.from_pb2(reply.reservation)

    def cancel(self, token):
        try:
            self.call(self.session.stub.CancelReservation(pb2.CancelReservationRequest(token=token)))
        except Exception:   # noqa: BLE001 - gone already
            pass

    def release(self, name):
        self.call(self.session.stub.ReleasePlace(pb2.ReleasePlaceRequest(placename=name)))
        self.sync()

    def claim(self, tags, comment, timeout):
        reclaimed = self.reclaim_stale(tags)
        deadline = time.monotonic() + timeout
        token = self.reserve(tags)
        acquired = None
        told = set()
        try:
            while True:
                if time.monotonic() > deadline:
                    self.sync()
                    raise NoPlace("no place with tags %s became free within %.0f s:\n  %s" % (
                        " ".join("%s=%s" % kv for kv in sorted(tags.items())), timeout,
                        "\n  ".join(self.describe_all(tags)) or "(no place has these tags)"))
                res = self.poll(token)
                if res.state in (ReservationState.expired, ReservationState.invalid):
                    raise NoPlace("reservation %s became %s" % (token, res.state.name))
                if res.state is not ReservationState.allocated:
                    waiting = tuple(self.describe_all(tags))
                    if waiting not in told:
                        told.add(waiting)
                        print("lab: waiting for a place:\n  " + "\n  ".join(waiting), file=sys.stderr, flush=True)
                    time.sleep(POLL_S)
                    continue
                name = res.allocations["main"][0]
                self.sync()
                reason = offline_reason(self.session, self.session.places[name])
                if reason is None:
                    self.call(self.session.stub.AcquirePlace(pb2.AcquirePlaceRequest(placename=name)))
                    acquired = name
                    self.call(self.session.stub.SetPlaceComment(pb2.SetPlaceCommentRequest(
                        placename=name, comment=comment)))
                    served = self.wait_served(name, deadline)
                    if served is not None:
                        return dict(served, token=token, reclaimed=reclaimed, comment=comment)
                    self.release(name)
                    acquired = None
                    reason = offline_reason(self.session, self.session.places[name]) or "its port was not served"
                # Offline between the lab's tag and now: give it back, and ask again.
                print("lab: %s was allocated but its pen is offline (%s): not using it" % (name, reason),
                      file=sys.stderr, flush=True)
                self.cancel(token)
                time.sleep(1.0)
                token = self.reserve(tags)
        except BaseException:
            if acquired:
                try:
                    self.release(acquired)
                except Exception:   # noqa: BLE001 - the next run reclaims it
                    pass
            self.cancel(token)
            raise

    def wait_served(self, name, deadline):
        """The pen's (and rig's) address once the exporter serves them; None if it went offline."""
        limit = min(deadline, time.monotonic() + SERVE_TIMEOUT_S)
        while True:
            self.sync()
            described = self.resolve(name)
            if described["offline"]:
                return None
            if described["pen"] and described["pen"]["port"] and (
                    described["rig"] is None or described["rig"]["port"]):
                return described
            if time.monotonic() > limit:
                return None
            time.sleep(0.1)

    # ---- resolve / release ------------------------------------------------------------------

    def resolve(self, name):
        place = self.session.places.get(name)
        if place is None:
            raise NoPlace("no place %s on %s" % (name, self.address))
        resources = place_resources(self.session, place)
        out = {"place": name, "tags": dict(place.tags), "acquired": place.acquired, "comment": place.comment,
               "offline": offline_reason(self.session, place)}
        for key in (PEN_RESOURCE, RIG_RESOURCE):
            resource = resources.get(key)
            if resource is None or resource.cls != "NetworkSerialPort":
                out[key] = None
                continue
            params = resource.params
            out[key] = {"host": params.get("host"), "port": params.get("port"),
                        "protocol": params.get("protocol", "rfc2217"), "avail": resource.avail,
                        "serial": (params.get("extra") or {}).get("serial"),
                        "generation": (params.get("extra") or {}).get("generation")}
        if out[PEN_RESOURCE] is None:
            raise NoPlace("place %s has no NetworkSerialPort named %r (docs/lab.md)" % (name, PEN_RESOURCE))
        return out

    def release_claim(self, name, token, run):
        place = self.session.places.get(name)
        released = False
        reason = None
        if place is None:
            reason = "no such place"
        elif not place.acquired:
            reason = "not acquired"
        elif place.acquired != self.me or (holder_state(place.comment)[1] or {}).get("run") != run:
            reason = "held by %s (%s), not by this run" % (place.acquired, place.comment)
        else:
            self.call(self.session.stub.SetPlaceComment(pb2.SetPlaceCommentRequest(placename=name, comment="")))
            self.release(name)
            released = True
        if token:
            self.cancel(token)
        return {"place": name, "released": released, "reason": reason}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-x", "--coordinator", required=True, metavar="HOST:PORT")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("claim")
    p.add_argument("--tags", required=True)
    p.add_argument("--holder", type=int, required=True, help="pid of the process that holds the place")
    p.add_argument("--run", required=True)
    p.add_argument("--worker", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("resolve")
    p.add_argument("--place", required=True)
    p = sub.add_parser("release")
    p.add_argument("--place", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--run", required=True)
    p = sub.add_parser("places")
    p.add_argument("--tags", default="")
    args = parser.parse_args(argv)
    for name in ("run", "worker"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", getattr(args, name, None) or "x"):
            parser.error("--%s: letters, digits, _ . - only" % name)
    if getattr(args, "timeout", 1) <= 0:
        parser.error("--timeout must be positive")

    # SIGTERM (the harness giving up on us) unwinds like Ctrl-C: what was reserved is given back.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        client = Client(args.coordinator)
    except ConnectionError as exc:
        print(json.dumps({"error": str(exc)}))
        return EXIT_COORDINATOR
    try:
        if args.command == "claim":
            tags = dict(parse_tags(args.tags), online="yes")
            out = client.claim(tags, holder_comment(args.run, args.worker, args.holder), args.timeout)
        elif args.command == "resolve":
            out = client.resolve(args.place)
        elif args.command == "release":
            out = client.release_claim(args.place, args.token, args.run)
        else:
            tags = parse_tags(args.tags)
            out = {"me": client.me, "places": [client.place_json(p) for p in client.matching(tags).values()]}
        print(json.dumps(out))
        return 0
    except NoPlace as exc:
        print(json.dumps({"error": str(exc)}))
        return EXIT_NO_PLACE
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
