"""`Pen`: the pen's command set as a Python library, in host units.

    from penctl import Pen

    with Pen("/dev/ttyACM0") as pen:          # or Pen() to auto-detect, Pen(serial_number="E66...")
        print(pen.info()["state"])
        pen.profile_push("profiles/scalp.toml")
        pen.profile_use("scalp-crown")
        pen.sterilise()                         # waits for the UV cycle (60 s)
        result = pen.session_run(30, on_sample=print)

Every method raises a `penctl.errors` exception: PenRefused (the pen said no:
`.code`, `.message`, `.field`), LinkError (port, timeout, disconnect),
ProtocolError (unexpected frames or protocol version), UsageError (bad
arguments, checked before anything is sent).

Returned dicts are in host units (mm, Hz, degC, V, s); the wire carries
integers (um, cHz, cdegC, mV, ms). Nothing older than the call is acted on
(docs/design.md §3.3): see penctl.transport and penctl.streaming.
"""

import math
import os
import time

from penctl import profiles as host_profiles
from penctl import streaming
from penctl.clinical import clinical_info_to_host
from penctl.discover import resolve_port
from penctl.errors import LinkError, PenRefused, ProtocolError, UsageError
from penctl.firmware.pen import limits as lim
from penctl.firmware.pen.limits import PROFILES_MAX, PROTOCOL_VERSION
from penctl.tracing import log
from penctl.transport import SerialLink

_REASON_MAX = 64
_LOG_PAGE = 4
#: needles retracted: within the depth tolerance of the retracted position (docs/design.md S2, S9)
RETRACTED_MAX_UM = lim.DEPTH_TOL_UM
#: states in which no session runs and the motor may not run (docs/design.md §4: `session stop`)
ENDED_STATES = ("LOCKED", "FAULT")
#: the longest `session run --seconds` (a session never outlasts the longest profile)
SESSION_RUN_MAX_S = lim.SESSION_MAX_S
#: `session run`'s ended_by when the pen did not end the session at the time asked and penctl did
BACKSTOP = "penctl's backstop"
#: the longest `telemetry --seconds`: an hour is 180 000 rows held in memory until written
TELEMETRY_MAX_S = 3600


def _mm(um):
    return um / 1000 if isinstance(um, int) and not isinstance(um, bool) else None


def _hz(chz):
    return chz / 100 if isinstance(chz, int) and not isinstance(chz, bool) else None


def _s(ms):
    return ms / 1000 if isinstance(ms, int) and not isinstance(ms, bool) else None


def check_profile_name(name):
    """`name` if it is a valid profile name, else UsageError (nothing is sent)."""
    message = host_profiles._field_error("name", name)
    if message:
        raise UsageError("profile " + message, code="NAME_INVALID")
    return name


def check_reason(reason):
    """A fault-clear reason: 1-64 printable ASCII characters, not blank; else UsageError."""
    if (not isinstance(reason, str) or not reason.strip() or len(reason) > _REASON_MAX
            or not reason.isascii() or not reason.isprintable()):
        raise UsageError("--reason must be 1-%d printable ASCII characters saying why the fault may be cleared"
                         % _REASON_MAX, code="REASON")
    return reason


def check_seconds(seconds, maximum, what="seconds"):
    """A duration in seconds, 0 < seconds <= maximum (finite), else UsageError naming the range."""
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
            or not 0 < seconds <= maximum):
        raise UsageError("%s must be a number of seconds in the range 0 < N <= %g, not %r"
                         % (what, maximum, seconds), code="SECONDS")
    return seconds


def log_entry_to_host(entry):
    """Session-log entry: *_um -> *_mm, *_ms -> *_s; other fields unchanged."""
    out = {}
    for key, value in entry.items():
        if key.endswith("_um"):
            out[key[:-3] + "_mm"] = _mm(value)
        elif key.endswith("_ms"):
            out[key[:-3] + "_s"] = _s(value)
        else:
            out[key] = value
    return out


