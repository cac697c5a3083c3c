# The pen's request handlers (docs/design.md §3), on core 0. One function per op,
# `handler(app, body) -> dict`, registered in HANDLERS: a new op plugs in with one entry.
# A handler validates everything before it changes anything (flash, the control core),
# refuses with PenError (a stable wire code), and asks the control core through
# app.command(), replying only after core 1 acknowledged.
import gc
import os

from . import control as c
from . import limits as lim
from . import proto
from .auth import ClinicalError
from .clinical import Clinical
from .profiles import ProfileError, check_name, check_profile
from .records import REC_CARTRIDGES, REC_LOCKOUT, REC_PROFILES
from .store import StoreError

_REASON_MAX = 64
_HEX = "0123456789ABCDEF"


class PenError(Exception):
    """A refused request: `code` is the stable wire error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def random_int(nbytes):
    value = 0
    for byte in os.urandom(nbytes):
        value = (value << 8) | byte
    return value


def handle(app, body):
    """Response body for a request body."""
    op = body.get("op")
    handler = HANDLERS.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"ok": False, "code": proto.E_UNKNOWN_OP, "msg": "unknown op %r" % (op,)}
    try:
        result = handler(app, body)
    except PenError as exc:
        return {"ok": False, "code": exc.code, "msg": exc.message}
    except (ProfileError, ClinicalError) as exc:
        reply = {"ok": False, "code": exc.code, "msg": exc.message}
        if exc.field is not None:
            reply["field"] = exc.field
        return reply
    except StoreError as exc:
        return {"ok": False, "code": proto.E_STORE, "msg": str(exc)}
    except Exception as exc:
        return {"ok": False, "code": proto.E_INTERNAL, "msg": repr(exc)[:120]}
    result["ok"] = True
    return result


# ---- refusals shared by the handlers ----

_REFUSALS = {
    c.R_BUSY: (proto.E_BUSY, "the pen is busy"),
    c.R_FAULT: (proto.E_FAULT, "a fault is latched: run 'fault clear' first"),
    c.R_NO_FAULT: (proto.E_NO_FAULT, "there is no latched fault to clear"),
    c.R_LID_OPEN: (proto.E_LID_OPEN, "close the dock lid to sterilise"),
    c.R_NOT_RUNNING: (proto.E_NOT_RUNNING, "no session is running"),
    c.R_NOT_STERILISING: (proto.E_NOT_STERILISING, "no sterilisation cycle is running"),
    c.R_NO_CARTRIDGE: (proto.E_NO_CARTRIDGE, "insert a fresh cartridge"),
    c.R_LOCKED: (proto.E_LOCKED, "the pen is locked: run a sterilisation cycle first"),
}


def _command(app, cmd, a=0, b=0, c_=0):
    """Run a command on the control core; a refusal becomes a PenError."""
    result, detail = app.command(cmd, a, b, c_)
    if result == c.R_OK:
        return detail
    if result == c.R_FAULT_PRESENT:
        name = c.FAULT_NAMES[detail]
        raise PenError(proto.E_FAULT_PRESENT, "%s is still present: remove its cause first" % name)
    code, message = _REFUSALS.get(result, (proto.E_INTERNAL, "control core refused (%d)" % result))
    raise PenError(code, message)


def _state(app):
    app.board.sync()
    return app.ctl.state


def _refuse_if_fault(app):
    if _state(app) == c.FAULT:
        raise PenError(proto.E_FAULT, "latched fault %s: run 'fault clear' first" % c.FAULT_NAMES[app.ctl.fault])


def _require_not_running(app):
    state = _state(app)
    if state in (c.RUNNING, c.STERILISING):
        raise PenError(proto.E_BUSY, "not while %s" % c.STATE_NAMES[state])


def _find_profile(app, name):
    profile = app.rec.find_profile(name)
    if profile is None:
        raise PenError(proto.E_UNKNOWN_PROFILE, "no profile named '%s' on the pen" % name)
    return profile


def check_cartridge_id(cart):
    """S6: a 1-Wire ROM ID, 8 bytes as 16 upper-case hex digits; anything else is refused
    before any state changes, and never reaches a log record or a reply in full."""
    if not isinstance(cart, str) or len(cart) != lim.CARTRIDGE_ID_HEX:
        size = len(cart) if isinstance(cart, str) else -1
        raise PenError(proto.E_CARTRIDGE_INVALID, "cartridge ID is not 16 hex digits (%d characters)" % size)
    for ch in cart:
        if ch not in _HEX:
            raise PenError(proto.E_CARTRIDGE_INVALID, "cartridge ID is not 16 upper-case hex digits")
    return cart


# ---- ops ----

def op_ping(app, body):
    return {"protocol": lim.PROTOCOL_VERSION}


def op_info(app, body):
    board = app.board
    board.sync()
    ctl = app.ctl
    rec = app.rec
    reply = {
        "firmware": lim.FIRMWARE_VERSION,
        "protocol": lim.PROTOCOL_VERSION,
        "board": board.BOARD_NAME,
        "serial": board.serial,
        "state": c.STATE_NAMES[ctl.state],
        "fault": c.FAULT_NAMES[ctl.fault] if ctl.state == c.FAULT else None,
        "unlocked": rec.unlocked,
        "depth_um": ctl.depth_um(),
        "depth_set_um": ctl.depth_target_um,
        "hz_chz": ctl.hz_chz if ctl.motor_on else 0,
        "hz_set_chz": ctl.hz_set_chz if ctl.state == c.RUNNING else 0,
        "profile": rec.active,
        "clock": board.clock_name,
        "limits": {
            "depth_min_um": lim.DEPTH_MIN_UM, "depth_max_um": lim.DEPTH_MAX_UM,
            "depth_step_um": lim.DEPTH_STEP_UM, "hz_min": lim.HZ_MIN, "hz_max": lim.HZ_MAX,
            "session_min_s": lim.SESSION_MIN_S, "session_max_s": lim.SESSION_MAX_S,
        },
        "counters": {
            "uptime_ms": app.now_ms(), "ticks": app.loop.ticks, "overruns": ctl.overruns,
            "tick_max_us": ctl.tick_max_us, "faults": ctl.faults, "rx_errors": app.rx_errors,
            "store_errors": rec.errors, "tx_errors": app.tx_errors, "cycles": rec.cycles,
            "log_entries": rec.log_next, "used_cartridges": len(rec.used), "tm_dropped": app.tm_dropped,
            "profiles_dropped": rec.profiles_dropped,
        },
    }
    if board.clock_factor_x100:
        reply["clock_factor_x100"] = board.clock_factor_x100
    reply.update(app.clinical.info())      # S16-S20: ceiling, key provisioned (never the key), clock, lock
    return reply


def op_timing(app, body):
    """Tick lateness histogram, overruns, longest tick, longest answer per op."""
    app.board.sync()
    loop = app.loop
    hist = loop.late_hist
    last = len(hist)
    while last and not hist[last - 1]:
        last -= 1
    # Counts per bucket (bucket i: lateness i*bucket_us up to (i+1)*bucket_us), trailing
    # empty buckets left out: always fits one frame.
    reply = {"bucket_us": lim.LATE_BUCKET_US, "hist": list(hist[:last]), "ticks": loop.ticks,
             "overruns": app.ctl.overruns, "tick_max_us": app.ctl.tick_max_us,
             "tick_mean_us": loop.cost_sum_us // loop.cost_count if loop.cost_count else 0,
             "period_us": lim.TICK_US, "request_max_us": dict(app.req_max_us)}
    if body.get("reset") is True:
        loop.reset_req += 1        # core 1 zeroes its own statistics at its next tick
        app.req_max_us = {}
    return reply


def op_mem(app, body):
    """Live heap after a full collection (bytes), and the largest seen so far."""
    gc.collect()
    live = gc.mem_alloc()
    if live > app.heap_live_max:
        app.heap_live_max = live
    return {"live": live, "free": gc.mem_free(), "live_max": app.heap_live_max}


def op_profile_put(app, body):
    _require_not_running(app)
    profile = check_profile(body.get("profile"))
    app.clinical.check_profile(profile)    # S16: not deeper than the pen's ceiling
    rec = app.rec
    kept = [p for p in rec.profiles if p["name"] != profile["name"]]
    if len(kept) >= lim.PROFILES_MAX:
        raise PenError(proto.E_PROFILES_FULL, "the pen holds at most %d profiles" % lim.PROFILES_MAX)
    rec.commit(REC_PROFILES, profiles=kept + [profile])
    return {"profile": profile}


def op_profile_list(app, body):
    return {"profiles": app.rec.profiles, "active": app.rec.active}


def op_profile_use(app, body):
    _require_not_running(app)
    name = check_name(body.get("name"))
    app.clinical.check_profile(_find_profile(app, name))   # S16: the ceiling may have been lowered
    app.rec.commit(REC_PROFILES, active=name)
    return {"active": name}


def op_profile_rm(app, body):
    _require_not_running(app)
    name = check_name(body.get("name"))
    profile = _find_profile(app, name)
    rec = app.rec
    rec.commit(REC_PROFILES, profiles=[p for p in rec.profiles if p is not profile],
               active=None if rec.active == name else rec.active)
    return {"removed": name, "active": rec.active}


def op_sterilise_start(app, body):
    _refuse_if_fault(app)
    if app.ctl.state == c.BOOT:
        raise PenError(proto.E_BUSY, "the pen is still homing")
    _require_not_running(app)
    if not app.board.lid_closed():
        raise PenError(proto.E_LID_OPEN, "close the dock lid to sterilise")
    rec = app.rec
    if rec.unlocked:
        # A new cycle replaces a previous unlock: the pen is LOCKED until it completes, in
        # flash too, so neither an aborted cycle nor a power cut mid-cycle leaves the old
        # unlock behind (S5, S7).
        rec.commit(REC_LOCKOUT, unlocked=False)
    _command(app, c.CMD_STERILISE)
    app.last_steril = {"result": "running", "reason": "NONE"}
    return {"dose_target": lim.UV_DOSE_TARGET}


def op_sterilise_status(app, body):
    app.board.sync()
    ctl = app.ctl
    return {
        "state": c.STATE_NAMES[ctl.state],
        "result": app.last_steril["result"],
        "reason": app.last_steril["reason"],
        "dose_pm": ctl.uv_dose * 1000 // lim.UV_DOSE_TARGET,
        "elapsed_ms": ctl.steril_ms,
        "uv_pm": ctl.uv_pm,
        "unlocked": app.rec.unlocked,
    }


def op_sterilise_cancel(app, body):
    _command(app, c.CMD_STERIL_CANCEL)
    return {}


def _run_ms(body):
    """session_start's optional `run_ms`: the pen ends the session itself after that much pen
    time (S8's mechanism, END TIME_LIMIT), so a host that dies or lags cannot prolong it."""
    run_ms = body.get("run_ms")
    if run_ms is None:
        return None
    if not isinstance(run_ms, int) or isinstance(run_ms, bool) or not 1 <= run_ms <= lim.SESSION_MAX_S * 1000:
        raise PenError(proto.E_DURATION_RANGE, "run_ms must be an integer 1-%d ms" % (lim.SESSION_MAX_S * 1000))
    return run_ms


def op_session_start(app, body):
    """Every check first, with nothing written (state, profile, ceiling, interval and clock,
    cartridge present, its ID, its own used mark, the pen's used list); then the cartridge's
    mark, the session time, the unlock, the used list and the log entry; then the motor."""
    rec = app.rec
    _refuse_if_fault(app)
    state = app.ctl.state
    if state == c.LOCKED or (state == c.BOOT and not rec.unlocked):
        raise PenError(proto.E_LOCKED, "the pen is locked: run a sterilisation cycle first")
    if state != c.READY:
        raise PenError(proto.E_BUSY, "cannot start a session while %s" % c.STATE_NAMES[state])
    run_ms = _run_ms(body)
    name = body.get("profile")
    if name is None:
        name = rec.active
        if name is None:
            raise PenError(proto.E_NO_PROFILE, "no active profile: push one and 'profile use' it")
    profile = _find_profile(app, check_name(name))
    try:
        profile = check_profile(profile)   # S13: validated again before it drives anything
    except ProfileError as exc:
        raise PenError(proto.E_STORE_CORRUPT, "profile '%s' in flash is invalid (%s): push it again"
                       % (name, exc.field))
    if not rec.cartridges_ok:
        raise PenError(proto.E_STORE_CORRUPT, "the used-cartridge list is unreadable; service the pen")
    cart = app.board.cartridge_id()
    if cart is None or not app.board.cartridge_present():
        raise PenError(proto.E_NO_CARTRIDGE, "insert a fresh cartridge")
    check_cartridge_id(cart)
    clinical = app.clinical
    clinical.check_session(profile, cart)  # S16 ceiling, S18 interval and clock, S19 the cartridge's mark
    if cart in rec.used:                   # S6: the pen's own list, the second barrier
        raise PenError(proto.E_CARTRIDGE_USED, "cartridge %s was already used on this pen: insert a fresh one"
                       % cart)
    # S19: the mark goes on the cartridge first. If it cannot be written the session is refused
    # with nothing written on the pen: it stays READY with its unlock (no needle moved), and
    # the cartridge is to be discarded (a torn mark reads as used). Then the session time (S18).
    limit_ms = profile["max_session_s"] * 1000      # S8: the profile's limit, or the host's shorter run
    if run_ms is not None and run_ms < limit_ms:
        limit_ms = run_ms
    clinical.session_starting(profile, cart)
    # Consume the unlock and record the cartridge before the motor can run (S5, S6): a
    # crash from here on leaves the pen LOCKED.
    try:
        rec.commit(REC_LOCKOUT, unlocked=False)
        rec.commit(REC_CARTRIDGES, used=(rec.used + [cart])[-lim.USED_CARTRIDGES_MAX:])
        entry = rec.log({"kind": "session", "profile": profile["name"], "depth_um": profile["depth_um"],
                         "stroke_hz": profile["stroke_hz"], "max_session_s": profile["max_session_s"],
                         "limit_ms": limit_ms, "cartridge": cart, "start_ms": app.now_ms(), "end": c.END_INTERRUPTED,
                         "duration_ms": 0, "strokes": 0})
    except StoreError:
        clinical.session_ended(profile["name"], False)   # no treatment: its interval time given back
        raise
    app.session = entry
    try:
        _command(app, c.CMD_SESSION_START, profile["depth_um"], profile["stroke_hz"], limit_ms)
    except PenError:
        # The control core refused after the records were written (its state changed in
        # between): the unlock stays spent (fail closed); the entry says the session never ran.
        app.session = None
        entry["end"] = "NOT_STARTED"
        rec.log_safely(entry)
        clinical.session_ended(profile["name"], False)
        raise
    entry["start_ms"] = app.full_ms(app.ctl.session_start_ms)   # when core 1 started it (S8 counts from here)
    return {"session": entry["id"], "profile": profile["name"], "cartridge": cart, "t_ms": entry["start_ms"],
            "limit_ms": limit_ms}


def op_session_stop(app, body):
    _command(app, c.CMD_SESSION_STOP)
    return {"session": app.session["id"] if app.session else None}


def op_telemetry(app, body):
    on = body.get("on")
    if not isinstance(on, bool):
        raise PenError(proto.E_BAD_REQUEST, "'on' must be true or false")
    if not on:
        app.tm_on = False
        app.tm_left = 0
        return {"on": False}
    lease = body.get("lease", lim.TELEMETRY_LEASE_DEFAULT)
    if type(lease) is not int or not 1 <= lease <= lim.TELEMETRY_LEASE_MAX:
        raise PenError(proto.E_BAD_REQUEST, "'lease' must be 1-%d samples" % lim.TELEMETRY_LEASE_MAX)
    sub = body.get("sub")
    if sub is not None:
        # Renewal of the running subscription: same stream, `lease` more samples.
        if not app.tm_on or sub != app.tm_sub:
            raise PenError(proto.E_NO_SUBSCRIPTION, "telemetry subscription %r is not running" % (sub,))
        app.tm_left = lease
        return {"on": True, "sub": sub, "lease": lease, "from": app.tm_from}
    # A new subscription, from the next sample on: nothing recorded before this request.
    app.board.sync()
    app.tm_sub = app.tm_next_sub
    app.tm_next_sub = app.tm_next_sub % 0xFFFFFF + 1
    app.tm_on = True
    app.tm_left = lease
    app.tm_sent = app.ctl.tm_count
    app.tm_from = app.tm_sent
    return {"on": True, "sub": app.tm_sub, "lease": lease, "from": app.tm_from, "t_ms": app.now_ms(),
            "period_ms": lim.TELEMETRY_PERIOD_MS, "fields": TM_FIELD_NAMES}


def op_log_read(app, body):
    start = body.get("from", 0)
    count = body.get("count", 4)
    if type(start) is not int or type(count) is not int or start < 0 or count < 1:
        raise PenError(proto.E_BAD_REQUEST, "'from' and 'count' must be non-negative integers")
    entries, next_id = app.rec.log_page(start, count)
    return {"entries": entries, "next": next_id, "end": app.rec.log_next}


def op_fault_clear(app, body):
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > _REASON_MAX:
        raise PenError(proto.E_BAD_REQUEST, "a reason of 1-%d characters is required" % _REASON_MAX)
    if _state(app) != c.FAULT:
        raise PenError(proto.E_NO_FAULT, "there is no latched fault to clear")
    rec = app.rec
    # Core 1 checks that the cause is gone (FAULT_PRESENT otherwise) and starts homing.
    cause = _command(app, c.CMD_FAULT_CLEAR, c.READY if rec.unlocked else c.LOCKED)
    cleared = c.FAULT_NAMES[cause]
    try:
        rec.log({"kind": "fault_clear", "fault": cleared, "reason": reason, "t_ms": app.now_ms()})
        rec.clear_fault(app.now_ms())
    except StoreError:
        # Flash still holds the latch: latch it again in RAM too (fail closed).
        app.command(c.CMD_FAULT, cause)
        raise
    return {"cleared": cleared}


def op_clinical(app, body):
    """auth_nonce, key_provision, ceiling_set, clock_set, interval_override, audit_read (S16-S20,
    docs/clinical.md): pen.clinical answers them."""
    return app.clinical.handle(body["op"], body)


TM_FIELD_NAMES = [field[0] for field in proto.TM_LAYOUT]

HANDLERS = {
    "ping": op_ping,
    "info": op_info,
    "timing": op_timing,
    "mem": op_mem,
    "profile_put": op_profile_put,
    "profile_list": op_profile_list,
    "profile_use": op_profile_use,
    "profile_rm": op_profile_rm,
    "sterilise_start": op_sterilise_start,
    "sterilise_status": op_sterilise_status,
    "sterilise_cancel": op_sterilise_cancel,
    "session_start": op_session_start,
    "session_stop": op_session_stop,
    "telemetry": op_telemetry,
    "log_read": op_log_read,
    "fault_clear": op_fault_clear,
}
for _op in Clinical.OPS:
    HANDLERS[_op] = op_clinical
