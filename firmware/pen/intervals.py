# Sessions weeks apart (S18, docs/clinical.md "Wall clock and intervals"): the pen's wall
# clock and the `interval` record.
#
# The wall clock is an offset from elapsed pen time, set from the laptop (clock_set, UTC
# seconds). It lives in RAM only: after a power cut it is unset until set again. The record
# (pen.store rules: temp + rename, CRC) holds, per profile name, the wall time of the last
# session that may have driven the motor, the pending one-shot overrides, and `newest_s`: the
# newest wall time the pen has recorded (clock sets, session starts). Setting the clock back
# more than an hour before max(current wall time, newest_s) needs the clinician key.
#
# Records are built as new dicts and swapped in only after the write succeeded.
from . import limits as lim
from . import proto
from .auth import ClinicalError

REC_INTERVAL = "interval"


def check_min_interval_days(days):
    """Profile field min_interval_days: an integer 0-90 (S18). Returns it; ProfileError if not."""
    from .profiles import ProfileError   # here, not at the top: pen.profiles imports this module
    if type(days) is not int or days < 0 or days > lim.INTERVAL_DAYS_MAX:
        raise ProfileError(proto.E_INTERVAL_RANGE, "min_interval_days",
                           "min_interval_days must be an integer 0-%d" % lim.INTERVAL_DAYS_MAX)
    return days


def utc_text(utc_s):
    """'YYYY-MM-DD HH:MM:SS UTC' for seconds since 1970 (civil-from-days, integers only: the
    pen's time module need not have gmtime with this epoch)."""
    days = utc_s // lim.DAY_S
    rem = utc_s - days * lim.DAY_S
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return "%04d-%02d-%02d %02d:%02d:%02d UTC" % (year, month, day, rem // 3600, rem % 3600 // 60, rem % 60)


def _fresh():
    return {"last": {}, "override": [], "newest_s": 0, "pending": None}


def _copy(record):
    copy = dict(record)
    copy["last"] = dict(record["last"])
    copy["override"] = list(record["override"])
    return copy


def _valid(record):
    if record is None or type(record.get("last")) is not dict or type(record.get("override")) is not list \
            or type(record.get("newest_s")) is not int:
        return False
    for name in record["last"]:
        if type(record["last"][name]) is not int:
            return False
    pending = record.get("pending")
    return pending is None or (type(pending) is dict and type(pending.get("profile")) is str)


class Intervals:
    def __init__(self, store):
        self.store = store
        self.base_s = None         # wall clock: UTC base_s at elapsed pen time base_ms
        self.base_ms = 0
        record = store.read(REC_INTERVAL)
        if _valid(record):
            self.record = record
        elif record is None and not store.exists(REC_INTERVAL):
            self.record = _fresh()
        else:
            self.record = None     # unreadable: interval sessions refused, clock_set needs the key

    def _intact(self):
        """The record; STORE_CORRUPT if it is unreadable."""
        record = self.record
        if record is None:
            raise ClinicalError(proto.E_STORE_CORRUPT, "the interval record is unreadable: set the clock "
                                "with the clinician key to start a new one")
        return record

    def _write(self, record):
        self.store.write(REC_INTERVAL, record)
        self.record = record

    def utc(self, now_ms):
        """Wall clock in UTC seconds at elapsed pen time now_ms, or None while unset."""
        if self.base_s is None:
            return None
        return self.base_s + (now_ms - self.base_ms) // 1000

    # ---- clock_set ----

    def clock_key_reason(self, utc_s, now_ms):
        """None if setting the clock to utc_s needs no key, else the refusal's message."""
        if self.record is None:
            return ("the pen's interval record is unreadable: setting the clock starts a new one and "
                    "needs the clinician key (--key-file)")
        reference = self.reference(now_ms)
        if reference - utc_s > lim.CLOCK_BACK_FREE_S:
            return ("setting the clock back to %s, %d s before the newest time this pen has seen (%s), "
                    "needs the clinician key (--key-file)" % (utc_text(utc_s), reference - utc_s, utc_text(reference)))
        return None

    def reference(self, now_ms):
        """The time a clock set is compared with: max(current wall time, newest recorded)."""
        reference = self.record["newest_s"] if self.record is not None else 0
        now = self.utc(now_ms)
        return now if now is not None and now > reference else reference

    def set_clock(self, utc_s, authorised, now_ms):
        """A write() that sets the clock (call it after the audit entry is written)."""
        new = _copy(self.record) if self.record is not None else _fresh()
        reference = self.reference(now_ms)
        # Keyed: the clinician vouches for this time, so it becomes the reference even if it is
        # earlier; otherwise the reference only moves forward.
        new["newest_s"] = utc_s if authorised or utc_s > reference else reference

        def write():
            self._write(new)
            self.base_s = utc_s
            self.base_ms = now_ms
        return write

    # ---- overrides ----

    def add_override(self, name):
        """A write() that allows one early session with profile `name`."""
        new = _copy(self._intact())
        if name not in new["override"]:
            new["override"].append(name)
        return lambda: self._write(new)

    # ---- sessions ----

    def check(self, name, days, now_ms):
        """Refuse a session with profile `name` (interval `days`) now: CLOCK_UNSET, TOO_SOON."""
        if not days:
            return
        record = self._intact()
        now = self.utc(now_ms)
        if now is None:
            raise ClinicalError(proto.E_CLOCK_UNSET, "profile '%s' has a %d-day interval and the pen's clock "
                                "is not set: run penctl clock set" % (name, days))
        last = record["last"].get(name)
        if last is not None and now < last + days * lim.DAY_S and name not in record["override"]:
            raise ClinicalError(proto.E_TOO_SOON, "profile '%s' was last used %s; its interval is %d days: "
                                "next session from %s" % (name, utc_text(last), days,
                                                          utc_text(last + days * lim.DAY_S)))

    def starting(self, name, days, now_ms):
        """(write, override_used, early) recording a session with `name` now; write is None when
        there is nothing to record (no clock, no interval)."""
        now = self.utc(now_ms)
        if self.record is None or now is None:
            if days:   # check() refused this already; never start without the record
                raise ClinicalError(proto.E_CLOCK_UNSET, "no wall clock or interval record for profile '%s'" % name)
            return None, False, False
        new = _copy(self.record)
        previous = new["last"].get(name)
        override = name in new["override"]
        new["last"][name] = now
        if now > new["newest_s"]:
            new["newest_s"] = now
        if override:
            new["override"].remove(name)
        new["pending"] = {"profile": name, "prev": previous, "override": override}
        early = override and previous is not None and now < previous + days * lim.DAY_S
        return (lambda: self._write(new)), override, early

    def ended(self, name, motor_ran):
        """A session whose motor never ran was not a treatment: give back its interval time and
        any override it used. A power cut keeps them counted. True if something was given back."""
        record = self.record
        if motor_ran or record is None:
            return False
        pending = record.get("pending")
        if pending is None or pending.get("profile") != name:
            return False
        new = _copy(record)
        if pending.get("prev") is None:
            new["last"].pop(name, None)
        else:
            new["last"][name] = pending["prev"]
        if pending.get("override") and name not in new["override"]:
            new["override"].append(name)
        new["pending"] = None
        self._write(new)
        return True