class Pen:
    """A connection to one pen (real or virtual). A context manager."""
    # About 420 lines: it is the library's whole surface, one short method per pen operation
    # (the CLI, the HIL suite and scripts call these); the framing is in transport.py, the
    # streaming in streaming.py, the clinical operations in clinical.py.

    #: pause between sterilise_status polls, s
    STERILISE_POLL_S = 0.25
    #: give up waiting for a sterilisation result after this long (the pen aborts at 120 s)
    STERILISE_WAIT_S = 180.0
    #: `session stop` / the end of `session run`: wait this long for the pen to confirm the end
    STOP_TIMEOUT_S = 10.0
    #: pause between `info` polls while waiting for a session to end
    STOP_POLL_S = 0.1
    #: once `info` shows a session over, how long to wait for its `session_end` event
    END_EVENT_GRACE_S = 0.5
    #: `session run`: the pen ends the session at the time asked (session_start's run_ms); the host
    #: stops it itself only if it still runs this much pen time later (more than a retraction)
    RUN_BACKSTOP_MS = 2000

    def __init__(self, port=None, timeout=None, open_timeout=None, connect=True, serial_number=None,
                 trace=None):
        self.port = resolve_port(port, serial_number)
        self.link = SerialLink(self.port, request_timeout=timeout,
                               open_timeout=open_timeout if open_timeout is not None else timeout, trace=trace)
        self.protocol = None
        if connect:
            self.connect()

    # ---- connection ----

    def connect(self):
        """Open the port and check that the pen speaks our protocol version."""
        if not self.link.is_open:
            self.link.open()
        try:
            self.ping(timeout=self.link.OPEN_TIMEOUT_S)
        except BaseException:
            self.link.close()
            raise
        return self

    def close(self):
        self.link.close()

    def __enter__(self):
        if not self.link.is_open:
            self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- requests ----

    def request(self, op, timeout=None, fresh_events=False, **fields):
        """Send one op; return the response body without "ok"; PenRefused if the pen said no."""
        body = dict(fields)
        body["op"] = op
        log.info("request %s", op)
        response = self.link.request(body, timeout=timeout, fresh_events=fresh_events)
        ok = response.get("ok")
        if ok is True:
            return {k: v for k, v in response.items() if k != "ok"}
        if ok is False:
            code = response.get("code") or "REFUSED"
            message = response.get("msg") or "the pen refused '%s'" % op
            log.info("the pen refused %s: %s", op, code)
            if isinstance(code, str) and code.startswith("FRAME_"):
                raise ProtocolError("the pen could not read our '%s' request: %s (%s)" % (op, message, code))
            raise PenRefused(code, message, response.get("field"))
        raise ProtocolError("reply to '%s' has no ok field: %r" % (op, response))

    def ping(self, timeout=None):
        """Handshake: the pen answers and speaks PROTOCOL_VERSION, else ProtocolError."""
        reply = self.request("ping", timeout=timeout)
        protocol = reply.get("protocol")
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError("the pen speaks protocol version %s, this penctl speaks %d: update "
                                "penctl, or run `penctl flash` for matching firmware" % (protocol, PROTOCOL_VERSION))
        self.protocol = protocol
        return reply

    handshake = ping

    _INFO_CONVERTED = ("depth_um", "depth_set_um", "hz_chz", "hz_set_chz", "limits", "counters",
                       "depth_ceiling_um", "utc_s", "audit_next")   # the clinical ones: penctl.clinical

    def info(self):
        """`info` in host units; fields this penctl does not convert are passed through unchanged."""
        raw = self.request("info")
        limits = raw.get("limits") or {}
        counters = dict(raw.get("counters") or {})
        out = {k: v for k, v in raw.items() if k not in self._INFO_CONVERTED}
        out.update({
            "depth_mm": _mm(raw.get("depth_um")),
            "depth_set_mm": _mm(raw.get("depth_set_um")),
            "stroke_hz": _hz(raw.get("hz_chz")),
            "stroke_hz_set": _hz(raw.get("hz_set_chz")),
            "limits": {
                "depth_min_mm": _mm(limits.get("depth_min_um")),
                "depth_max_mm": _mm(limits.get("depth_max_um")),
                "depth_step_mm": _mm(limits.get("depth_step_um")),
                "hz_min": limits.get("hz_min"),
                "hz_max": limits.get("hz_max"),
                "session_min_s": limits.get("session_min_s"),
                "session_max_s": limits.get("session_max_s"),
            },
            "counters": counters,
        })
        out.update(clinical_info_to_host(raw))   # S16-S20: ceiling, key provisioned (never the key), clock, lock
        for key in ("firmware", "protocol", "board", "serial", "state", "fault", "unlocked", "profile", "clock"):
            out.setdefault(key, None)
        if "uptime_ms" in counters:
            counters["uptime_s"] = _s(counters.pop("uptime_ms"))
        return out

    def state(self):
        return self.request("info").get("state")

    # ---- profiles ----

    def profile_list(self):
        raw = self.request("profile_list")
        return {"profiles": [host_profiles.to_host(p) for p in raw.get("profiles") or []],
                "active": raw.get("active")}

    def profile_push(self, profiles):
        """Store profiles on the pen (same name: replaced).

        `profiles`: a TOML file path, or a list of dicts in host units (name, depth_mm, stroke_hz,
        max_session_s) or wire units (depth_um instead of depth_mm). All are
        validated before the first is sent; the pen's capacity is checked too.
        Returns the names pushed.
        """
        if isinstance(profiles, (str, os.PathLike)):
            profiles = [host_profiles.to_host(p) for p in host_profiles.load_file(profiles)]
        host_tables = []
        for profile in profiles:
            if isinstance(profile, dict) and "depth_um" in profile and "depth_mm" not in profile:
                profile = host_profiles.to_host(profile) | {k: v for k, v in profile.items()
                                                            if k not in ("depth_um", "depth_mm")}
            host_tables.append(profile)
        wire_profiles = host_profiles.validate_profiles(host_tables, source="profile_push")
        # S16: the pen refuses profiles deeper than its ceiling; say so before the first is stored.
        ceiling_um = self.request("info").get("depth_ceiling_um")
        deeper = [p for p in wire_profiles if isinstance(ceiling_um, int) and p["depth_um"] > ceiling_um]
        if deeper:
            raise PenRefused("DEPTH_CEILING", "%s deeper than this pen's depth ceiling of %s mm; nothing was stored "
                             "(the clinician can change it: penctl ceiling set MM --key-file F)" % (
                                 ", ".join("profile '%s' (%s mm) is" % (p["name"], _mm(p["depth_um"]))
                                           for p in deeper), _mm(ceiling_um)), "depth_mm")
        on_pen = {p["name"] for p in self.profile_list()["profiles"]}
        total = len(on_pen | {p["name"] for p in wire_profiles})
        if total > PROFILES_MAX:
            raise PenRefused("PROFILES_FULL", "the pen holds at most %d profiles; it has %d and this "
                             "would make %d: remove some first (profile rm)" % (PROFILES_MAX, len(on_pen), total))
        pushed = []
        for profile in wire_profiles:
            try:
                self.request("profile_put", profile=profile)
            except PenRefused as exc:
                if pushed:
                    exc.message = "%s (after %d of %d profiles were stored: %s)" % (
                        exc.message, len(pushed), len(wire_profiles), ", ".join(pushed))
                    exc.args = (exc.message,)
                raise
            pushed.append(profile["name"])
        return pushed

    def profile_use(self, name):
        return self.request("profile_use", name=check_profile_name(name))

    def profile_rm(self, name):
        return self.request("profile_rm", name=check_profile_name(name))

    # ---- sterilisation ----

    def sterilise_status(self):
        raw = self.request("sterilise_status")
        return {
            "state": raw.get("state"),
            "result": raw.get("result"),
            "reason": raw.get("reason"),
            "dose": raw["dose_pm"] / 1000 if isinstance(raw.get("dose_pm"), int) else None,
            "elapsed_s": _s(raw.get("elapsed_ms")),
            "uv_intensity": raw["uv_pm"] / 1000 if isinstance(raw.get("uv_pm"), int) else None,
            "unlocked": raw.get("unlocked"),
        }

    def sterilise_cancel(self):
        return self.request("sterilise_cancel")

    def sterilise(self, wait=True, progress=None):
        """Start a UV cycle; with wait, poll until it completes (returns the status) or aborts
        (PenRefused with the abort reason as code). `progress(status)` is called per poll.
        Interrupting the wait (KeyboardInterrupt) cancels the cycle."""
        self.request("sterilise_start")
        if not wait:
            return self.sterilise_status()
        deadline = time.monotonic() + self.STERILISE_WAIT_S
        try:
            while True:
                status = self.sterilise_status()
                if progress is not None:
                    progress(status)
                if status["result"] != "running" and status["state"] != "STERILISING":
                    break
                if time.monotonic() > deadline:
                    raise LinkError("the sterilisation cycle did not finish within %d s"
                                    % self.STERILISE_WAIT_S)
                time.sleep(self.STERILISE_POLL_S)
        except KeyboardInterrupt:
            self._quietly(self.sterilise_cancel)
            raise
        if status["result"] != "done":
            reason = status["reason"] or "ABORTED"
            raise PenRefused(reason, "sterilisation cycle aborted (%s): the pen stays locked%s"
                             % (reason, " - close the dock lid and try again" if reason == "LID_OPEN" else ""))
        return status

    # ---- sessions ----

    def session_start(self, profile=None, run_ms=None):
        """Start a session with `profile` (default: the active one). `run_ms`: the pen ends it
        itself after that many ms of pen time (1 ms to 1800 s; never beyond max_session_s)."""
        fields = {}
        if profile is not None:
            fields["profile"] = check_profile_name(profile)
        if run_ms is not None:
            if isinstance(run_ms, bool) or not isinstance(run_ms, int) or not 1 <= run_ms <= SESSION_RUN_MAX_S * 1000:
                raise UsageError("run_ms must be an integer 1-%d ms" % (SESSION_RUN_MAX_S * 1000))
            fields["run_ms"] = run_ms
        return self.request("session_start", **fields)

    def session_stop(self, wait=True, timeout=None):
        """Stop the running session. With `wait` (default), return only once the pen confirms the
        end: motor off, needles retracted, state LOCKED or FAULT (see wait_session_ended)."""
        reply = self.request("session_stop")
        if not wait:
            return reply
        ended = self.wait_session_ended(reply.get("session"), timeout)
        return dict(reply, **ended)

    def wait_session_ended(self, session=None, timeout=None, on_event=None):
        """Wait until `info` shows the session over: state LOCKED or FAULT, motor off (frequency 0),
        needles within RETRACTED_MAX_UM. Meanwhile events go to `on_event(body)`, and this session's
        `session_end` is kept. Returns {"state", "depth_mm", "session_end"}; LinkError (exit 3) if the
        pen does not confirm it within `timeout` (default STOP_TIMEOUT_S)."""
        timeout = self.STOP_TIMEOUT_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        end = None
        raw = None
        while True:
            end = self._take_events(time.monotonic() + self.STOP_POLL_S, session, on_event) or end
            raw = self.request("info")
            depth = raw.get("depth_um")
            if (raw.get("state") in ENDED_STATES and raw.get("hz_chz") == 0 and isinstance(depth, int)
                    and abs(depth) <= RETRACTED_MAX_UM):
                log.info("session %s is over: state %s, depth %d um", session, raw["state"], depth)
                # The pen sends the session's end event in the pass that sees it end, which may
                # come just after its answer to `info`: wait briefly so the result carries it.
                grace = min(self.END_EVENT_GRACE_S, max(0.0, deadline - time.monotonic()))
                if end is None:
                    end = self._take_events(time.monotonic() + grace, session, on_event, until_end=True)
                return {"state": raw["state"], "depth_mm": _mm(depth), "session_end": end}
            if time.monotonic() >= deadline:
                state = raw.get("state") if not raw.get("fault") else "%s (%s)" % (raw.get("state"), raw.get("fault"))
                raise LinkError("the pen did not confirm the end of session %s within %g s: state %s, needles at %s "
                                "mm, motor %s Hz. Check the pen (`penctl info`); a longer --stop-timeout waits longer"
                                % (session, timeout, state, _mm(depth), _hz(raw.get("hz_chz"))))

    def _take_events(self, until, session, on_event, until_end=False):
        """Hand events to `on_event`, waiting for them until the monotonic time `until`, until a
        wait brings none; returns session `session`'s session_end event if one came. `until_end`:
        stop at that event, and at `until` even while events keep coming."""
        end = None
        while not (until_end and (end is not None or time.monotonic() >= until)):
            event = self.link.next_event(max(0.0, until - time.monotonic()))
            if event is None:
                break
            body = event[1]
            if body.get("ev") == "session_end" and session is not None and body.get("id") == session:
                end = body
            if on_event is not None:
                on_event(body)
        return end

    def _quietly(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (PenRefused, LinkError, ProtocolError) as exc:
            log.info("ignored while cleaning up: %s", exc)
            return None

    def telemetry_on(self, on=True, lease=None):
        """Low level: start a telemetry subscription (a streaming.Subscription, returned) or end it."""
        if not on:
            return self.request("telemetry", on=False)
        sub = streaming.Subscription(self, lease or streaming.LEASE_SAMPLES)
        sub.start()
        return sub

    def telemetry(self, seconds, on_sample=None, lease=None):
        """Record this command's own telemetry for `seconds` of pen time from its subscription.
        `lease`: samples the pen may send between renewals (default streaming.LEASE_SAMPLES, 5 s; up
        to the pen's maximum, 60 s): a longer one rides out a host that falls behind, and a dead
        client's stream lasts as long. Returns {"rows", "samples", "seconds", "sample_gaps",
        "stale_dropped", "restarts", "event_gaps"}; an exception carries the rows recorded so far as
        its `recording` attribute."""
        seconds = check_seconds(seconds, TELEMETRY_MAX_S)
        if lease is None:
            lease = streaming.LEASE_SAMPLES
        elif isinstance(lease, bool) or not isinstance(lease, int) or not 1 <= lease <= lim.TELEMETRY_LEASE_MAX:
            raise UsageError("lease must be an integer 1-%d samples" % lim.TELEMETRY_LEASE_MAX)
        gaps_before = self.link.event_gaps
        sub = streaming.Subscription(self, lease=lease)
        sub.start()
        recording = streaming.Recording()
        try:
            streaming.record(self, sub, recording, until_ms=sub.t_ms + round(seconds * 1000), on_sample=on_sample)
        except BaseException as exc:
            exc.recording = recording.rows      # the caller still saves what was recorded
            raise
        finally:
            sub.stop()
        return {"samples": len(recording.rows), "seconds": seconds, "sample_gaps": sub.gaps,
                "stale_dropped": sub.stale, "restarts": sub.restarts, "event_gaps": self.link.event_gaps - gaps_before,
                "rows": recording.rows}

    def session_run(self, seconds, on_sample=None, profile=None, stop_timeout=None):
        """Start a session, record telemetry until `seconds` of pen time have passed since the session
        started (or until the pen ends it), stop it and wait until the pen confirms the end. The session
        is stopped whatever happens (exceptions, KeyboardInterrupt).

        The pen ends the session itself at the time asked (session_start's run_ms, S8's precision),
        so a host that lags or dies cannot prolong it; this call stops it only as a backstop
        (RUN_BACKSTOP_MS later), and then the session is not complete: the pen did not keep the
        time. Returns a summary with "rows", "end_reason" (the pen's: TIME_LIMIT, STOPPED, FAULT,
        ...) and "complete": True only when the pen ended it at the time asked or at its
        max_session_s (TIME_LIMIT, with the limit it confirmed in `limit_ms`). An exception raised
        after the session started carries the rows recorded so far as its `recording` attribute."""
        seconds = check_seconds(seconds, SESSION_RUN_MAX_S)
        if profile is not None:
            check_profile_name(profile)
        gaps_before = self.link.event_gaps
        sub = streaming.Subscription(self)
        sub.start()
        recording = streaming.Recording()
        started = None
        waited = False
        asked_ms = max(1, round(seconds * 1000))
        try:
            started = self.session_start(profile, run_ms=asked_ms)
            session = started.get("session")
            t0 = started.get("t_ms")
            if isinstance(t0, bool) or not isinstance(t0, int):
                raise ProtocolError("session_start reply without its pen time t_ms: %r" % (started,))
            log.info("session %s started at pen time %d ms; recording until %d ms", session, t0, t0 + asked_ms)
            how = streaming.record(self, sub, recording, until_ms=t0 + asked_ms + self.RUN_BACKSTOP_MS,
                                   session=session, on_sample=on_sample)
            stopped_here = how == "time"
            if stopped_here:
                self._quietly(self.request, "session_stop")
            waited = True
            def until_end(body):     # rows up to the session's end (the needles retracted), not after
                if recording.session_end is None:
                    recording.handle(sub, body, on_sample, session)

            ended = self.wait_session_ended(session, stop_timeout, on_event=until_end)
        except BaseException as exc:
            if started is not None:
                self._quietly(self.request, "session_stop")
                if not waited:
                    self._quietly(self.wait_session_ended, started.get("session"), stop_timeout)
            sub.stop()
            exc.recording = recording.rows      # the caller still saves what was recorded
            raise
        sub.stop()
        end = recording.session_end or ended["session_end"]
        reason = end.get("reason") if end else None
        duration_ms = end.get("duration_ms") if end else None
        limit_ms = started.get("limit_ms")
        pen_limit = reason == "TIME_LIMIT" and not stopped_here and isinstance(limit_ms, int)
        ran_asked = pen_limit and limit_ms == asked_ms
        return {
            "session": started.get("session"),
            "profile": started.get("profile"),
            "cartridge": started.get("cartridge"),
            "seconds_asked": seconds,
            "start_t_s": _s(started.get("t_ms")),
            "end_reason": reason,
            "complete": pen_limit and limit_ms <= asked_ms,
            "ended_by": ("the time asked" if ran_asked
                         else "the profile's max_session_s" if pen_limit and limit_ms < asked_ms
                         else BACKSTOP if stopped_here
                         else "the pen, early" if reason else "unknown (no session_end from the pen)"),
            "duration_s": _s(duration_ms),
            "strokes": end.get("strokes") if end else None,
            "state": ended["state"],
            "faults": recording.faults,
            "samples": len(recording.rows),
            "sample_gaps": sub.gaps,
            "stale_dropped": sub.stale,
            "event_gaps": self.link.event_gaps - gaps_before,
            "rows": recording.rows,
        }

    # ---- log, faults ----

    def log(self):
        """The whole session log (oldest first), paged through log_read."""
        entries = []
        start = 0
        for _ in range(10000):
            page = self.request("log_read", **{"from": start, "count": _LOG_PAGE})
            got = page.get("entries") or []
            entries.extend(log_entry_to_host(e) for e in got)
            nxt, end = page.get("next"), page.get("end")
            if not isinstance(nxt, int) or not isinstance(end, int):
                raise ProtocolError("log_read reply without next/end: %r" % (page,))
            if nxt >= end:
                break
            if nxt <= start and not got:
                raise ProtocolError("log_read makes no progress at %d" % start)
            start = nxt
        return entries

    def fault_clear(self, reason):
        """Clear a latched fault (the reason is logged on the pen); returns {"cleared": fault}."""
        return self.request("fault_clear", reason=check_reason(reason))
