# Clinical safety on the pen (S16-S20; docs/design.md §3.5, docs/clinical.md): the depth
# ceiling, the clinician-key operations, the wall clock and treatment intervals, the
# cartridge's single-use mark and the audit trail. Key and lock: pen.auth; trail: pen.audit;
# wall clock and intervals: pen.intervals.
#
# How the application plugs it in (core 0 only, never the tick; see docs/clinical.md):
#   clinical = Clinical(store, board, pen_ms=..., busy=..., find_profile=...)
#   requests:   op in Clinical.OPS -> clinical.handle(op, body); info: reply.update(clinical.info())
#   loop pass:  clinical.service()
#   profile put / use:  clinical.check_profile(profile)
#   session start:      clinical.check_session(profile, cartridge)   before any record is written,
#                       clinical.session_starting(profile, cartridge) last thing before the motor
#   session end:        clinical.session_ended(profile_name, motor_ran)
# Refusals raise ClinicalError (code, message, field) or pen.store.StoreError.
#
# Time: durations (nonce, lock, wall clock) are elapsed pen time accumulated from the board's
# ticks_us() with wrap-safe differences at every call (the app calls service() every loop
# pass, far more often than half a ticks period), never by comparing absolute counters.
import os

from . import limits as lim
from . import proto
from .audit import Audit
from .auth import KEY_BYTES, KEY_ID_HEX, Auth, ClinicalError, parse_hex, wrap_keystream
from .compat import ticks_diff
from .intervals import Intervals, check_min_interval_days, utc_text
from .store import StoreError
from .wire import dumps

REC_CEILING = "ceiling"
_AUDIT_READ_MAX = 4         # audit entries per reply ...
_AUDIT_READ_BYTES = 1600    # ... and at most this much of them (FRAME_MAX with room to spare)
_SERVICE_US = 1000000       # service() folds pen time into the accumulator this often

__all__ = ("Clinical", "ClinicalError", "check_min_interval_days", "utc_text")


