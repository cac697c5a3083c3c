# The pen application: fixed-rate loop around the control tick, the lockout
# rules that need the flash (S5-S8), the command set over the wire protocol,
# telemetry and events. Platform-agnostic: it receives the board.
import gc
import os
import sys
from array import array

try:
    import select
except ImportError:  # pragma: no cover
    import uselect as select  # type: ignore

from . import control as c
from . import limits as lim
from . import proto
from . import wire
from .compat import ticks_add, ticks_diff
from .profiles import ProfileError, check_name, check_profile
from .store import Store, StoreError

_REC_LOCKOUT = "lockout"
_REC_CARTRIDGES = "cartridges"
_REC_PROFILES = "profiles"
_LOG_PREFIX = "log-"
_LOG_PAGE_MAX = 4          # log entries per response frame
_LOG_PAGE_BYTES = 1600     # ... and at most this much of it (FRAME_MAX with room for the envelope)
_REASON_MAX = 64
_LATE_BUCKET_US = 5        # tick lateness histogram: 5 us buckets ...
_LATE_BUCKETS = 200        # ... up to 1 ms; the last bucket counts everything later


def _readable(poller):
    # ipoll: MicroPython's allocation-free poll (poll() builds a list each call).
    for _ in poller.ipoll(0):
        return True
    return False


