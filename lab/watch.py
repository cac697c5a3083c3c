"""The `online` tag of a lab's places, kept from their resources' availability (run in .venv-lab).

labgrid's coordinator allocates reservations by tags alone, whatever the state of a place's
resources. The lab therefore keeps a tag `online=yes|no` on each of its places: yes when the place
matches at least one resource and every matched resource is available (the pen is plugged in, its
exporter runs). The HIL harness reserves with `online=yes`, so a reservation is never handed a
place whose pen is offline.

The virtual lab's supervisor runs this itself. A rack of real pens runs it beside its coordinator:

    .venv-lab/bin/python lab/watch.py -x HOST:PORT --place pen-1 --place pen-2 ...
"""
import argparse
import asyncio
import logging
import signal
import sys

from labgrid.remote.client import ClientSession
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
from lgcommon import offline_reason

WATCH_PERIOD_S = 1.0      # re-check at least this often (an exporter that dies sends no update)
log = logging.getLogger("lab")


class WatchSession(ClientSession):
    """labgrid's client session, telling its owner about every change (and every place release)."""

    def setup_watch(self):
        self.changed = asyncio.Event()
        self.released = asyncio.Queue()

    async def on_resource_changed(self, exporter, group_name, resource_name, resource):
        await super().on_resource_changed(exporter, group_name, resource_name, resource)
        self.changed.set()

    async def on_place_changed(self, place_pb2):
        old = self.places.get(place_pb2.name)
        was = old.acquired if old is not None else None
        await super().on_place_changed(place_pb2)
        if was and not self.places[place_pb2.name].acquired:
            self.released.put_nowait(place_pb2.name)
        self.changed.set()


def online(session, name):
    place = session.places.get(name)
    return place is not None and offline_reason(session, place) is None


async def sync_online_tags(session, names):
    """Set `online` on each of these places from its resources; only a tag that changes is written."""
    came_online = False
    for name in names:
        place = session.places.get(name)
        if place is None:
            continue
        want = "yes" if online(session, name) else "no"
        if place.tags.get("online") != want:
            await session.stub.SetPlaceTags(pb2.SetPlaceTagsRequest(placename=name, tags={"online": want}))
            log.info("%s: online=%s", name, want)
            came_online |= want == "yes"
    if came_online:
        # labgrid schedules waiting reservations when one is created, a place acquired or
        # released, or every 15 s. A tag change is none of these: create and cancel a
        # reservation that matches nothing, so a reservation waiting for this place gets it now.
        reply = await session.stub.CreateReservation(pb2.CreateReservationRequest(
            filters={"main": pb2.Reservation.Filter(filter={"lab_schedule": "now"})}, prio=0.0))
        await session.stub.CancelReservation(pb2.CancelReservationRequest(token=reply.reservation.token))


async def wait_for_change(session):
    """Until something changed on the coordinator, or WATCH_PERIOD_S passed."""
    try:
        await asyncio.wait_for(session.changed.wait(), WATCH_PERIOD_S)
    except asyncio.TimeoutError:
        pass
    session.changed.clear()


async def amain(address, names):
    session = WatchSession(address, asyncio.get_running_loop())
    session.setup_watch()
    await session.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    unknown = [name for name in names if name not in session.places]
    if unknown:
        log.warning("no such place(s) on %s yet: %s", address, ", ".join(unknown))
    while not stop.is_set():
        if session.stopping.is_set():
            log.error("lost the coordinator at %s", address)
            return 3
        await sync_online_tags(session, names)
        await wait_for_change(session)
    await session.stop()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-x", "--coordinator", required=True, metavar="HOST:PORT")
    parser.add_argument("--place", action="append", required=True, help="a place to keep the tag of (repeat)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(amain(args.coordinator, args.place))


if __name__ == "__main__":
    sys.exit(main())
