# The pen's persistent state in flash (docs/design.md §2.4), on core 0: lockout, used
# cartridges, profiles, the fault latch (S11) and the session / event log ring. Every
# change goes through one helper (commit): set the new values, write the record, and on
# a failed write put the old values back, so RAM never claims what flash does not hold.
# Writes are refused unless the control core says the motor and the UV LED are off
# (`may_write`): on the RP2040 a flash write stops both cores.
from . import limits as lim
from .control import END_INTERRUPTED, END_NAMES, END_POWER_LOSS, F_INTERNAL, F_NONE, FAULT_NAMES
from .profiles import ProfileError, check_profile
from .store import StoreError

REC_LOCKOUT = "lockout"
REC_CARTRIDGES = "cartridges"
REC_PROFILES = "profiles"
REC_FAULT = "fault"
LOG_PREFIX = "log-"
LOG_PAGE_MAX = 4           # log entries per response frame
_LOG_PAGE_BYTES = 1600     # ... and at most this much of it (FRAME_MAX with room for the envelope)


class Records:
    def __init__(self, store, may_write, dumps):
        self.store = store
        self._may_write = may_write   # () -> True while flash writes are allowed
        self._dumps = dumps           # the wire's canonical JSON (sizes log pages)
        self.unlocked = False
        self.cycles = 0
        self.used = []
        self.cartridges_ok = True
        self.profiles = []
        self.active = None
        self.profiles_dropped = 0     # stored profiles that failed validation at load (S13)
        self.fault = F_NONE           # latched fault cause read from flash (F_NONE: none)
        self.log_next = 0
        self.errors = 0               # writes that failed (info counter)

    # ---- load ----

    def load(self):
        store = self.store
        lockout = store.read(REC_LOCKOUT)
        # Missing or corrupt lockout state reads as LOCKED (S7).
        self.unlocked = bool(lockout and lockout.get("unlocked") is True)
        cycles = lockout.get("cycles", 0) if lockout else 0
        self.cycles = cycles if type(cycles) is int and cycles >= 0 else 0
        carts = store.read(REC_CARTRIDGES)
        used = carts.get("used") if carts else []
        self.cartridges_ok = (carts is not None or not store.exists(REC_CARTRIDGES)) and isinstance(used, list)
        self.used = used if isinstance(used, list) else []
        profiles = store.read(REC_PROFILES)
        # A corrupt profiles record yields no usable profile (S13); each profile is checked
        # again before use (session_start), and only valid ones are listed.
        listed = profiles.get("profiles") if profiles else None
        checked = [_valid_profile(p) for p in listed] if isinstance(listed, list) else []
        self.profiles = [p for p in checked if p is not None]
        self.profiles_dropped = (len(listed) if isinstance(listed, list) else 0) - len(self.profiles)
        active = profiles.get("active") if profiles else None
        self.active = active if any(p["name"] == active for p in self.profiles) else None
        # The fault latch (S11): a corrupt record reads as a latched INTERNAL fault.
        self.fault = F_NONE
        if store.exists(REC_FAULT):
            latch = store.read(REC_FAULT)
            if latch is None:
                self.fault = F_INTERNAL
            elif latch.get("latched") is True:
                name = latch.get("fault")
                self.fault = FAULT_NAMES.index(name) if name in FAULT_NAMES and name != "NONE" else F_INTERNAL
        self.log_next = 0
        for slot in range(lim.LOG_MAX_ENTRIES):
            entry = store.read(LOG_PREFIX + str(slot))
            if entry and type(entry.get("id")) is int and entry["id"] >= self.log_next:
                self.log_next = entry["id"] + 1

    # ---- writes ----

    def write(self, name, value):
        # Flash writes only while the motor and the UV LED are off (docs/design.md §2).
        if not self._may_write():
            raise StoreError("refusing a flash write while the motor or the UV LED may be on")
        try:
            self.store.write(name, value)
        except StoreError:
            self.errors += 1
            raise

    def commit(self, record, **changes):
        """Set the attributes in `changes`, write `record` (lockout, cartridges or profiles)
        from them; if the write fails, restore the previous values and re-raise."""
        previous = {}
        for name in changes:
            previous[name] = getattr(self, name)
        for name in changes:
            setattr(self, name, changes[name])
        try:
            self.write(record, self._value(record))
        except StoreError:
            for name in previous:
                setattr(self, name, previous[name])
            raise

    def _value(self, record):
        if record == REC_LOCKOUT:
            return {"unlocked": self.unlocked, "cycles": self.cycles}
        if record == REC_CARTRIDGES:
            return {"used": self.used}
        if record == REC_PROFILES:
            return {"profiles": self.profiles, "active": self.active}
        raise ValueError("unknown record %s" % record)

    def latch_fault(self, cause, t_ms):
        """S11: the fault goes to flash before anything else is done about it."""
        self.write(REC_FAULT, {"latched": True, "fault": FAULT_NAMES[cause], "t_ms": t_ms})
        self.fault = cause

    def clear_fault(self, t_ms):
        self.write(REC_FAULT, {"latched": False, "fault": "NONE", "t_ms": t_ms})
        self.fault = F_NONE

    # ---- log ----

    def log(self, entry):
        """Write a log entry (a new one gets the next id; an entry with an id is rewritten)."""
        if "id" not in entry:
            entry["id"] = self.log_next
            self.log_next += 1
        self.write(LOG_PREFIX + str(entry["id"] % lim.LOG_MAX_ENTRIES), entry)
        return entry

    def log_safely(self, entry):
        try:
            self.log(entry)
            return True
        except StoreError:
            return False          # counted in errors; reported in info

    def close_interrupted(self):
        """S14: a session entry still INTERRUPTED at boot ended with a power cut (its
        duration is not known). Returns the entries closed."""
        closed = []
        first = max(self.log_next - lim.LOG_MAX_ENTRIES, 0)
        for entry_id in range(first, self.log_next):
            entry = self.store.read(LOG_PREFIX + str(entry_id % lim.LOG_MAX_ENTRIES))
            if entry and entry.get("id") == entry_id and entry.get("end") == END_INTERRUPTED:
                entry["end"] = END_NAMES[END_POWER_LOSS]
                entry["duration_ms"] = None
                entry["strokes"] = None
                if self.log_safely(entry):
                    closed.append(entry)
        return closed

    def log_page(self, start, count):
        count = min(count, LOG_PAGE_MAX)
        first = max(start, self.log_next - lim.LOG_MAX_ENTRIES, 0)
        entries = []
        size = 0
        entry_id = first
        while entry_id < self.log_next and len(entries) < count:
            entry = self.store.read(LOG_PREFIX + str(entry_id % lim.LOG_MAX_ENTRIES))
            if entry is not None and entry.get("id") == entry_id:
                size += len(self._dumps(entry)) + 2
                if entries and size > _LOG_PAGE_BYTES:
                    break                   # the rest goes in the next page
                entries.append(entry)
            entry_id += 1
        return entries, entry_id

    # ---- profiles ----

    def find_profile(self, name):
        for profile in self.profiles:
            if profile["name"] == name:
                return profile
        return None


def _valid_profile(profile):
    """The stored profile if it passes validation unchanged, else None (S13)."""
    try:
        return profile if check_profile(profile) == profile else None
    except (ProfileError, AttributeError, TypeError):
        return None


class GuardedStore:
    """The Store as the clinical records see it (pen.clinical, auth, intervals, audit): reads
    as they are, writes only while the control core says the motor and the UV LED are off
    (docs/design.md §2: a flash write stops both cores on the RP2040), failures counted with
    the application's other store errors."""

    def __init__(self, records):
        self._records = records
        self._store = records.store

    def exists(self, name):
        return self._store.exists(name)

    def read(self, name):
        return self._store.read(name)

    def write(self, name, value):
        self._records.write(name, value)
