# The pen application on core 0 (docs/design.md §2.3): requests and responses, events,
# telemetry frames, records in flash, the watchdog. The control loop runs on core 1
# (pen.loop, pen.control); this side talks to it only through the command mailbox and
# reads what it publishes (event counters, the telemetry ring) after board.sync().
# Platform-agnostic: it receives the board. Request handlers are in pen.ops.
import gc

from . import control as c
from . import limits as lim
from . import ops, proto, wire
from .clinical import Clinical
from .compat import ticks_diff
from .loop import ControlLoop
from .records import GuardedStore, Records
from .store import Store, StoreError

_IDLE_US = 1000            # core 0 waits at most this long for input between passes
_RETRACT_MAX_MS = 1500     # S9: needles at the end-stop within 1.5 s after Ctrl-C or a crash
_MS_HALF = 1 << 29
_GC_EVERY_TICKS = 500      # collect while idle at most every 0.5 s of pen time
_IDLE_GC = hasattr(gc, "mem_free")   # MicroPython's heap (CPython's collector is another matter)


class App:
    def __init__(self, board):
        self.board = board
        self.ctl = c.Controller(board)
        self.loop = ControlLoop(self.ctl)
        self.rec = Records(Store(board.store_dir), self._flash_ok, wire.dumps)
        self._in = bytearray(lim.RX_BYTES_PER_PASS)   # console bytes read, not yet parsed
        self._in_len = 0
        self._in_pos = 0
        self.rx = bytearray(lim.FRAME_MAX + 1)
        self.rx_len = 0
        self.rx_overflow = False
        self.rx_start_us = 0       # pen time the request being received started
        self.rx_errors = 0
        self.tx_errors = 0         # frames the host could not take whole (or could not be encoded)
        self.tx_cut = False        # the last write was cut short
        self.event_seq = 0
        self.started = False
        self.control_ok = True     # False once core 1 failed to acknowledge a command
        # What core 0 has handled of core 1's event counters.
        self._seen = [0, 0, 0, 0, 0]   # ev_state, ev_fault, ev_session_end, ev_steril_done, ev_steril_abort
        self._wd_ticks = -1
        self._gc_ticks = 0         # core 1's tick count at the last idle collection
        # Telemetry is a lease (docs/design.md §3.4): a subscription `tm_sub` may send `tm_left`
        # more samples; the host renews it, so a client that died stops the stream.
        self.tm_on = False
        self.tm_sub = 0
        self.tm_next_sub = ops.random_int(3) or 1
        self.tm_left = 0
        self.tm_from = 0           # index of the subscription's first sample
        self.tm_sent = 0           # samples handled (sent or dropped), wraps like ctl.tm_count
        self.tm_dropped = 0        # samples not sent: the output had no room (S15) or the ring overran
        self.heap_live_max = 0     # largest live heap seen by the `mem` op
        self.req_max_us = {}       # op -> longest time from its first byte to its answer written
        self.session = None        # log entry of the running session
        self.last_steril = {"result": "none", "reason": "NONE"}
        rec = self.rec
        rec.load()
        rec.close_interrupted()    # S14: sessions a power cut ended
        # S16-S20 (docs/clinical.md): on core 0 only; its records go through the same flash
        # guard as the application's own.
        self.clinical = Clinical(GuardedStore(rec), board, pen_ms=self.now_ms, busy=self.clinical_busy,
                                 find_profile=rec.find_profile)
        self.ctl.boot(rec.fault, c.READY if rec.unlocked else c.LOCKED)

    # ---- clocks ----

    def now_ms(self):
        """Pen time since power-on, ms (core 0's clock, not wrapped)."""
        return self.board.uptime_ms()

    def full_ms(self, wrapped_ms):
        """A pen-time ms stamp of the control core (wrapped at MS_MASK) as full ms."""
        now = self.board.uptime_ms()
        return now + (((wrapped_ms - now + _MS_HALF) & lim.MS_MASK) - _MS_HALF)

    # ---- the two cores ----

    def start(self):
        """Start the control loop on core 1 (run() does it; tests may step() directly)."""
        if not self.started:
            self.started = True
            self.loop.begin(self.board.ticks_us(), self.board.uptime_ms())
            self.board.start_control(self.loop)

    def command(self, cmd, a=0, b=0, c_=0):
        """Post a command to core 1 and wait for its acknowledgement (docs/design.md §2.3).
        Returns (result, detail). Fails closed: no answer within CMD_ACK_WAIT_MS raises."""
        if not self.control_ok:
            raise ops.PenError(proto.E_INTERNAL, "the control core does not answer; power-cycle the pen")
        self.start()
        board = self.board
        ctl = self.ctl
        board.sync()
        seq = (ctl.ack_seq + 1) & 0xFFFF
        ctl.cmd = cmd
        ctl.cmd_a = a
        ctl.cmd_b = b
        ctl.cmd_c = c_
        ctl.cmd_seq = seq               # published last: the arguments are in place
        for _ in range(lim.CMD_ACK_WAIT_MS * 1000 // _IDLE_US):
            board.idle(_IDLE_US, False)
            board.sync()
            if ctl.ack_seq == seq:
                return ctl.ack_result, ctl.ack_detail
        self.control_ok = False
        board.safe_stop()
        raise ops.PenError(proto.E_INTERNAL, "the control core did not acknowledge; outputs off")

    def clinical_busy(self):
        """Clinical ops write flash: refused (BUSY) in a session or a cycle, and whenever the
        control core says the motor or the UV LED is on."""
        self.board.sync()
        return self.ctl.state in (c.RUNNING, c.STERILISING) or not self._flash_ok()

    def _flash_ok(self):
        # Flash writes stop both cores on the RP2040: only with the motor and UV off and
        # nothing about to switch them on (a session or a cycle before its end).
        ctl = self.ctl
        self.board.sync()
        if ctl.motor_on or ctl.uv_on or ctl.state == c.RUNNING:
            return False
        return ctl.state != c.STERILISING or ctl.uv_phase == c.U_DONE

    # ---- loop ----

    def run(self):
        self.start()
        try:
            while True:
                self.step()
        except BaseException as exc:   # Ctrl-C (KeyboardInterrupt) too (S9)
            self.shutdown(exc)
            raise

    def step(self):
        """One pass of core 0: what core 1 published, one request, telemetry, housekeeping,
        then wait for input (at most _IDLE_US) if there was nothing to do."""
        self.start()
        board = self.board
        self.poll_events()
        ctl = self.ctl
        busy = self._receive()
        if self.tm_on and self.tm_sent != ctl.tm_count:
            self._send_telemetry()
        board.service()
        self.clinical.service()        # nonce expiry, the wall clock's pen-time base
        ticks = self.loop.ticks
        if ticks != self._wd_ticks:    # fed only while core 1 makes progress
            self._wd_ticks = ticks
            board.watchdog_feed()
        if not busy:
            if _IDLE_GC and ((ticks - self._gc_ticks) & lim.MS_MASK) >= _GC_EVERY_TICKS:
                # Collect while idle, so a collection rarely falls inside a request (each
                # costs ~30 ms at the pen's speed; gc.mem_free() itself walks the heap).
                self._gc_ticks = ticks
                gc.collect()
            board.idle(_IDLE_US, True)       # returns early on console input

    # ---- core 1 -> core 0 ----

    def poll_events(self):
        """Act on what core 1 published since the last pass (faults first)."""
        self.board.sync()
        ctl = self.ctl
        seen = self._seen
        if (ctl.ev_state != seen[0] or ctl.ev_fault != seen[1] or ctl.ev_session_end != seen[2]
                or ctl.ev_steril_done != seen[3] or ctl.ev_steril_abort != seen[4]):
            self._events()

    def _events(self):
        ctl = self.ctl
        rec = self.rec
        seen = self._seen
        if ctl.ev_fault != seen[1]:
            seen[1] = ctl.ev_fault
            cause = ctl.fault
            name = c.FAULT_NAMES[cause]
            t_ms = self.full_ms(ctl.fault_ms)
            try:
                rec.latch_fault(cause, t_ms)      # S11: before anything else (the motor is off)
            except StoreError:
                pass                              # counted; the fault still latches in RAM
            rec.log_safely({"kind": "fault", "fault": name, "t_ms": t_ms})
            self.event({"ev": "fault", "fault": name, "t_ms": t_ms})
        if ctl.ev_session_end != seen[2]:
            seen[2] = ctl.ev_session_end
            self._session_ended(c.END_NAMES[ctl.end_reason], ctl.session_ms, ctl.strokes, ctl.end_fault)
        if ctl.ev_steril_done != seen[3]:
            seen[3] = ctl.ev_steril_done
            self._steril_done()
        if ctl.ev_steril_abort != seen[4]:
            seen[4] = ctl.ev_steril_abort
            reason = c.ABORT_NAMES[ctl.abort_reason]
            self.last_steril = {"result": "aborted", "reason": reason}
            rec.log_safely({"kind": "sterilise", "result": "aborted", "reason": reason, "t_ms": self.now_ms()})
            self.event({"ev": "sterilise", "result": "aborted", "reason": reason})
        if ctl.ev_state != seen[0]:
            seen[0] = ctl.ev_state
            self.event({"ev": "state", "state": c.STATE_NAMES[ctl.state], "t_ms": self.now_ms()})

    def _session_drove(self, strokes):
        """S18: the stroke motor was commanded on during the session that just ended (it then
        counts as a treatment). Core 1 stamps the pen time it last commanded the motor off
        (_off_at_ms, written only when the motor was on): a stamp at or after the session's start
        means it drove. Strokes, or a motor still on (Ctrl-C, crash), count too: fail closed."""
        ctl = self.ctl
        since_start = (ctl._off_at_ms - ctl.session_start_ms) & lim.MS_MASK
        return strokes > 0 or ctl.motor_on or since_start < _MS_HALF

    def _session_ended(self, end, duration_ms, strokes, fault=c.F_NONE, drove=None):
        """S14: the session's log entry gets its true end, duration and strokes."""
        entry = self.session
        if entry is None:
            return
        if drove is None:
            drove = self._session_drove(strokes)
        self.session = None
        entry["end"] = end
        entry["duration_ms"] = duration_ms
        entry["strokes"] = strokes
        if fault != c.F_NONE:
            entry["fault"] = c.FAULT_NAMES[fault]
        self.rec.log_safely(entry)
        # S18: a session counts as a treatment once the motor was driven; one that never
        # drove it (stopped while the needles moved to depth) gives its interval time back.
        self.clinical.session_ended(entry["profile"], drove)
        body = {"ev": "session_end", "id": entry["id"], "reason": end, "duration_ms": duration_ms,
                "strokes": strokes}
        if fault != c.F_NONE:
            body["fault"] = c.FAULT_NAMES[fault]
        self.event(body)

    def _steril_done(self):
        rec = self.rec
        try:
            rec.commit("lockout", unlocked=True, cycles=rec.cycles + 1)
        except StoreError:
            self.last_steril = {"result": "aborted", "reason": "STORE"}
            self.command(c.CMD_STERIL_FINISH, 0)      # the unlock is not in flash: LOCKED
        else:
            self.last_steril = {"result": "done", "reason": "NONE"}
            self.command(c.CMD_STERIL_FINISH, 1)      # READY
        rec.log_safely({"kind": "sterilise", "result": self.last_steril["result"],
                        "reason": self.last_steril["reason"], "t_ms": self.now_ms()})
        self.event({"ev": "sterilise", "result": self.last_steril["result"], "reason": self.last_steril["reason"]})

    # ---- Ctrl-C or a crash (S9, S14) ----

    def shutdown(self, exc):
        """Motor off first, core 1 stopped, motor cut again, needles retracted, the session's
        end and the crash recorded. Each step is guarded: a second Ctrl-C or a failing step
        does not skip the ones after it."""
        board = self.board
        _guarded(board.safe_stop)          # motor and UV off before anything else
        _guarded(board.stop_control)       # core 1 stops (bounded wait for its acknowledgement)
        _guarded(board.safe_stop)          # it may have driven the motor in between
        _guarded(self._retract)
        _guarded(self._record_shutdown, exc)

    def _retract(self):
        # Core 1 is stopped: step the needles back to the end-stop from here.
        board = self.board
        for _ in range(min(_RETRACT_MAX_MS * 1000 // _IDLE_US, lim.DEPTH_HOME_MAX_STEPS)):
            if board.depth_endstop():
                return
            board.depth_step(-1)
            board.idle(_IDLE_US, False)

    def _record_shutdown(self, exc):
        ctl = self.ctl
        drove = self.session is not None and self._session_drove(0)   # before motor_on is cleared
        ctl.motor_on = False               # core 1 is stopped and the motor cut: records may be written
        ctl.uv_on = False
        ctl.state = c.FAULT if ctl.state == c.FAULT else c.LOCKED
        end = c.END_NAMES[c.END_CTRL_C if isinstance(exc, KeyboardInterrupt) else c.END_CRASH]
        if self.session is not None:
            strokes = ctl.strokes
            if ctl.end_reason == c.END_NONE:
                strokes = (self.board.tach_count() - ctl.session_tach_start) & c.TACH_MASK
            self._session_ended(end, ctl.session_ms, strokes, drove=drove or strokes > 0)
        self.rec.log_safely({"kind": "crash", "error": repr(exc)[:80], "t_ms": self.now_ms()})

    # ---- wire ----

    def send(self, frame):
        # May block core 0 (never core 1). A write the USB link gave up on (the host stopped
        # reading) left part of a frame: the next one starts on a fresh line, so the host
        # loses that line only.
        if self.tx_cut:
            frame = b"\n" + frame
        written = self.board.write_out(frame)
        self.tx_cut = written < len(frame)
        if self.tx_cut:
            self.tx_errors += 1

    def event(self, body):
        try:
            frame = wire.encode(wire.KIND_EVENT, self.event_seq, body)
        except ValueError:
            self.tx_errors += 1      # never crash the loop on an event; the host sees the gap
        else:
            self.send(frame)
        self.event_seq = (self.event_seq + 1) % wire.NUM_MODULO

    def _send_telemetry(self):
        ctl = self.ctl
        board = self.board
        ring = ctl.tm_ring
        fields = proto.TM_FIELDS
        while self.tm_on:
            # Core 1 keeps sampling while a write waits (up to 500 ms per chunk): the backlog is
            # read again before every sample, so a slot it has overwritten is never sent.
            pending = (ctl.tm_count - self.tm_sent) & lim.MS_MASK
            if not pending:
                return
            if pending > lim.TELEMETRY_RING - 1:
                skipped = pending - (lim.TELEMETRY_RING - 1)
                self.tm_dropped += skipped
                self.tm_sent = (self.tm_sent + skipped) & lim.MS_MASK
                self._lease_used(skipped)
                continue
            base = (self.tm_sent % lim.TELEMETRY_RING) * fields
            sample = list(ring[base:base + fields])
            if ((ctl.tm_count - self.tm_sent) & lim.MS_MASK) > lim.TELEMETRY_RING - 1:
                continue                   # overwritten while it was copied: skipped above
            sample[proto.TM_T_MS] = self.full_ms(sample[proto.TM_T_MS])
            frame = wire.encode(wire.KIND_EVENT, self.event_seq, {"ev": "tm", "sub": self.tm_sub,
                                                                   "n": self.tm_sent, "s": sample})
            if board.out_room() >= len(frame):
                self.send(frame)
                self.event_seq = (self.event_seq + 1) % wire.NUM_MODULO
            else:
                self.tm_dropped += 1       # S15: a host that stops reading costs samples, never a tick
            self.tm_sent = (self.tm_sent + 1) & lim.MS_MASK
            self._lease_used(1)

    def _lease_used(self, samples):
        self.tm_left -= samples
        if self.tm_left <= 0 and self.tm_on:
            self.tm_on = False             # lease used up: the host did not renew it
            self.event({"ev": "tm_end", "sub": self.tm_sub, "reason": "LEASE"})

    def _receive(self):
        """Parse console input (at most RX_BYTES_PER_PASS bytes read per pass); handle at
        most one complete request. True if there was input."""
        chunk = self._in
        if self._in_pos >= self._in_len:
            self._in_len = self.board.read_in(chunk)
            self._in_pos = 0
            if not self._in_len:
                return False
        while self._in_pos < self._in_len:
            byte = chunk[self._in_pos]
            self._in_pos += 1
            if byte == 10:
                if self.rx_overflow:
                    self.rx_overflow = False
                    self.rx_len = 0
                    self._reply_error(0, wire.E_FRAME_LONG, "frame longer than %d bytes" % lim.FRAME_MAX)
                elif self.rx_len:
                    line = bytes(self.rx[:self.rx_len])
                    self.rx_len = 0
                    self._handle_line(line)
                    return True                 # at most one request per pass
            elif byte == 13 and not self.rx_overflow and self.rx_len == 0:
                continue                        # stray CR between frames
            elif self.rx_overflow:
                continue
            elif self.rx_len >= lim.FRAME_MAX:
                self.rx_overflow = True
            else:
                if self.rx_len == 0:
                    self.rx_start_us = self.board.ticks_us()
                self.rx[self.rx_len] = byte
                self.rx_len += 1
        return True

    def _reply_error(self, num, code, message):
        self.rx_errors += 1
        self.send(wire.encode(wire.KIND_RESPONSE, num, {"ok": False, "code": code, "msg": message}))

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
        self.send(frame)
        op = body.get("op")
        if isinstance(op, str) and op in ops.HANDLERS:
            spent = ticks_diff(self.board.ticks_us(), self.rx_start_us)
            if spent > self.req_max_us.get(op, -1):
                self.req_max_us[op] = spent

    def handle_request(self, body):
        """Response body for a request body (also used directly by tests)."""
        return ops.handle(self, body)


def _guarded(step, *args):
    try:
        step(*args)
    except BaseException:  # noqa: B036 - a second Ctrl-C or a broken board must not skip the next step
        pass
