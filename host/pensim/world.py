"""The physical world around the virtual pen: the cartridge in it and the dock lid.

The world outlives the interpreter. The rig changes it (`cartridge`, `lid`, `clear_injections`,
the `cartridge_out` and `lid_open` injections), the pen changes one thing in it (the write-once
"used" mark on the cartridge, docs/design.md S19), and it is replayed to the sim board after each
start, so a power cut or a reset does not put a fresh cartridge back or close an open lid.
"""

from __future__ import annotations

from penctl.firmware.boards import rigproto

# The plant's name for the cartridge's used mark in its reports (measure, the final plant state).
USED_KEY = "cartridge_used"
# Injections that change the world rather than the pen (names from rigproto.FAULTS).
FAULT_LID_OPEN = "lid_open"
FAULT_CARTRIDGE_OUT = "cartridge_out"
if FAULT_LID_OPEN not in rigproto.FAULTS or FAULT_CARTRIDGE_OUT not in rigproto.FAULTS:
    raise ImportError("pensim.world: rigproto.FAULTS no longer has lid_open / cartridge_out")


def _normal_id(cartridge_id: str | None) -> str | None:
    # The cartridge reader gives upper-case hex (docs/board-interface.md).
    return None if cartridge_id is None else cartridge_id.upper()


class World:
    def __init__(self) -> None:
        self.cartridge_known = False    # False until the rig says: the sim board's own default
        self.cartridge: str | None = None
        # Every cartridge marked used (S19), by ID: a mark is in the cartridge's own memory, so
        # it stays with that cartridge when another is inserted and this one comes back later.
        self.marked: set[str] = set()
        self.lid_closed = True          # the pen sits in its closed dock

    def apply(self, req: dict) -> None:
        """What a rig request (already checked by rigproto.check_request) does to the world,
        whether or not the firmware is running to see it."""
        op = req["op"]
        if op == rigproto.OP_CARTRIDGE:
            self.cartridge_known = True
            self.cartridge = _normal_id(req["id"])
            if self.cartridge is not None and req.get("used", False) is True:
                self.marked.add(self.cartridge)      # "used": false never removes a mark
        elif op == rigproto.OP_LID:
            self.lid_closed = req["closed"]
        elif op == rigproto.OP_CLEAR_INJECTIONS:
            self.lid_closed = True

    def applied_by_plant(self, req: dict, answer: dict) -> None:
        """An injection the plant carried out that changes the world."""
        if req["op"] != rigproto.OP_INJECT or not answer.get("ok"):
            return
        if req["fault"] == FAULT_LID_OPEN:
            self.lid_closed = False
        elif req["fault"] == FAULT_CARTRIDGE_OUT:
            self.cartridge_known = True
            self.cartridge = None

    def learn(self, report: dict) -> None:
        """Take the used mark from a plant report (a measure answer, the final plant state): the
        pen writes it on the cartridge, and the cartridge keeps it across power cuts."""
        used = report.get(USED_KEY)
        cartridge = report.get("cartridge")
        if (isinstance(used, bool) and isinstance(cartridge, str) and self.cartridge is not None
                and _normal_id(cartridge) == self.cartridge):
            if used:
                self.marked.add(self.cartridge)    # write-once: a mark never goes

    @property
    def cartridge_used(self) -> bool:
        return self.cartridge is not None and self.cartridge in self.marked

    def replay(self) -> list[dict]:
        """Requests that put a freshly started sim board into this world."""
        reqs: list[dict] = []
        if self.cartridge_known:
            reqs.append({"op": rigproto.OP_CARTRIDGE, "id": self.cartridge, "used": self.cartridge_used})
        if not self.lid_closed:
            reqs.append({"op": rigproto.OP_LID, "closed": False})
        return reqs

    def fields(self) -> dict:
        return {"cartridge": self.cartridge, USED_KEY: self.cartridge_used, "lid_closed": self.lid_closed}
