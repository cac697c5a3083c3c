"""`Pen`: the pen's command set as a Python library, in host units.

    from penctl import Pen

    with Pen("/dev/ttyACM0") as pen:          # or Pen() to auto-detect
        print(pen.info()["state"])
        pen.profile_push(penctl.profiles.load_file("profiles/scalp.toml"))
        pen.profile_use("scalp-crown")
        pen.sterilise()                         # waits for the UV cycle (60 s)
        result = pen.session_run(30, on_sample=print)

Every method raises a `penctl.errors` exception: PenRefused (the pen said no:
`.code`, `.message`, `.field`), LinkError (port, timeout, disconnect),
ProtocolError (unexpected frames or protocol version), UsageError (bad
arguments, checked before anything is sent).

Returned dicts are in host units (mm, Hz, degC, V, s); the wire carries
integers (um, cHz, cdegC, mV, ms).
"""

import os
import time

from penctl.firmware.pen.limits import PROFILES_MAX, PROTOCOL_VERSION
from penctl import profiles as host_profiles
from penctl import telemetry as tm
from penctl.discover import resolve_port
from penctl.errors import LinkError, PenRefused, ProtocolError, UsageError
from penctl.transport import SerialLink

_REASON_MAX = 64
_LOG_PAGE = 4


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

    #: pause between sterilise_status polls, s
    STERILISE_POLL_S = 0.25
    #: give up waiting for a sterilisation result after this long (the pen aborts at 120 s)
    STERILISE_WAIT_S = 180.0

    def __init__(self, port=None, timeout=None, open_timeout=None, connect=True):
        self.port = resolve_port(port)
        self.link = SerialLink(self.port, request_timeout=timeout,
                               open_timeout=open_timeout if open_timeout is not None else timeout)
        self.protocol = None
        self._sub = None
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

    def request(self, op, timeout=None, **fields):
        """Send one op; return the response body without "ok"; PenRefused if the pen said no."""
        body = dict(fields)
        body["op"] = op
        response = self.link.request(body, timeout=timeout)
        ok = response.get("ok")
        if ok is True:
            return {k: v for k, v in response.items() if k != "ok"}
        if ok is False:
            code = response.get("code") or "REFUSED"
            message = response.get("msg") or "the pen refused '%s'" % op
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

    def info(self):
        raw = self.request("info")
        limits = raw.get("limits") or {}
        counters = raw.get("counters") or {}
        out = {
            "firmware": raw.get("firmware"),
            "protocol": raw.get("protocol"),
            "board": raw.get("board"),
            "serial": raw.get("serial"),
            "state": raw.get("state"),
            "fault": raw.get("fault"),
            "unlocked": raw.get("unlocked"),
            "depth_mm": _mm(raw.get("depth_um")),
            "depth_set_mm": _mm(raw.get("depth_set_um")),
            "stroke_hz": _hz(raw.get("hz_chz")),
            "stroke_hz_set": _hz(raw.get("hz_set_chz")),
            "profile": raw.get("profile"),
            "clock": raw.get("clock"),
            "limits": {
                "depth_min_mm": _mm(limits.get("depth_min_um")),
                "depth_max_mm": _mm(limits.get("depth_max_um")),
                "depth_step_mm": _mm(limits.get("depth_step_um")),
                "hz_min": limits.get("hz_min"),
                "hz_max": limits.get("hz_max"),
                "session_min_s": limits.get("session_min_s"),
                "session_max_s": limits.get("session_max_s"),
            },
            "counters": dict(counters),
        }
        if "uptime_ms" in counters:
            out["counters"]["uptime_s"] = _s(out["counters"].pop("uptime_ms"))
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

    def session_start(self, profile=None):
        if profile is not None:
            check_profile_name(profile)
            return self.request("session_start", profile=profile)
        return self.request("session_start")

    def session_stop(self):
        return self.request("session_stop")

    #: samples a telemetry subscription may send before penctl renews it (docs/design.md §3.4)
    TELEMETRY_LEASE = 250

    def telemetry_on(self, on=True, lease=None):
        """Start a new telemetry subscription (on=True) or end it. Events queued before the
        subscription are discarded: only its own samples (`sub`, `n` >= `from`) are returned."""
        if not on:
            self._sub = None
            return self.request("telemetry", on=False)
        self.link.drain_events()            # whatever an earlier client left queued is stale
        reply = self.request("telemetry", on=True, lease=lease or self.TELEMETRY_LEASE)
        for key in ("sub", "from", "lease"):
            if not isinstance(reply.get(key), int):
                raise ProtocolError("telemetry reply without %r: %r" % (key, reply))
        fields = reply.get("fields")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ProtocolError("telemetry reply without a field list: %r" % (reply,))
        self._sub = {"sub": reply["sub"], "from": reply["from"], "lease": reply["lease"],
                     "renewed_at": reply["from"], "fields": tuple(fields), "t_ms": reply.get("t_ms")}
        return reply

    def _own_sample(self, body):
        """The row of a `tm` event of our subscription (renewing the lease when half used), else None."""
        sub = getattr(self, "_sub", None)
        n = body.get("n")
        if sub is None or body.get("sub") != sub["sub"] or not isinstance(n, int) or n < sub["from"]:
            return None                      # another (stale) subscription's sample
        try:
            row = tm.row_from_sample(body.get("s"), sub["fields"])
        except ValueError as exc:
            raise ProtocolError("bad telemetry event %r: %s" % (body, exc)) from None
        if n - sub["renewed_at"] >= sub["lease"] // 2:
            sub["renewed_at"] = n
            self.request("telemetry", on=True, lease=sub["lease"], sub=sub["sub"])
        return n, row

    def _quietly(self, func, *args):
        try:
            return func(*args)
        except (PenRefused, LinkError, ProtocolError):
            return None

    def _stream(self, seconds, on_sample, stop_on_session_end=False, session=None):
        """Collect telemetry rows for `seconds` of pen time (telemetry must be on).

        Returns (rows, info) where info has sample_gaps, event_gaps and, if one
        arrived, session_end (the event body). Stops early at a session_end
        event when `stop_on_session_end`.
        """
        rows = []
        info = {"sample_gaps": 0, "session_end": None, "faults": []}
        t_end = None
        last_n = None
        quiet_limit = max(self.link.REQUEST_TIMEOUT_S, 1.0)
        last_data = time.monotonic()
        gaps_before = self.link.event_gaps
        while True:
            event = self.link.next_event(0.1)
            now = time.monotonic()
            if event is None:
                if now - last_data > quiet_limit:
                    raise LinkError("telemetry stopped: nothing from the pen on %s for %.0f s"
                                    % (self.port, quiet_limit))
                continue
            last_data = now
            _seq, body = event
            kind = body.get("ev")
            if kind == "tm":
                own = self._own_sample(body)
                if own is None:
                    continue
                n, row = own
                if last_n is not None and n > last_n + 1:
                    info["sample_gaps"] += n - last_n - 1
                last_n = n
                rows.append(row)
                if on_sample is not None:
                    on_sample(row)
                if t_end is None:
                    t_end = row["t_s"] + seconds
                if row["t_s"] >= t_end:
                    break
            elif kind == "session_end":
                if session is not None and body.get("id") != session:
                    continue                     # not the session this call started
                info["session_end"] = body
                if stop_on_session_end:
                    break
            elif kind == "fault":
                info["faults"].append(body.get("fault"))
        info["event_gaps"] = self.link.event_gaps - gaps_before
        return rows, info

    def telemetry(self, seconds, on_sample=None):
        """Stream telemetry for `seconds` of pen time; returns {"rows": [...], "samples", "gaps"...}."""
        seconds = self._check_seconds(seconds)
        self.telemetry_on(True)
        try:
            rows, info = self._stream(seconds, on_sample)
        finally:
            self._quietly(self.telemetry_on, False)
        return {"samples": len(rows), "seconds": seconds, "sample_gaps": info["sample_gaps"],
                "event_gaps": info["event_gaps"], "rows": rows}

    @staticmethod
    def _check_seconds(seconds):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:
            raise UsageError("seconds must be a number > 0 (got %r)" % (seconds,), code="SECONDS")
        return seconds

    def session_run(self, seconds, on_sample=None, profile=None):
        """Start a session, stream telemetry for `seconds` of pen time (or until the pen ends
        the session), stop it. The session is stopped whatever happens (exceptions,
        KeyboardInterrupt). Returns a summary with "rows" and "end_reason"."""
        seconds = self._check_seconds(seconds)
        if profile is not None:
            check_profile_name(profile)
        self.telemetry_on(True)
        started = None
        rows = []
        try:
            started = self.session_start(profile)
            rows, info = self._stream(seconds, on_sample, stop_on_session_end=True,
                                      session=started.get("session"))
            end = info["session_end"]
            if end is None:
                self._quietly(self.session_stop)
                end = self._wait_session_end(rows, on_sample, info, started.get("session"))
        except BaseException:
            if started is not None:
                self._quietly(self.session_stop)
            self._quietly(self.telemetry_on, False)
            raise
        self._quietly(self.telemetry_on, False)
        return {
            "session": started.get("session"),
            "profile": started.get("profile"),
            "cartridge": started.get("cartridge"),
            "end_reason": end.get("reason") if end else None,
            "duration_s": _s(end.get("duration_ms")) if end else None,
            "strokes": end.get("strokes") if end else None,
            "faults": info["faults"],
            "samples": len(rows),
            "sample_gaps": info["sample_gaps"],
            "event_gaps": info["event_gaps"],
            "rows": rows,
        }

    def _wait_session_end(self, rows, on_sample, info, session):
        """After session_stop: keep rows until our session's session_end event (needles retracted)."""
        deadline = time.monotonic() + self.link.REQUEST_TIMEOUT_S
        while time.monotonic() < deadline:
            event = self.link.next_event(0.1)
            if event is None:
                continue
            body = event[1]
            if body.get("ev") == "tm":
                own = self._own_sample(body)
                if own is None:
                    continue
                rows.append(own[1])
                if on_sample is not None:
                    on_sample(own[1])
            elif body.get("ev") == "session_end" and body.get("id") == session:
                return body
            elif body.get("ev") == "fault":
                info["faults"].append(body.get("fault"))
        return None

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
