# The audit trail (S20, docs/clinical.md "Audit trail"): every privileged operation, refused
# authentication, clock change, ceiling change and interval override, with pen time and wall
# time (utc_s, null while the wall clock is unset).
#
# Bounded: a ring of AUDIT_PAGES records ("audit-0" ...) of AUDIT_PAGE_ENTRIES entries each;
# entry N lives in page (N // AUDIT_PAGE_ENTRIES) % AUDIT_PAGES. Starting a page overwrites the
# oldest one, so the newest 57-64 entries are kept in full. Nothing goes silently:
# - ids are consecutive: entries before `oldest` were overwritten (their number is `oldest`);
# - every page carries `totals`, the count per kind of every entry ever written, so overwritten
#   entries stay counted by kind;
# - an entry that could not be written counts in `lost`, persisted with the next page written
#   and reported in info; the caller refuses the operation it was for (write-ahead: the entry
#   is written before the change it records).
# A page is rewritten whole (pen.store: temp + rename, CRC), so a power cut keeps the old or new.
from . import limits as lim
from .store import StoreError

_PREFIX = "audit-"


class Audit:
    def __init__(self, store):
        self.store = store
        self.next_id = 0
        self.totals = {}
        self.lost = 0
        self.corrupt_pages = 0
        self.page = []             # entries of the page that holds the newest entry
        self._load()

    def _page_name(self, entry_id):
        return _PREFIX + str((entry_id // lim.AUDIT_PAGE_ENTRIES) % lim.AUDIT_PAGES)

    def _read_page(self, index):
        """The page's record if it is there and well-formed, else None."""
        record = self.store.read(_PREFIX + str(index))
        if record is None:
            return None
        entries = record.get("entries")
        if type(entries) is not list or type(record.get("totals")) is not dict \
                or type(record.get("lost")) is not int:
            return None
        for entry in entries:
            if type(entry) is not dict or type(entry.get("id")) is not int:
                return None
        return record

    def _load(self):
        newest = None
        for index in range(lim.AUDIT_PAGES):
            record = self._read_page(index)
            if record is None:
                if self.store.exists(_PREFIX + str(index)):
                    # Its entries are gone (flash damage or tampering, not a power cut: writes
                    # are atomic); reported in info as audit_corrupt_pages.
                    self.corrupt_pages += 1
                continue
            if not record["entries"]:
                continue
            last_id = record["entries"][-1]["id"]
            if newest is None or last_id > newest["entries"][-1]["id"]:
                newest = record
        if newest is not None:
            self.page = newest["entries"]
            self.next_id = self.page[-1]["id"] + 1
            self.totals = newest["totals"]
            self.lost = newest["lost"]

    def oldest(self):
        """Id of the oldest entry the ring can still hold (entries before it were overwritten)."""
        kept = (lim.AUDIT_PAGES - 1) * lim.AUDIT_PAGE_ENTRIES + self.next_id % lim.AUDIT_PAGE_ENTRIES
        if self.next_id % lim.AUDIT_PAGE_ENTRIES == 0:
            kept = lim.AUDIT_PAGES * lim.AUDIT_PAGE_ENTRIES
        first = self.next_id - kept
        return first if first > 0 else 0

    def _write(self, page, totals):
        self.store.write(self._page_name(page[-1]["id"]),
                         {"entries": page, "totals": totals, "lost": self.lost})

    def append(self, entry):
        """Write `entry` (a dict with "kind", "t_ms", "utc_s" ...) as the newest; returns its id.
        StoreError if it could not be written (counted in `lost`)."""
        entry["id"] = self.next_id
        kind = entry["kind"]
        totals = dict(self.totals)
        totals[kind] = totals.get(kind, 0) + 1
        page = [] if self.next_id % lim.AUDIT_PAGE_ENTRIES == 0 else list(self.page)
        page.append(entry)
        try:
            self._write(page, totals)
        except StoreError:
            self.lost += 1
            raise
        self.page = page
        self.totals = totals
        self.next_id += 1
        return entry["id"]

    def coalesce(self, entry, same):
        """Like append, but when the newest entry has the same kind and the same values for the
        fields in `same`, count this one in its "count" instead of adding an entry (repeated
        refusals while locked would otherwise flood the ring)."""
        if self.page:
            newest = self.page[-1]
            if newest.get("kind") == entry["kind"] and type(newest.get("count")) is int:
                matches = True
                for name in same:
                    if newest.get(name) != entry.get(name):
                        matches = False
                if matches:
                    updated = dict(newest)
                    updated["count"] = newest["count"] + 1
                    updated["last_t_ms"] = entry["t_ms"]
                    updated["last_utc_s"] = entry["utc_s"]
                    page = self.page[:-1] + [updated]
                    totals = dict(self.totals)
                    totals[entry["kind"]] = totals.get(entry["kind"], 0) + 1
                    try:
                        self._write(page, totals)
                    except StoreError:
                        self.lost += 1
                        raise
                    self.page = page
                    self.totals = totals
                    return updated["id"]
        entry["count"] = 1
        return self.append(entry)

    def read(self, start, count, max_bytes, size_of):
        """Entries with id >= start, oldest first, at most `count` and about `max_bytes`
        (size_of(entry) each; at least one). Returns (entries, next id to ask for)."""
        first = self.oldest()
        entry_id = start if start > first else first
        out = []
        size = 0
        cached = {}
        while entry_id < self.next_id and len(out) < count:
            name = self._page_name(entry_id)
            if name not in cached:
                if entry_id // lim.AUDIT_PAGE_ENTRIES == (self.next_id - 1) // lim.AUDIT_PAGE_ENTRIES:
                    cached[name] = self.page
                else:
                    index = (entry_id // lim.AUDIT_PAGE_ENTRIES) % lim.AUDIT_PAGES
                    record = self._read_page(index)
                    cached[name] = record["entries"] if record is not None else []
            found = None
            for entry in cached[name]:
                if entry["id"] == entry_id:
                    found = entry
            if found is not None:
                size += size_of(found)
                if out and size > max_bytes:
                    break
                out.append(found)
            entry_id += 1
        return out, entry_id