class PenError(Exception):
    """A refused request: `code` is the stable wire error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class App:
    def __init__(self, board, out=None, inp=None, poller=None):
        self.board = board
        self.ctl = c.Controller(board)
        self.store = Store(board.store_dir)
        self.out = out if out is not None else sys.stdout.buffer
        self.inp = inp if inp is not None else sys.stdin.buffer
        if poller is None:
            poller = select.poll()
            poller.register(sys.stdin, select.POLLIN)
        self.poller = poller
        self.rx = bytearray(lim.FRAME_MAX + 1)
        self.rx_len = 0
        self.rx_overflow = False
        self.rx_errors = 0
        self.store_errors = 0
        self.tx_errors = 0
        self.event_seq = 0
        # Telemetry is a lease (docs/design.md §3.4): a subscription `tm_sub` may send `tm_left`
        # more samples; the host renews it, so a client that died stops the stream.
        self.tm_on = False
        self.tm_sub = 0
        self.tm_next_sub = _random_int(3) or 1
        self.tm_left = 0
        self.tm_from = 0           # index of the subscription's first sample
        self.tm_sent = 0           # telemetry samples handled (sent or dropped)
        self.tm_dropped = 0
        self.ticks = 0
        self.late_hist = array("i", [0] * (_LATE_BUCKETS + 1))
        self.heap_live_max = 0     # largest live heap seen by the `mem` op
        self.service_max_us = 0    # longest work between two ticks
        self.session = None        # log entry of the running session
        self.last_steril = {"result": "none", "reason": "NONE"}
        self._sync_clock()
        self._load()
        self.ctl.start_homing()

    # ---- persistent state ----

    def _load(self):
        lockout = self.store.read(_REC_LOCKOUT)
        # Missing or corrupt lockout state reads as LOCKED (S7).
        self.unlocked = bool(lockout and lockout.get("unlocked") is True)
        self.cycles = lockout.get("cycles", 0) if lockout else 0
        carts = self.store.read(_REC_CARTRIDGES)
        self.cartridges_ok = carts is not None or not self.store.exists(_REC_CARTRIDGES)
        self.used = carts.get("used", []) if carts else []
        profiles = self.store.read(_REC_PROFILES)
        self.profiles = profiles.get("profiles", []) if profiles else []
        self.active = profiles.get("active") if profiles else None
        self.log_next = 0
        for slot in range(lim.LOG_MAX_ENTRIES):
            entry = self.store.read(_LOG_PREFIX + str(slot))
            if entry and entry.get("id", -1) >= self.log_next:
                self.log_next = entry["id"] + 1

    def _write(self, name, value):
        # Flash writes only while the motor is off, outside the tick.
        if self.ctl.motor_on:
            raise StoreError("refusing a flash write while the motor runs")
        self.store.write(name, value)

    def _write_lockout(self):
        self._write(_REC_LOCKOUT, {"unlocked": self.unlocked, "cycles": self.cycles})

    def _write_profiles(self):
        self._write(_REC_PROFILES, {"profiles": self.profiles, "active": self.active})

    def _log(self, entry):
        if "id" not in entry:
            entry["id"] = self.log_next
            self.log_next += 1
        self._write(_LOG_PREFIX + str(entry["id"] % lim.LOG_MAX_ENTRIES), entry)
        return entry

    def _log_safely(self, entry):
        try:
            self._log(entry)
        except StoreError:
            self.store_errors += 1   # reported in info; the event still goes out

    # ---- loop ----

    def _sync_clock(self):
        # Pen time (ms) is the board clock at each tick's deadline: the rig's plant
        # times and the pen's event times are on one scale. tick() adds 1 first.
        self.deadline = self.board.ticks_us()
        self.ctl.now_ms = self.deadline // lim.TICK_US - 1

    def run(self):
        self._sync_clock()
        try:
            while True:
                self.step()
        except BaseException as exc:   # Ctrl-C (KeyboardInterrupt) too (S9)
            self.board.safe_stop()     # motor off before anything else
            self.ctl.motor_on = False  # it is off now, so the crash record may be written
            self.ctl.duty_bp = 0
            self._log_safely({"kind": "crash", "error": repr(exc)[:80], "t_ms": self.ctl.now_ms})
            raise

    def step(self):
        """One loop pass: wait for the deadline, tick, then bounded service work."""
        board = self.board
        ctl = self.ctl
        deadline = self.deadline
        while not board.wait_until(deadline, self.poller):
            self._receive()        # a request arrived before the deadline: answer it now
        late = ticks_diff(board.ticks_us(), deadline)
        bucket = late // _LATE_BUCKET_US
        if bucket >= _LATE_BUCKETS:
            bucket = _LATE_BUCKETS
        elif bucket < 0:
            bucket = 0
        self.late_hist[bucket] += 1
        start = board.cpu_ticks_us()
        ctl.tick()
        spent = ticks_diff(board.cpu_ticks_us(), start)
        if spent > ctl.tick_max_us:
            ctl.tick_max_us = spent
        self.ticks += 1
        if late >= lim.TICK_US:
            # Missed whole periods: count them, keep pen time true, and
            # resynchronise instead of bursting to catch up.
            missed = late // lim.TICK_US
            ctl.overruns += missed
            ctl.now_ms += missed
            deadline = ticks_add(deadline, missed * lim.TICK_US)
        # Next deadline from the previous one, never from "now": no drift.
        self.deadline = ticks_add(deadline, lim.TICK_US)
        start = board.cpu_ticks_us()
        self.service()
        board.service()
        board.watchdog_feed()
        spent = ticks_diff(board.cpu_ticks_us(), start)
        if spent > self.service_max_us:
            self.service_max_us = spent

    def service(self):
        """Bounded work between two ticks."""
        if self.ctl.pending:
            self._handle_pending()
        self._receive()
        if self.tm_on and self.tm_sent != self.ctl.tm_count:
            self._send_telemetry()

    # ---- tick -> app ----

    def _handle_pending(self):
        ctl = self.ctl
        pending = ctl.pending
        ctl.pending = 0
        if pending & c.P_FAULT:
            self._log_safely({"kind": "fault", "fault": c.FAULT_NAMES[ctl.fault], "t_ms": ctl.fault_ms})
            self.event({"ev": "fault", "fault": c.FAULT_NAMES[ctl.fault], "t_ms": ctl.fault_ms})
        if pending & c.P_SESSION_END and self.session is not None:
            entry = self.session
            self.session = None
            entry["end"] = c.END_NAMES[ctl.end_reason]
            entry["duration_ms"] = ctl.session_ms
            entry["strokes"] = ctl.strokes
            if not ctl.motor_on:
                self._log_safely(entry)
            self.event({"ev": "session_end", "id": entry["id"], "reason": entry["end"],
                        "duration_ms": entry["duration_ms"], "strokes": entry["strokes"]})
        if pending & c.P_STERIL_DONE:
            self.unlocked = True
            self.cycles += 1
            try:
                self._write_lockout()
            except StoreError:
                self.unlocked = False
                ctl.state = c.LOCKED
                pending |= c.P_STATE
                self.last_steril = {"result": "aborted", "reason": "STORE"}
            else:
                ctl.enter(c.READY)
                pending |= c.P_STATE
                self.last_steril = {"result": "done", "reason": "NONE"}
            self._log_safely({"kind": "sterilise", "result": self.last_steril["result"],
                              "reason": self.last_steril["reason"], "t_ms": ctl.now_ms})
            self.event({"ev": "sterilise", "result": self.last_steril["result"],
                        "reason": self.last_steril["reason"]})
        if pending & c.P_STERIL_ABORT:
            reason = c.ABORT_NAMES[ctl.abort_reason] if ctl.state != c.FAULT else "FAULT"
            self.last_steril = {"result": "aborted", "reason": reason}
            self._log_safely({"kind": "sterilise", "result": "aborted", "reason": reason,
                              "t_ms": ctl.now_ms})
            self.event({"ev": "sterilise", "result": "aborted", "reason": reason})
        if pending & c.P_HOMED and ctl.state == c.BOOT:
            ctl.enter(c.READY if self.unlocked else c.LOCKED)
            pending |= c.P_STATE
        if pending & c.P_STATE:
            self.event({"ev": "state", "state": c.STATE_NAMES[ctl.state], "t_ms": ctl.now_ms})
        # Only our own ctl.enter() calls can have set bits since (the tick did not
        # run meanwhile), and their state event went out above.
        ctl.pending &= ~c.P_STATE

    # ---- wire ----

    def _send(self, frame):
        self.out.write(frame)

    def event(self, body):
        try:
            frame = wire.encode(wire.KIND_EVENT, self.event_seq, body)
        except ValueError:
            self.tx_errors += 1      # never crash the loop on an event; the host sees the gap
        else:
            self._send(frame)
        self.event_seq = (self.event_seq + 1) % wire.NUM_MODULO

    def _send_telemetry(self):
        ctl = self.ctl
        if ctl.tm_count - self.tm_sent > lim.TELEMETRY_RING:
            skipped = ctl.tm_count - lim.TELEMETRY_RING - self.tm_sent
            self.tm_dropped += skipped
            self.tm_sent += skipped
        base = (self.tm_sent % lim.TELEMETRY_RING) * c.TM_FIELDS
        sample = list(ctl.tm_ring[base:base + c.TM_FIELDS])
        self.event({"ev": "tm", "sub": self.tm_sub, "n": self.tm_sent, "s": sample})
        self.tm_sent += 1
        self.tm_left -= 1
        if self.tm_left <= 0:
            self.tm_on = False     # lease used up: the host did not renew it
            self.event({"ev": "tm_end", "sub": self.tm_sub, "reason": "LEASE"})

    def _receive(self):
        budget = lim.RX_BYTES_PER_PASS
        poller = self.poller
        inp = self.inp
        while budget and _readable(poller):
            chunk = inp.read(1)
            if not chunk:
                return
            budget -= 1
            byte = chunk[0]
            if byte == 10:
                if self.rx_overflow:
                    self.rx_overflow = False
                    self.rx_len = 0
                    self._reply_error(0, wire.E_FRAME_LONG, "frame longer than %d bytes" % lim.FRAME_MAX)
                elif self.rx_len:
                    line = bytes(self.rx[:self.rx_len])
                    self.rx_len = 0
                    self._handle_line(line)
                    return                      # at most one request per pass
            elif byte == 13 and not self.rx_overflow and self.rx_len == 0:
                continue                        # stray CR between frames
            elif self.rx_overflow:
                continue
            elif self.rx_len >= lim.FRAME_MAX:
                self.rx_overflow = True
            else:
                self.rx[self.rx_len] = byte
                self.rx_len += 1

    def _reply_error(self, num, code, message):
        self.rx_errors += 1
        self._send(wire.encode(wire.KIND_RESPONSE, num, {"ok": False, "code": code, "msg": message}))

    def _handle_line(self, line):
        try:
            kind, num, body = wire.decode(line)
        except wire.WireError as exc:
            self._reply_error(0, exc.code, exc.message)
            return
        if kind != wire.KIND_REQUEST:
            self._reply_error(num, wire.E_FRAME_SYNTAX, "the pen only accepts requests")
            return
        try:
            frame = wire.encode(wire.KIND_RESPONSE, num, self.handle_request(body))
        except ValueError as exc:
            # Never crash on an answer that cannot be framed (too long: handlers page
            # their output); say so instead.
            frame = wire.encode(wire.KIND_RESPONSE, num, {"ok": False, "code": proto.E_RESPONSE_UNENCODABLE,
                                                          "msg": str(exc)[:120]})
        self._send(frame)

    def handle_request(self, body):
        """Response body for a request body (also used directly by tests)."""
        op = body.get("op")
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "code": proto.E_UNKNOWN_OP, "msg": "unknown op %r" % (op,)}
        try:
            result = handler(self, body)
        except PenError as exc:
            return {"ok": False, "code": exc.code, "msg": exc.message}
        except ProfileError as exc:
            return {"ok": False, "code": exc.code, "msg": exc.message, "field": exc.field}
        except StoreError as exc:
            return {"ok": False, "code": proto.E_STORE, "msg": str(exc)}
        except Exception as exc:
            return {"ok": False, "code": proto.E_INTERNAL, "msg": repr(exc)[:120]}
        result["ok"] = True
        return result

    # ---- commands ----

    def _require_not_running(self):
        if self.ctl.state in (c.RUNNING, c.STERILISING):
            raise PenError(proto.E_BUSY, "not while %s" % c.STATE_NAMES[self.ctl.state])

    def _find_profile(self, name):
        for profile in self.profiles:
            if profile["name"] == name:
                return profile
        raise PenError(proto.E_UNKNOWN_PROFILE, "no profile named '%s' on the pen" % name)

    def cmd_ping(self, body):
        return {"protocol": lim.PROTOCOL_VERSION}

    def cmd_info(self, body):
        ctl = self.ctl
        return {
            "firmware": lim.FIRMWARE_VERSION,
            "protocol": lim.PROTOCOL_VERSION,
            "board": self.board.BOARD_NAME,
            "serial": self.board.serial,
            "state": c.STATE_NAMES[ctl.state],
            "fault": c.FAULT_NAMES[ctl.fault] if ctl.state == c.FAULT else None,
            "unlocked": self.unlocked,
            "depth_um": ctl.depth_um(),
            "depth_set_um": ctl.depth_target_um,
            "hz_chz": ctl.hz_chz if ctl.motor_on else 0,
            "hz_set_chz": ctl.hz_set_chz if ctl.state == c.RUNNING else 0,
            "profile": self.active,
            "clock": "fast" if self.board.fast_clock else "real",
            "limits": {
                "depth_min_um": lim.DEPTH_MIN_UM, "depth_max_um": lim.DEPTH_MAX_UM,
                "depth_step_um": lim.DEPTH_STEP_UM, "hz_min": lim.HZ_MIN, "hz_max": lim.HZ_MAX,
                "session_min_s": lim.SESSION_MIN_S, "session_max_s": lim.SESSION_MAX_S,
            },
            "counters": {
                "uptime_ms": ctl.now_ms, "ticks": self.ticks, "overruns": ctl.overruns,
                "tick_max_us": ctl.tick_max_us, "faults": ctl.faults, "rx_errors": self.rx_errors,
                "store_errors": self.store_errors, "tx_errors": self.tx_errors,
                "cycles": self.cycles, "log_entries": self.log_next,
                "used_cartridges": len(self.used), "tm_dropped": self.tm_dropped,
            },
        }

    def cmd_timing(self, body):
        """Tick lateness histogram, overruns, longest tick and longest between-tick work."""
        hist = self.late_hist
        last = len(hist)
        while last and not hist[last - 1]:
            last -= 1
        # Counts per bucket (bucket i: lateness i*bucket_us up to (i+1)*bucket_us, the last
        # one everything later), trailing empty buckets left out: always fits one frame.
        reply = {"bucket_us": _LATE_BUCKET_US, "hist": list(hist[:last]), "ticks": self.ticks,
                 "overruns": self.ctl.overruns, "tick_max_us": self.ctl.tick_max_us,
                 "service_max_us": self.service_max_us}
        if body.get("reset") is True:
            for index in range(len(hist)):
                hist[index] = 0
            self.ctl.overruns = 0
            self.ctl.tick_max_us = 0
            self.service_max_us = 0
        return reply

    def cmd_mem(self, body):
        """Live heap after a full collection (bytes), and the largest seen so far."""
        gc.collect()
        live = gc.mem_alloc()
        if live > self.heap_live_max:
            self.heap_live_max = live
        return {"live": live, "free": gc.mem_free(), "live_max": self.heap_live_max}

    def cmd_profile_put(self, body):
        self._require_not_running()
        profile = check_profile(body.get("profile"))
        kept = [p for p in self.profiles if p["name"] != profile["name"]]
        if len(kept) >= lim.PROFILES_MAX:
            raise PenError(proto.E_PROFILES_FULL, "the pen holds at most %d profiles" % lim.PROFILES_MAX)
        kept.append(profile)
        previous = self.profiles
        self.profiles = kept
        try:
            self._write_profiles()
        except StoreError:
            self.profiles = previous
            raise
        return {"profile": profile}

    def cmd_profile_list(self, body):
        return {"profiles": self.profiles, "active": self.active}

    def cmd_profile_use(self, body):
        self._require_not_running()
        name = check_name(body.get("name"))
        self._find_profile(name)
        previous = self.active
        self.active = name
        try:
            self._write_profiles()
        except StoreError:
            self.active = previous
            raise
        return {"active": name}

    def cmd_profile_rm(self, body):
        self._require_not_running()
        name = check_name(body.get("name"))
        profile = self._find_profile(name)
        previous = (self.profiles, self.active)
        self.profiles = [p for p in self.profiles if p is not profile]
        if self.active == name:
            self.active = None
        try:
            self._write_profiles()
        except StoreError:
            self.profiles, self.active = previous
            raise
        return {"removed": name, "active": self.active}

    def _refuse_if_fault(self):
        if self.ctl.state == c.FAULT:
            raise PenError(proto.E_FAULT, "latched fault %s: run 'fault clear' first"
                           % c.FAULT_NAMES[self.ctl.fault])

    def cmd_sterilise_start(self, body):
        self._refuse_if_fault()
        state = self.ctl.state
        if state == c.BOOT:
            raise PenError(proto.E_BUSY, "the pen is still homing")
        self._require_not_running()
        if not self.board.lid_closed():
            raise PenError(proto.E_LID_OPEN, "close the dock lid to sterilise")
        if self.unlocked:
            # A new cycle replaces a previous unlock: the pen is LOCKED until it
            # completes, in flash too, so neither an aborted cycle nor a power
            # cut mid-cycle leaves the old unlock behind (S5, S7).
            self.unlocked = False
            try:
                self._write_lockout()
            except StoreError:
                self.unlocked = True    # the record still says unlocked
                raise
        self.last_steril = {"result": "running", "reason": "NONE"}
        self.ctl.start_sterilising()
        return {"dose_target": lim.UV_DOSE_TARGET}

    def cmd_sterilise_status(self, body):
        ctl = self.ctl
        return {
            "state": c.STATE_NAMES[ctl.state],
            "result": self.last_steril["result"],
            "reason": self.last_steril["reason"],
            "dose_pm": ctl.uv_dose * 1000 // lim.UV_DOSE_TARGET,
            "elapsed_ms": ctl.steril_ms,
            "uv_pm": ctl.uv_pm,
            "unlocked": self.unlocked,
        }

    def cmd_sterilise_cancel(self, body):
        if self.ctl.state != c.STERILISING:
            raise PenError(proto.E_NOT_STERILISING, "no sterilisation cycle is running")
        self.ctl.cancel_sterilising()
        return {}

    def cmd_session_start(self, body):
        ctl = self.ctl
        self._refuse_if_fault()
        if ctl.state == c.LOCKED or (ctl.state == c.BOOT and not self.unlocked):
            raise PenError(proto.E_LOCKED, "the pen is locked: run a sterilisation cycle first")
        if ctl.state != c.READY:
            raise PenError(proto.E_BUSY, "cannot start a session while %s" % c.STATE_NAMES[ctl.state])
        name = body.get("profile")
        if name is None:
            name = self.active
            if name is None:
                raise PenError(proto.E_NO_PROFILE, "no active profile: push one and 'profile use' it")
        profile = self._find_profile(check_name(name))
        if not self.cartridges_ok:
            raise PenError(proto.E_STORE_CORRUPT, "the used-cartridge list is unreadable; service the pen")
        cart = self.board.cartridge_id()
        if cart is None or not self.board.cartridge_present():
            raise PenError(proto.E_NO_CARTRIDGE, "insert a fresh cartridge")
        if cart in self.used:
            raise PenError(proto.E_CARTRIDGE_USED, "cartridge %s was already used: insert a fresh one" % cart)
        # Consume the unlock and record the cartridge before the motor can run
        # (S5, S6): a crash from here on leaves the pen LOCKED.
        self.unlocked = False
        self._write_lockout()
        used = self.used + [cart]
        if len(used) > lim.USED_CARTRIDGES_MAX:
            used = used[-lim.USED_CARTRIDGES_MAX:]
        self._write(_REC_CARTRIDGES, {"used": used})
        self.used = used
        entry = self._log({"kind": "session", "profile": profile["name"], "depth_um": profile["depth_um"],
                           "stroke_hz": profile["stroke_hz"], "max_session_s": profile["max_session_s"],
                           "cartridge": cart, "start_ms": ctl.now_ms, "end": "INTERRUPTED",
                           "duration_ms": 0, "strokes": 0})
        self.session = entry
        ctl.start_session(profile["depth_um"], profile["stroke_hz"], profile["max_session_s"])
        return {"session": entry["id"], "profile": profile["name"], "cartridge": cart, "t_ms": ctl.now_ms}

    def cmd_session_stop(self, body):
        if self.ctl.state != c.RUNNING:
            raise PenError(proto.E_NOT_RUNNING, "no session is running")
        self.ctl.stop_session()
        return {"session": self.session["id"] if self.session else None}

    def cmd_telemetry(self, body):
        on = body.get("on")
        if not isinstance(on, bool):
            raise PenError(proto.E_BAD_REQUEST, "'on' must be true or false")
        if not on:
            self.tm_on = False
            self.tm_left = 0
            return {"on": False}
        lease = body.get("lease", lim.TELEMETRY_LEASE_DEFAULT)
        if type(lease) is not int or not 1 <= lease <= lim.TELEMETRY_LEASE_MAX:
            raise PenError(proto.E_BAD_REQUEST, "'lease' must be 1-%d samples" % lim.TELEMETRY_LEASE_MAX)
        sub = body.get("sub")
        if sub is not None:
            # Renewal of the running subscription: same stream, `lease` more samples.
            if not self.tm_on or sub != self.tm_sub:
                raise PenError(proto.E_NO_SUBSCRIPTION, "telemetry subscription %r is not running" % (sub,))
            self.tm_left = lease
            return {"on": True, "sub": sub, "lease": lease, "from": self.tm_from}
        # A new subscription, from the next sample on: nothing recorded before this request.
        self.tm_sub = self.tm_next_sub
        self.tm_next_sub = self.tm_next_sub % 0xFFFFFF + 1
        self.tm_on = True
        self.tm_left = lease
        self.tm_sent = self.ctl.tm_count
        self.tm_from = self.tm_sent
        return {"on": True, "sub": self.tm_sub, "lease": lease, "from": self.tm_from, "t_ms": self.ctl.now_ms,
                "period_ms": lim.TELEMETRY_PERIOD_MS, "fields": _TM_FIELD_NAMES}

    def cmd_log_read(self, body):
        start = body.get("from", 0)
        count = body.get("count", _LOG_PAGE_MAX)
        if not isinstance(start, int) or not isinstance(count, int) or start < 0 or count < 1:
            raise PenError(proto.E_BAD_REQUEST, "'from' and 'count' must be non-negative integers")
        count = min(count, _LOG_PAGE_MAX)
        first = max(start, self.log_next - lim.LOG_MAX_ENTRIES, 0)
        entries = []
        size = 0
        entry_id = first
        while entry_id < self.log_next and len(entries) < count:
            entry = self.store.read(_LOG_PREFIX + str(entry_id % lim.LOG_MAX_ENTRIES))
            if entry is not None and entry.get("id") == entry_id:
                size += len(wire.dumps(entry)) + 2
                if entries and size > _LOG_PAGE_BYTES:
                    break                   # the rest goes in the next page
                entries.append(entry)
            entry_id += 1
        return {"entries": entries, "next": entry_id, "end": self.log_next}

    def cmd_fault_clear(self, body):
        ctl = self.ctl
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > _REASON_MAX:
            raise PenError(proto.E_BAD_REQUEST, "a reason of 1-%d characters is required" % _REASON_MAX)
        if ctl.state != c.FAULT:
            raise PenError(proto.E_NO_FAULT, "there is no latched fault to clear")
        cleared = c.FAULT_NAMES[ctl.fault]
        self._log({"kind": "fault_clear", "fault": cleared, "reason": reason, "t_ms": ctl.now_ms})
        ctl.fault = c.F_NONE
        ctl.start_homing()       # BOOT checks again (docs/design.md §2.2)
        return {"cleared": cleared}


_TM_FIELD_NAMES = [field[0] for field in proto.TM_LAYOUT]


def _random_int(nbytes):
    value = 0
    for byte in os.urandom(nbytes):
        value = (value << 8) | byte
    return value


_HANDLERS = {
    "ping": App.cmd_ping,
    "info": App.cmd_info,
    "timing": App.cmd_timing,
    "mem": App.cmd_mem,
    "profile_put": App.cmd_profile_put,
    "profile_list": App.cmd_profile_list,
    "profile_use": App.cmd_profile_use,
    "profile_rm": App.cmd_profile_rm,
    "sterilise_start": App.cmd_sterilise_start,
    "sterilise_status": App.cmd_sterilise_status,
    "sterilise_cancel": App.cmd_sterilise_cancel,
    "session_start": App.cmd_session_start,
    "session_stop": App.cmd_session_stop,
    "telemetry": App.cmd_telemetry,
    "log_read": App.cmd_log_read,
    "fault_clear": App.cmd_fault_clear,
}
