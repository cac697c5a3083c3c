"""Telemetry subscriptions and recordings, fresh by construction (docs/design.md §3.3, §3.4).

A `Subscription` is this command's own telemetry stream. A sample is used only if

- it carries this subscription's id (another client's stream, even one still running, is ignored),
- its index `n` is at least the subscription's `from` and above the last one used (no replays),
- its pen time is not older than the subscription (one sample period of slack: on the pen a sample
  may be taken while the request is handled) and never goes backwards.

Everything else is counted in `stale` and dropped. The lease is renewed when half of it is used; if
it ran out anyway (a slow link), the pen ends the stream with `tm_end` and a new subscription is
started: the samples lost meanwhile show up as gaps in `n`.

`record()` collects rows until a pen time, or until this command's own session ends.
"""

import time

from penctl import telemetry as tm
from penctl.errors import LinkError, PenRefused, ProtocolError
from penctl.firmware.pen import proto
from penctl.tracing import log

#: samples a subscription may send before it must be renewed (docs/design.md §3.4: 250 = 5 s)
LEASE_SAMPLES = 250
#: the telemetry stream silent this long (host seconds, at least the request timeout): the pen is gone
QUIET_MIN_S = 1.0
_T_MS = tm.WIRE_FIELDS[0]        # the sample's pen time field ("t_ms")


def _int(reply, key):
    value = reply.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("telemetry reply without an integer %r: %r" % (key, reply))
    return value


class Subscription:
    """This command's telemetry subscription on `pen` (a penctl.client.Pen)."""

    def __init__(self, pen, lease=LEASE_SAMPLES):
        self.pen = pen
        self.lease = lease
        self.sub = None
        self.first_n = None         # `from` of the first subscription
        self.t_ms = None            # pen time when the first subscription started
        self.period_ms = None
        self.fields = None
        self._from = None
        self._renewed_at = None
        self.last_n = None
        self.last_t_ms = None
        self.stale = 0              # samples dropped as not ours or not fresh
        self.gaps = 0               # samples missing between the ones used
        self.restarts = 0           # new subscriptions after the lease ran out

    def start(self):
        """Start a new subscription. The first time, events that arrived before its reply are dropped
        (they are older than this command); a restart keeps them (a session_end may be among them)."""
        reply = self.pen.request("telemetry", on=True, lease=self.lease, fresh_events=self.first_n is None)
        sub, start, t_ms = _int(reply, "sub"), _int(reply, "from"), _int(reply, "t_ms")
        _int(reply, "lease")
        fields = reply.get("fields")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ProtocolError("telemetry reply without a field list: %r" % (reply,))
        if _T_MS not in fields:
            raise ProtocolError("telemetry samples without pen time (%r): %r" % (_T_MS, fields))
        period = reply.get("period_ms")
        self.sub, self._from, self._renewed_at = sub, start, start
        self.fields = tuple(fields)
        self.period_ms = period if isinstance(period, int) and period > 0 else 20
        if self.first_n is None:
            self.first_n, self.t_ms = start, t_ms
        log.info("telemetry subscription %s from sample %d at pen time %d ms (lease %d samples)",
                 sub, start, t_ms, self.lease)
        return reply

    def accept(self, body):
        """The row of a `tm` event if it is a fresh sample of this subscription, else None."""
        n = body.get("n")
        if (body.get("sub") != self.sub or isinstance(n, bool) or not isinstance(n, int) or n < self._from
                or (self.last_n is not None and n <= self.last_n)):
            self.stale += 1
            return None
        sample = body.get("s")
        try:
            row = tm.row_from_sample(sample, self.fields)
        except ValueError as exc:
            raise ProtocolError("bad telemetry event %r: %s" % (body, exc)) from None
        t_ms = sample[self.fields.index(_T_MS)]
        if t_ms < self.t_ms - self.period_ms or (self.last_t_ms is not None and t_ms < self.last_t_ms):
            self.stale += 1
            return None
        if self.last_n is not None:
            self.gaps += n - self.last_n - 1
        self.last_n, self.last_t_ms = n, t_ms
        if n - self._renewed_at >= self.lease // 2:
            self._renew(n)
        return row

    def _renew(self, n):
        self._renewed_at = n
        try:
            self.pen.request("telemetry", on=True, lease=self.lease, sub=self.sub)
        except PenRefused as exc:
            if exc.code != proto.E_NO_SUBSCRIPTION:
                raise
            log.info("subscription %s ran out before it was renewed: starting a new one", self.sub)
            self.restarts += 1
            self.start()

    def ended(self, body):
        """A `tm_end` event: if it ends this subscription (its lease ran out), start a new one."""
        if body.get("sub") == self.sub:
            log.info("the pen ended subscription %s (%s): starting a new one", self.sub, body.get("reason"))
            self.restarts += 1
            self.start()

    def stop(self):
        """End the subscription; quietly (it is cleanup, and the lease ends it anyway)."""
        try:
            self.pen.request("telemetry", on=False)
        except (PenRefused, LinkError, ProtocolError) as exc:
            log.info("could not end telemetry subscription %s: %s", self.sub, exc)


class Recording:
    """Rows and what else happened while they were recorded."""

    def __init__(self):
        self.rows = []
        self.faults = []
        self.session_end = None

    def handle(self, sub, body, on_sample=None, session=None):
        """Sort one event; returns its row if it was a fresh sample of `sub`."""
        kind = body.get("ev")
        if kind == "tm":
            row = sub.accept(body)
            if row is not None:
                self.rows.append(row)
                if on_sample is not None:
                    on_sample(row)
            return row
        if kind == "tm_end":
            sub.ended(body)
        elif kind == "session_end":
            if session is not None and body.get("id") == session:
                self.session_end = body
        elif kind == "fault":
            self.faults.append(body.get("fault"))
        return None


def record(pen, sub, recording, until_ms=None, session=None, on_sample=None):
    """Record rows until a fresh sample at pen time >= `until_ms`, or until `session` ends.

    Returns "time" or "session_end". LinkError when the pen stops sending for QUIET_MIN_S (or the
    request timeout if longer)."""
    link = pen.link
    quiet_limit = max(link.REQUEST_TIMEOUT_S, QUIET_MIN_S)
    last_data = time.monotonic()
    while True:
        event = link.next_event(0.1)
        now = time.monotonic()
        if event is None:
            if now - last_data > quiet_limit:
                raise LinkError("telemetry stopped: nothing from the pen on %s for %.1f s"
                                % (pen.port, quiet_limit))
            continue
        last_data = now
        body = event[1]
        row = recording.handle(sub, body, on_sample, session)
        if recording.session_end is not None:
            return "session_end"
        if row is not None and until_ms is not None and sub.last_t_ms >= until_ms:
            return "time"