def _mm(um):
    text = "%d.%03d" % (um // 1000, um % 1000)
    return text.rstrip("0").rstrip(".")


def _only(body, allowed):
    for name in body:
        if name != "op" and name not in allowed:
            raise ClinicalError(proto.E_BAD_REQUEST, "unknown field '%s'" % name)


class Clinical:
    OPS = ("auth_nonce", "key_provision", "ceiling_set", "clock_set", "interval_override", "audit_read")

    def __init__(self, store, board, ticks_us=None, pen_ms=None, busy=None, find_profile=None, urandom=None):
        self.store = store
        self.board = board
        self._ticks_us = ticks_us if ticks_us is not None else board.ticks_us
        self._last_us = self._ticks_us()
        self._elapsed_us = 0
        self.pen_ms = pen_ms if pen_ms is not None else self._now_ms   # stamps audit entries
        self.busy = busy if busy is not None else (lambda: False)
        self.find_profile = find_profile
        self.auth = Auth(store, board.serial, urandom if urandom is not None else os.urandom)
        self.auth.boot_lock(0)
        self.audit = Audit(store)
        record = store.read(REC_CEILING)
        depth = record.get("depth_um") if record is not None else None
        if type(depth) is int and lim.DEPTH_MIN_UM <= depth <= lim.DEPTH_MAX_UM:
            self.ceiling_um = depth
        elif record is None and not store.exists(REC_CEILING):
            self.ceiling_um = lim.DEPTH_CEILING_DEFAULT_UM      # factory-fresh
        else:
            self.ceiling_um = lim.DEPTH_MIN_UM                  # unreadable: the shallowest (fail closed)
        self.intervals = Intervals(store)

    # ---- time ----

    def _now_ms(self):
        """Elapsed pen time since this module started, in ms (wrap-safe accumulation)."""
        raw = self._ticks_us()
        step = ticks_diff(raw, self._last_us)
        self._last_us = raw
        if step > 0:
            self._elapsed_us += step
        return self._elapsed_us // 1000

    def utc_now(self):
        """The pen's wall clock in UTC seconds, or None while unset (after every power-up)."""
        return self.intervals.utc(self._now_ms())

    def service(self):
        """Every loop pass: keeps the elapsed-time accumulator fed and drops a stale nonce. The
        accumulator is a long int on the RP2040 after 2**30 us, so it is updated once a second
        of pen time, not every pass: the common pass is one ticks_us() and one ticks_diff()."""
        if ticks_diff(self._ticks_us(), self._last_us) >= _SERVICE_US:
            self.auth.expire(self._now_ms())

    # ---- audit ----

    def _entry(self, kind, fields):
        entry = {"kind": kind, "t_ms": self.pen_ms(), "utc_s": self.utc_now()}
        for name in fields:
            entry[name] = fields[name]
        return entry

    def _audit_quietly(self, kind, fields, same=None):
        # For refusals: the refusal stands whether or not it could be logged; a failed write
        # counts in audit.lost (reported in info and in the next page written).
        try:
            if same is None:
                self.audit.append(self._entry(kind, fields))
            else:
                self.audit.coalesce(self._entry(kind, fields), same)
        except StoreError:
            pass

    def _commit(self, kind, fields, write):
        """Write-ahead: the audit entry first (no entry, no change), then the change. A change
        that then fails is marked not applied (best effort) and refused."""
        entry_id = self.audit.append(self._entry(kind, fields))
        try:
            write()
        except StoreError:
            self._audit_quietly("not_applied", {"ref": entry_id})
            raise

    # ---- requests ----

    def handle(self, op, body):
        """Reply body (without "ok") for a clinical op; raises ClinicalError / StoreError."""
        if op == "audit_read":
            return self._op_audit_read(body)
        if self.busy():
            raise ClinicalError(proto.E_BUSY, "not while the motor or the UV LED is on: clinical "
                                "records are written to flash")
        if op == "auth_nonce":
            return self._op_auth_nonce(body)
        if op == "key_provision":
            return self._op_key_provision(body)
        if op == "ceiling_set":
            return self._op_ceiling_set(body)
        if op == "clock_set":
            return self._op_clock_set(body)
        if op == "interval_override":
            return self._op_interval_override(body)
        raise ClinicalError(proto.E_UNKNOWN_OP, "unknown op %r" % (op,))

    def info(self):
        """Clinical fields of the info reply (never the key)."""
        left = self.auth.locked_ms(self._now_ms())
        utc = self.utc_now()
        out = {
            "depth_ceiling_um": self.ceiling_um,
            "key_provisioned": self.auth.provisioned(),
            "wall_clock_set": utc is not None,
            "auth_locked_s": (left + 999) // 1000,
            "audit_next": self.audit.next_id,
            "audit_lost": self.audit.lost,
            "audit_corrupt_pages": self.audit.corrupt_pages,
        }
        if utc is not None:
            out["utc_s"] = utc
        return out

    def _refuse_if_no_key(self):
        if self.auth.key_corrupt:
            raise ClinicalError(proto.E_STORE_CORRUPT, "the clinician key record is unreadable: service the pen")
        if self.auth.key is None:
            raise ClinicalError(proto.E_NO_KEY, "no clinician key on this pen: provision one first "
                                "(penctl key provision --key-file F)")

    def _refuse_if_locked(self, op, now):
        left = self.auth.locked_ms(now)
        if left:
            self.auth.nonce = None     # no nonce outlives a refusal
            self._audit_quietly("auth_locked", {"op": op, "level": self.auth.level}, same=("level",))
            self.auth.refuse_locked(left)
        self.auth.save_expiry()

    def _authorize(self, op, body):
        """Check the request's answer to the pen's nonce; returns the nonce used. Every failure
        is counted (in flash, before the reply) and logged."""
        auth = self.auth
        self._refuse_if_no_key()
        now = self._now_ms()
        self._refuse_if_locked(op, now)
        if body.get("auth") is None:
            raise ClinicalError(proto.E_AUTH_REQUIRED, "'%s' needs the clinician key (--key-file)" % op)
        reason, nonce = auth.check(op, body, now)
        if reason is not None:
            lock_s = auth.record_failure(now)
            self._audit_quietly("auth_failed", {"op": op, "reason": reason, "failures": auth.failures})
            message = "authentication failed for '%s': %s" % (op, reason)
            if lock_s:
                self._audit_quietly("auth_lock", {"seconds": lock_s, "level": auth.level})
                message += "; privileged operations are now locked for %d s" % lock_s
            else:
                message += " (%d more failures lock privileged operations)" % (lim.AUTH_FAILURES_MAX - auth.failures)
            raise ClinicalError(proto.E_AUTH_FAILED, message)
        auth.record_success()
        return nonce

    def _op_auth_nonce(self, body):
        _only(body, ())
        self._refuse_if_no_key()
        self._refuse_if_locked("auth_nonce", self._now_ms())
        return {"nonce": self.auth.issue_nonce(self._now_ms()), "expires_ms": lim.AUTH_NONCE_MS}

    def _op_key_provision(self, body):
        auth = self.auth
        key_id = body.get("key_id")
        if parse_hex(key_id, KEY_ID_HEX // 2) is None:
            raise ClinicalError(proto.E_BAD_REQUEST, "'key_id' must be %d lower-case hex digits" % KEY_ID_HEX)
        if auth.key_corrupt:
            self._refuse_if_no_key()
        if auth.key is None:
            # First provisioning: no key to authenticate with, so the key travels once in clear.
            _only(body, ("key", "key_id"))
            key = parse_hex(body.get("key"), KEY_BYTES)
            if key is None:
                raise ClinicalError(proto.E_BAD_REQUEST, "'key' must be %d lower-case hex digits" % (2 * KEY_BYTES))
            self._refuse_weak(key)
            self._commit("key_provision", {"key_id": key_id, "first": True}, lambda: auth.store_key(key, key_id))
            return {"key_id": key_id}
        if "key" in body:
            raise ClinicalError(proto.E_AUTH_REQUIRED, "this pen already has a clinician key: a new one is "
                                "sent wrapped with the current key (penctl key provision --current-key-file)")
        _only(body, ("key_wrapped", "key_id", "auth"))
        wrapped = parse_hex(body.get("key_wrapped"), KEY_BYTES)
        if wrapped is None:
            raise ClinicalError(proto.E_BAD_REQUEST, "'key_wrapped' must be %d lower-case hex digits"
                                % (2 * KEY_BYTES))
        old_key_id = auth.key_id
        nonce = self._authorize("key_provision", body)
        stream = wrap_keystream(auth.key, nonce)
        key = bytes([wrapped[index] ^ stream[index] for index in range(KEY_BYTES)])
        self._refuse_weak(key)
        self._commit("key_provision", {"key_id": key_id, "first": False, "old_key_id": old_key_id},
                     lambda: auth.store_key(key, key_id))
        return {"key_id": key_id}

    def _refuse_weak(self, key):
        for byte in key:
            if byte != key[0]:
                return
        raise ClinicalError(proto.E_BAD_REQUEST, "refusing a key whose bytes are all the same")

    def _op_ceiling_set(self, body):
        _only(body, ("depth_um", "auth"))
        depth = body.get("depth_um")
        if type(depth) is not int or depth < lim.DEPTH_MIN_UM or depth > lim.DEPTH_MAX_UM:
            raise ClinicalError(proto.E_DEPTH_RANGE, "the ceiling must be %s-%s mm"
                                % (_mm(lim.DEPTH_MIN_UM), _mm(lim.DEPTH_MAX_UM)), "depth_um")
        if depth % lim.DEPTH_STEP_UM:
            raise ClinicalError(proto.E_DEPTH_GRID, "the ceiling must be on the %s mm grid"
                                % _mm(lim.DEPTH_STEP_UM), "depth_um")
        self._authorize("ceiling_set", body)

        def write():
            self.store.write(REC_CEILING, {"depth_um": depth})
            self.ceiling_um = depth
        self._commit("ceiling_set", {"from_um": self.ceiling_um, "to_um": depth}, write)
        return {"depth_ceiling_um": depth}

    def _op_clock_set(self, body):
        _only(body, ("utc_s", "auth"))
        utc = body.get("utc_s")
        if type(utc) is not int or utc < lim.UTC_MIN_S or utc > lim.UTC_MAX_S:
            raise ClinicalError(proto.E_BAD_REQUEST, "'utc_s' must be whole seconds since 1970 (UTC) between "
                                "2020 and 2100")
        intervals = self.intervals
        reason = intervals.clock_key_reason(utc, self._now_ms())
        authorised = False
        if body.get("auth") is not None or reason is not None:
            if body.get("auth") is None:
                raise ClinicalError(proto.E_AUTH_REQUIRED, reason)
            self._authorize("clock_set", body)
            authorised = True
        fields = {"from_s": self.utc_now(), "to_s": utc, "auth": authorised}
        if intervals.record is None:
            fields["interval_reset"] = True
        self._commit("clock_set", fields, intervals.set_clock(utc, authorised, self._now_ms()))
        return {"utc_s": utc}

    def _op_interval_override(self, body):
        from .profiles import check_name   # here: pen.profiles imports this package's intervals
        _only(body, ("profile", "auth"))
        name = check_name(body.get("profile"))
        if self.find_profile is None or self.find_profile(name) is None:
            raise ClinicalError(proto.E_UNKNOWN_PROFILE, "no profile named '%s' on the pen" % name)
        write = self.intervals.add_override(name)
        self._authorize("interval_override", body)
        self._commit("interval_override", {"profile": name}, write)
        return {"profile": name, "override": True}

    def _op_audit_read(self, body):
        _only(body, ("from", "count"))
        start = body.get("from", 0)
        count = body.get("count", _AUDIT_READ_MAX)
        if type(start) is not int or type(count) is not int or start < 0 or count < 1:
            raise ClinicalError(proto.E_BAD_REQUEST, "'from' and 'count' must be non-negative integers")
        entries, next_id = self.audit.read(start, min(count, _AUDIT_READ_MAX), _AUDIT_READ_BYTES,
                                           lambda entry: len(dumps(entry)) + 2)
        return {"entries": entries, "next": next_id, "end": self.audit.next_id, "oldest": self.audit.oldest(),
                "lost": self.audit.lost, "totals": self.audit.totals}

    # ---- hooks ----

    def check_profile(self, profile):
        """Profile push / use: refuse one deeper than the ceiling (S16)."""
        depth = profile.get("depth_um")
        if type(depth) is not int or depth > self.ceiling_um:
            raise ClinicalError(proto.E_DEPTH_CEILING, "profile '%s' (%s mm) is deeper than this pen's depth "
                                "ceiling of %s mm; the clinician can change it (penctl ceiling set MM --key-file F)"
                                % (profile.get("name"), _mm(depth) if type(depth) is int else "?",
                                   _mm(self.ceiling_um)), "depth_mm")

    def check_session(self, profile, cartridge):
        """Session start, before anything is written: ceiling, interval, cartridge mark."""
        self.check_profile(profile)
        self.intervals.check(profile["name"], profile.get("min_interval_days", 0), self._now_ms())
        used = getattr(self.board, "cartridge_used", None)
        if used is None:
            raise ClinicalError(proto.E_CARTRIDGE_MEMORY, "this board cannot read the cartridge's used mark")
        try:
            marked = used()
        except Exception as exc:
            raise ClinicalError(proto.E_CARTRIDGE_MEMORY, "cannot read the used mark of cartridge %s (%s): "
                                "reseat it or insert another" % (cartridge, exc))
        if marked is True:
            raise ClinicalError(proto.E_CARTRIDGE_USED, "cartridge %s is marked used on its own memory: insert a "
                                "fresh one" % cartridge)
        if marked is not False:
            raise ClinicalError(proto.E_CARTRIDGE_MEMORY, "cartridge %s: unreadable used mark" % cartridge)

    def session_starting(self, profile, cartridge):
        """Last step before the motor may start: mark the cartridge used, then record the session
        time for the profile's interval (an override is consumed and logged). Raising refuses."""
        mark = getattr(self.board, "cartridge_mark_used", None)
        if mark is None:
            raise ClinicalError(proto.E_CARTRIDGE_MEMORY, "this board cannot mark cartridges used")
        try:
            mark()
        except Exception as exc:
            raise ClinicalError(proto.E_CARTRIDGE_MEMORY, "cannot write the used mark on cartridge %s (%s): "
                                "insert another" % (cartridge, exc))
        name = profile["name"]
        write, override, early = self.intervals.starting(name, profile.get("min_interval_days", 0), self._now_ms())
        if write is None:
            return
        if override:
            self._commit("interval_override_used", {"profile": name, "early": early}, write)
        else:
            write()

    def session_ended(self, profile_name, motor_ran):
        """Session end, motor off. `motor_ran`: the stroke motor was driven at any time in the
        session. One that never drove it gives back its interval time and override."""
        try:
            self.intervals.ended(profile_name, motor_ran)
        except StoreError:
            pass   # stays counted as a treatment: fail closed
