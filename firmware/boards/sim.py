# Simulated pen board for the MicroPython unix port (the virtual pen) and CPython tests.
# A board driver, not a mock (pybricks): the plant (boards/simplant.py) evolves in 1 ms
# steps of pen time and the unchanged core drives it through the names of
# boards/pico_pen.py (docs/board-interface.md).
#
# Two cores, one host thread (docs/design.md §2.3, §5.2; docs/virtual-pen-timing.md):
# - Core 1 (pen.loop around Controller.tick) is co-simulated: each tick runs at its
#   deadline in pen time, with the plant stepped to that instant, and costs pen time on
#   core 1 only (its own clock, _core1_free_us).
# - Core 0 (the App) has its own pen clock (_core0_us). Every board call from core 0 first
#   charges core 0's work since the previous call, then runs every tick that fell due
#   meanwhile. Core 0 reads shared state only after sync() and writes it only through the
#   mailbox, so running the due ticks before it goes on keeps causality exact.
# - Clocks, one model with a factor (host us -> pen us, x1000) and pacing:
#     fast:   factor 0, unpaced: work costs nothing, waits jump;
#     real:   pen time is the wall clock: work costs its real time, waits sleep;
#     target: factor = 163 us / (the reference PI tick's host cost), calibrated at start-up,
#             unpaced: work costs factor x host time, waits jump.
#   A tick is charged the running mean host cost of ticks on the same code path (a host
#   hiccup never becomes a 270 ms tick); core 0's work as measured, minus run-queue waits
#   (/proc/thread-self/schedstat) when an interval is suspiciously long.
import os
import sys
try:
    import select
except ImportError:  # pragma: no cover
    import uselect as select  # type: ignore

# On CPython (the firmware tests) tests/cpython/micropython.py stands in.
from micropython import const

from boards import rigproto
from boards.simplant import STEP_US, Plant
from pen.compat import TICKS_PERIOD, sleep_us, ticks_diff, ticks_us, zeros

BOARD_NAME = "sim"
CLOCKS = ("real", "fast", "target")

REF_TICK_TARGET_US = 163          # the reference PI tick on the pen's Cortex-M0+ (docs/hardware.md)
_TICK_US = const(1000)            # core 1's period (pen.limits.TICK_US; the loop owns the schedule)
_FIFO_BYTES = const(256)          # rp2's USB-CDC TX FIFO (CFG_TUD_CDC_TX_BUFSIZE, full speed)
_USB_CHUNK = const(64)            # rp2 writes in endpoint-sized chunks (CFG_TUD_CDC_EP_BUFSIZE) ...
_USB_TIMEOUT_US = const(500000)   # ... each waits this long for room, then the rest is dropped
_HOST_GRACE_MS = const(500)       # wall time a full OS pipe to the host is waited for, per stall
_EST_SETTLED = const(32)          # samples after which a tick path's own mean is trusted
_RIG_LINE_MAX = const(4096)       # longest rig request line (longer: refused, the plant unchanged)
_ONEWIRE_US = const(6000)         # target clock: a cartridge ID read on the pen (docs/hardware.md)
_MARK_READ_US = const(8000)       # ... reading its used mark (MATCH ROM + READ MEMORY, twice)
_MARK_WRITE_US = const(20000)     # ... writing it (scratchpad round trip, COPY, tPROG 10 ms max + margin, read back)
_SUSPECT_HOST_US = const(50)      # a longer core-0 interval is checked for run-queue waits ...
_SCHED_REFRESH_US = const(10000)  # ... measured from a mark refreshed at least this often
_SPIN_US = const(60)              # real clock: busy-wait the last part of a wait
_WAKE_SLICE_US = const(150)       # real clock: check for host input at least this often
_PATHS = const(768)               # tick path signatures (see _tick)
_Q = const(1 << 20)               # fixed point of the host-cost means (host us * _Q)
_REF_EVERY = const(8)             # target: time one reference PI tick every this many ticks ...
_REF_WEIGHT = const(1024)         # ... into a running mean over about this many


def _readable(poller, timeout_ms=0):
    if hasattr(poller, "ipoll"):
        for _ in poller.ipoll(timeout_ms):   # MicroPython: no allocation
            return True
        return False
    return bool(poller.poll(timeout_ms))


class _Discard:
    """No host on the USB link: writes vanish, reads find nothing."""

    def write(self, data):
        return len(data)

    def read(self, size):
        return b""

    def poll(self, timeout):
        return []


class Board(Plant):
    # Over 400 lines (the plant is in simplant.py): the clocks, the co-simulation of core
    # 1, the USB link and the rig channel share the pen-time state that every board call
    # advances, and the tick's board methods must be on this class itself (below).
    BOARD_NAME = BOARD_NAME
    # The tick's board methods on this class itself, as on boards/pico_pen.py: a method
    # found in a base class costs one more dictionary lookup per call, which would skew
    # both the tick and the reference PI tick that calibrates the target clock.
    sample = Plant.sample
    motor_drive = Plant.motor_drive
    motor_coast = Plant.motor_coast
    tach_count = Plant.tach_count
    tach_edge_us = Plant.tach_edge_us

    def __init__(self, clock=None, serial=None, rig_in=None, rig_out=None, seed=12345, out=None,
                 inp=None, time_start_s=None, world=True):
        if clock is None:
            clock = os.getenv("PEN_SIM_CLOCK") or "real"
        if clock not in CLOCKS:
            raise ValueError("clock must be one of real, fast, target")
        if time_start_s is None:
            time_start_s = int(os.getenv("PEN_SIM_TIME_START_S") or "0")
        self.clock_name = clock
        self.serial = serial or os.getenv("PEN_SIM_SERIAL") or "SIM-0001"
        self.store_dir = "data"
        self._real = clock == "real"
        self._factor = 1000 if self._real else 0       # host us -> pen us, x1000
        self._ref = None                               # target: the reference PI and its board
        self._ref_mean = 0                             # its host cost, us * _Q (running mean)
        self._ref_n = 0
        self._ref_countdown = 0
        # Tick-path costs are kept in a host-independent unit: host us on the real clock; on
        # the target clock, reference PI ticks (each sample divided by the reference's cost at
        # that moment), so a rare path's estimate stays right when the host's speed changes
        # (load, caches) between its samples. `_unit` is that unit in host us * _Q; a cost in
        # units converts to pen us with `_unit_pen_us`.
        self._unit = _Q
        self._unit_pen_us = 1
        if clock == "target":
            self._calibrate()
        self.clock_factor_x100 = self._factor // 10 if clock == "target" else 0
        self._ticks_mask = TICKS_PERIOD - 1
        origin = time_start_s * 1000000
        self._origin_us = origin
        # core 0's pen clock and the host time its current work interval started
        self._core0_us = origin
        self._boundary_us = origin      # core 0's pen time at its last board call
        self._wall0 = ticks_us()
        self._host_mark = self._wall0
        self._sched = None
        self._sched_buf = bytearray(96)
        self._sched_wait_us = 0
        self._sched_at = self._wall0
        if clock == "target":
            self._open_schedstat()
        # co-simulated core 1
        self._loop = None
        self._running = False
        self._deadline_abs = origin     # pen time of core 1's next deadline
        self._core1_free_us = origin    # core 1 is busy with a tick until then
        self._in_tick = False
        self._tick_host0 = 0
        self._mark_pending = [False, False, False, False]
        self._mark_host = [0, 0, 0, 0]
        paths = _PATHS if self._factor else 1      # the fast clock charges nothing: no table
        # Running means in `_unit`s * 2**20 (fine enough that integer steps do not bias them:
        # a tick measures 1 or 2 us in whole us).
        self._est = zeros("i", paths)               # per tick path
        self._est_n = zeros("H", paths)
        self._est_all = _Q                          # over all ticks (the prior of a new path)
        self._est_all_n = 0
        self._halted = False            # safe_stop ran: motor_drive and uv_set(True) do nothing
        self.interrupt_us = -1          # pen time the firmware last learned of Ctrl-C or a crash
        # the USB-CDC link to the host (`inp`: a stream with read(n) that is also its own poll)
        self._out = out if out is not None else (sys.stdout.buffer if world else _Discard())
        self._out_poll = None           # the OS pipe to the host (None: always takes the bytes)
        if out is None and world:
            self._out_poll = select.poll()
            self._out_poll.register(sys.stdout, select.POLLOUT)
        self._host_stalled = False      # the host has not read for _HOST_GRACE_MS of wall time
        if inp is not None:
            self._in_stream = inp
            self._in_poll = inp
        elif world:
            self._in_stream = sys.stdin.buffer
            self._in_poll = select.poll()
            self._in_poll.register(sys.stdin, select.POLLIN)
        else:
            self._in_stream = self._in_poll = _Discard()
        self._in_fifo = bytearray()
        self._fifo = bytearray()
        self._hold_until_us = origin    # the host stopped reading until then (rig hold_output)
        self.out_dropped_bytes = 0
        self._plant_init(seed, origin)
        # rig channel (virtual pen supervisor)
        self._rig_in = None
        self._rig_out = None
        self._rig_poll = None
        # One rig line, filled in place: growing a bytes object byte by byte allocates a new
        # copy per byte, which fragments the heap with a long line (a 2000-character cartridge ID).
        self._rig_buf = bytearray(_RIG_LINE_MAX)
        self._rig_len = 0
        self._rig_long = False          # the line being read is longer than _RIG_LINE_MAX
        self._rig_byte = bytearray(1)
        self._plant_file = None
        if not world:
            return
        # The plant outlives the interpreter: at exit (Ctrl-C, crash) the final state goes
        # to the supervisor, which reports it while the REPL runs.
        self._plant_file = os.getenv("PEN_SIM_PLANT_FILE")
        if self._plant_file and hasattr(sys, "atexit"):
            sys.atexit(self._write_final_plant)  # type: ignore[attr-defined]
        rig_in = rig_in or os.getenv("PEN_SIM_RIG_IN")
        rig_out = rig_out or os.getenv("PEN_SIM_RIG_OUT")
        if rig_in and rig_out:
            self._rig_in = open(rig_in, "rb")
            self._rig_out = open(rig_out, "wb")
            self._rig_poll = select.poll()
            self._rig_poll.register(self._rig_in, select.POLLIN)

    # ---- core 0's clock ----

    def _enter(self):
        """Core 0 calls into the board: charge its work since its last call, then let the
        plant and core 1 catch up with it."""
        now = ticks_us()
        if self._real:
            self._core0_us = self._origin_us + ticks_diff(now, self._wall0)
        elif self._factor:
            work = ticks_diff(now, self._host_mark)
            if work > _SUSPECT_HOST_US:
                work -= self._run_queue_wait(work)
            self._core0_us += work * self._factor // 1000
        self._boundary_us = self._core0_us
        self._catch_up()

    def _leave(self):
        self._boundary_us = self._core0_us
        if self._sched is not None and ticks_diff(ticks_us(), self._sched_at) > _SCHED_REFRESH_US:
            self._run_queue_wait(0)          # refresh the mark (not charged: before _host_mark)
        self._host_mark = ticks_us()

    def _open_schedstat(self):
        try:
            self._sched = open("/proc/thread-self/schedstat", "rb")
            self._run_queue_wait(0)
        except OSError:
            self._sched = None               # no guard on this host (docs/virtual-pen-timing.md)

    def _run_queue_wait(self, limit_us):
        """Run-queue wait (us) since the last mark, at most `limit_us`; moves the mark.
        schedstat field 2 is the time this thread was runnable but not running (ns),
        exact at switch-in: a preemption, not firmware work."""
        sched = self._sched
        if sched is None:
            return 0
        try:
            sched.seek(0)
            size = sched.readinto(self._sched_buf)
            wait_us = int(bytes(self._sched_buf[:size]).split()[1]) // 1000
        except (OSError, ValueError, IndexError):
            return 0
        waited = wait_us - self._sched_wait_us
        self._sched_wait_us = wait_us
        self._sched_at = ticks_us()
        if waited < 0:
            waited = 0
        return waited if waited < limit_us else limit_us

    def _charge(self, pen_us):
        # Target clock: a cost the host cannot measure (the pen's 1-Wire bus time).
        if self._factor and not self._real:
            self._core0_us += pen_us
            self._catch_up()

    def _catch_up(self):
        if self._running:
            self._run_due()
        else:
            while self._plant_us + STEP_US <= self._core0_us:
                self._plant_step()

    def _input_waiting(self):
        return bool(self._in_fifo) or _readable(self._in_poll)

    def _wait_until(self, until_us, wake):
        """Core 0 waits (in pen time) until `until_us`; False early when `wake` and the
        console has input."""
        if not self._real:
            if wake and self._input_waiting():
                return False
            if until_us > self._core0_us:
                self._core0_us = until_us
                self._catch_up()
            return True
        while True:
            self._core0_us = self._origin_us + ticks_diff(ticks_us(), self._wall0)
            self._catch_up()
            remaining = until_us - self._core0_us
            if remaining <= 0:
                return True
            if wake and self._input_waiting():
                return False
            self._poll_rig()
            if self._running and self._deadline_abs - self._core0_us < remaining:
                remaining = self._deadline_abs - self._core0_us   # wake for core 1's next tick
            if remaining > _SPIN_US:
                sleep_us(remaining - _SPIN_US if remaining - _SPIN_US < _WAKE_SLICE_US else _WAKE_SLICE_US)

    # ---- co-simulated core 1 ----

    def _run_due(self):
        loop = self._loop
        while self._running:
            deadline = self._deadline_abs
            if deadline > self._core0_us:
                return
            start = deadline if deadline >= self._core1_free_us else self._core1_free_us
            run_at = deadline
            if start - deadline >= _TICK_US:
                run_at = deadline + (start - deadline) // _TICK_US * _TICK_US   # pen.loop skips these
            while self._plant_us < run_at:
                self._plant_step()          # the plant at the tick's instant, inputs sampled there
            self._tick(loop, start)

    def _tick(self, loop, start):
        ctl = loop.ctl
        # Path signature: state, motor phase, depth phase before the tick, and whether it
        # took a telemetry sample, latched a fault or changed the state.
        before = (ctl.state * 4 + ctl.motor_phase) * 4 + ctl.depth_phase
        tm = ctl.tm_count
        ev_fault = ctl.ev_fault
        ev_state = ctl.ev_state
        pending = self._mark_pending
        pending[0] = False
        pending[1] = False
        pending[2] = False
        pending[3] = False
        self._in_tick = True
        host0 = ticks_us()
        loop.run_tick(start & self._ticks_mask)
        host1 = ticks_us()
        self._in_tick = False
        flags = (tm != ctl.tm_count) + 2 * (ev_fault != ctl.ev_fault) + 4 * (ev_state != ctl.ev_state)
        host_total = ticks_diff(host1, host0)
        if self._factor:
            cost = self._estimate(before * 8 + flags, host_total) * self._unit_pen_us // _Q
        else:
            cost = 0
        for which in (0, 1, 2, 3):
            if pending[which]:
                # Board calls inside the tick (motor off ...): the same share of the path's
                # estimate as of the measured tick (the host's noise is in both parts).
                part = ticks_diff(self._mark_host[which], host0)
                part = cost * part // host_total if 0 < part < host_total else (cost if part > 0 else 0)
                self._stamp(which, start + part)
        self._core1_free_us = start + cost
        loop.record_cost(cost)
        if self._ref is not None:
            self._ref_countdown -= 1
            if self._ref_countdown <= 0:
                self._recalibrate()
        self._deadline_abs = start + ticks_diff(loop.deadline, start & self._ticks_mask)

    def _estimate(self, path, measured_us):
        """Smoothed cost (`_unit`s * 2**20) of a tick on `path`: running mean of the measured
        costs (the last 1024 weigh most). Host noise only ever adds time: a sample above 4x
        the path's mean + 2 us is rejected as a host hiccup, and while a path has fewer than
        _EST_SETTLED samples (a rare path: a fault, a phase change) each sample is capped at
        twice the mean of all ticks + 1 us, so one hiccup cannot make a rare path's estimate,
        and the tick and reaction times it sets, many times too long (the pen's longest tick
        path costs about 1.5x its mean)."""
        mean = self._est[path]
        count = self._est_n[path]
        if count == 0:
            # A path's first tick runs on cold host caches: it is charged the mean of all
            # ticks, and the path's estimate starts from there.
            self._est[path] = self._est_all
            self._est_n[path] = 1
            return self._est_all
        unit = self._unit
        one_us = _Q * _Q // unit          # 1 host us in the estimates' units
        sample = measured_us * one_us
        if sample > 0x3FFFFFFF:
            sample = 0x3FFFFFFF           # a hiccup in any case: keeps the means 32-bit ints
        if count < _EST_SETTLED:
            cap = 2 * self._est_all + one_us
            if sample > cap:
                sample = cap
        if sample <= 4 * mean + 2 * one_us:
            if count < 1024:
                count += 1
            mean += (sample - mean) // count
            if self._est_all_n < 1024:
                self._est_all_n += 1
            self._est_all += (sample - self._est_all) // self._est_all_n
        self._est[path] = mean
        self._est_n[path] = count
        return mean

    def _calibrate(self):
        """Target clock: pen us per host us from the reference PI tick (boards/refpi.py),
        which costs REF_TICK_TARGET_US on the pen. Timed at start-up (the median of several
        batches), then again between ticks (_recalibrate), so both sides of the ratio are
        measured under the same host conditions."""
        from boards.refpi import ReferencePI, host_cost_us
        board = Board(clock="fast", seed=11, world=False)   # its own plant, no rig, no output
        pi = ReferencePI(board)
        self._ref = (pi, board)
        self._ref_mean = int(host_cost_us(pi, board) * _Q)
        self._ref_n = _REF_WEIGHT // 4    # the start-up value weighs as much as 256 later calls
        self._ref_countdown = _REF_EVERY
        self._factor = REF_TICK_TARGET_US * 1000 * _Q // self._ref_mean
        self._unit = self._ref_mean
        self._unit_pen_us = REF_TICK_TARGET_US

    def _recalibrate(self):
        # One reference tick, timed like a tick (call by call, between two ticks), into a
        # running mean with the same hiccup rejection.
        pi, board = self._ref
        board._plant_step()
        start = ticks_us()
        pi.tick()
        sample = ticks_diff(ticks_us(), start) * _Q
        self._ref_countdown = _REF_EVERY
        mean = self._ref_mean
        if sample > 4 * mean + 2 * _Q:
            return                        # a host hiccup, not the host's speed
        if self._ref_n < _REF_WEIGHT:
            self._ref_n += 1
        mean += (sample - mean) // self._ref_n
        if mean < _Q // 64:
            mean = _Q // 64               # never below 1/64 us (a sane host)
        self._ref_mean = mean
        self._factor = REF_TICK_TARGET_US * 1000 * _Q // mean
        self._unit = mean
        self.clock_factor_x100 = self._factor // 10

    def _mark(self, which):
        # Plant time stamps (motor commanded off, UV light off, UV commanded off, carriage
        # back at the end-stop).
        if self._in_tick:
            self._mark_host[which] = ticks_us()
            self._mark_pending[which] = True
        else:
            self._stamp(which, self._core0_us)

    def _stamp(self, which, t_us):
        if which == 0:
            self.motor_off_us = t_us
        elif which == 1:
            self.uv_off_us = t_us
        elif which == 2:
            self.uv_cmd_off_us = t_us
        else:
            self.endstop_us = t_us

    # ---- board interface: clock and the cores ----

    def ticks_us(self):
        if self._in_tick:
            return self._core1_free_us & self._ticks_mask
        self._enter()
        now = self._core0_us
        self._leave()
        return now & self._ticks_mask

    def uptime_ms(self):
        self._enter()
        now = self._core0_us
        self._leave()
        return now // 1000

    def start_control(self, loop):
        self._enter()
        # Core 1's deadlines on the plant's 1 ms grid (a sub-ms shift at start-up only).
        self._deadline_abs = self._core0_us + ticks_diff(loop.deadline, self._core0_us & self._ticks_mask)
        self._plant_us += (self._deadline_abs - self._plant_us) % STEP_US
        self._core1_free_us = self._core0_us
        self._loop = loop
        self._running = True
        self._leave()

    def stop_control(self):
        self._enter()
        self._running = False
        if self._loop is not None:
            self._loop.stopped = True
        self._leave()
        return True

    def sync(self):
        self._enter()
        self._poll_rig()
        self._drain_out()
        self._leave()

    def idle(self, us, wake=True):
        """Core 0 waits up to `us`; with `wake`, returns False as soon as the console has
        input (True after the full wait)."""
        self._enter()
        woke = not self._wait_until(self._core0_us + us, wake)
        self._poll_rig()
        self._drain_out()
        self._leave()
        return not woke

    # ---- USB-CDC input ----

    def read_in(self, buf):
        """Console bytes available now, without waiting: copied into `buf`; returns how many.
        The host OS reads are the USB stack's work (not charged, like a pen's USB
        interrupt filling its FIFO); the copy loop below runs after _leave(), so core 0 is
        charged a byte loop as the pen's read_in (ipoll + read per byte) would be."""
        self._enter()
        fifo = self._in_fifo
        want = len(buf)
        while len(fifo) < want and _readable(self._in_poll):
            byte = self._in_stream.read(1)
            if not byte:
                break
            fifo += byte
        self._leave()
        count = len(fifo) if len(fifo) < want else want
        for index in range(count):
            buf[index] = fifo[index]
        self._in_fifo = fifo[count:]
        return count

    # ---- USB-CDC output (S15) ----

    def _held(self):
        return self._core0_us < self._hold_until_us

    def _drain_out(self):
        # The host paces the link (docs/design.md §5.2): this pen runs faster than real time, so
        # a host that reads slower than it writes (the OS pipe is full) is waited for outside pen
        # time, up to _HOST_GRACE_MS of wall time per stall. A host still not reading after that
        # has stopped reading: the FIFO then stops draining in pen time, as rp2's does, and the
        # pen goes on (core 0's writes time out, telemetry is dropped, core 1 never waits).
        if not self._fifo or self._held():
            return
        poll = self._out_poll
        if poll is not None and not _readable(poll):
            if self._host_stalled or not _readable(poll, _HOST_GRACE_MS):
                self._host_stalled = True
                return
        self._host_stalled = False
        # At most _FIFO_BYTES (< PIPE_BUF): a pipe that polls writable takes them without blocking.
        self._out.write(bytes(self._fifo))
        self._fifo = bytearray()

    def out_room(self):
        """Bytes core 0 can write now without blocking."""
        self._enter()
        self._drain_out()
        room = _FIFO_BYTES - len(self._fifo)
        self._leave()
        return room

    def write_out(self, data):
        """Write to the host like rp2's USB-CDC: in 64-byte chunks, each waiting up to
        500 ms of pen time for room in the FIFO (core 0 blocks; core 1 keeps ticking),
        then the rest is dropped. Returns the bytes written."""
        self._enter()
        size = len(data)
        done = 0
        while done < size:
            chunk = size - done if size - done < _USB_CHUNK else _USB_CHUNK
            self._drain_out()
            room = _FIFO_BYTES - len(self._fifo)
            if room < chunk:
                give_up = self._core0_us + _USB_TIMEOUT_US
                self._wait_until(give_up if give_up < self._hold_until_us else self._hold_until_us, False)
                self._drain_out()
                room = _FIFO_BYTES - len(self._fifo)
                if chunk > room:
                    chunk = room
                if chunk <= 0:
                    self.out_dropped_bytes += size - done
                    break
            self._fifo += data[done:done + chunk]
            done += chunk
        self._drain_out()
        self._leave()
        return done

    # ---- other core-0 calls ----

    def cartridge_id(self):
        self._enter()
        self._charge(_ONEWIRE_US)
        cart = self.cartridge
        self._leave()
        return cart

    def cartridge_used(self):
        """S19: True if the inserted cartridge carries the used mark; OSError if its memory
        cannot be read (no cartridge, or the injection cartridge_memory_fail)."""
        self._enter()
        self._charge(_MARK_READ_US)
        try:
            return self.cartridge_marked(self._cartridge_memory())
        finally:
            self._leave()

    def cartridge_mark_used(self):
        """S19: write the used mark on the inserted cartridge; OSError on any failure. The mark
        goes to the supervisor's plant file at once: the cartridge keeps it across a power cut."""
        self._enter()
        self._charge(_MARK_WRITE_US)
        try:
            self.set_cartridge_mark(self._cartridge_memory())
        finally:
            self._leave()
        self._write_final_plant()

    def watchdog_feed(self):
        pass

    def service(self):
        self._enter()
        self._poll_rig()
        self._drain_out()
        self._leave()

    def safe_stop(self):
        """Motor and UV off, no more driving; never raises (any exception, Ctrl-C)."""
        try:
            self._in_tick = False          # an interrupt may have left a tick half done
            if not self._halted:
                self._halted = True
                # The interrupt came after core 0's last board call: a lower bound of its
                # pen time (so motor_off_us - interrupt_us bounds the latency from above).
                self.interrupt_us = self._boundary_us
                try:
                    self._enter()
                except BaseException:  # noqa: B036 - stop the motor whatever happens
                    pass
            self.motor_coast()
            self.uv_set(False)
        except BaseException:  # noqa: B036
            pass

    # ---- rig channel ----

    def _poll_rig(self):
        poll = self._rig_poll
        while poll is not None and _readable(poll):
            byte = self._rig_byte
            if not self._rig_in.readinto(byte):     # into a buffer: no garbage per byte
                self._rig_poll = None       # supervisor gone
                return
            if byte[0] != 10:
                if self._rig_len < _RIG_LINE_MAX:
                    self._rig_buf[self._rig_len] = byte[0]
                    self._rig_len += 1
                else:
                    self._rig_long = True
                continue
            if self._rig_long:
                self._rig_long = False
                self._rig_len = 0
                self._rig_out.write(rigproto.encode({"ok": False, "error": "rig line longer than %d bytes"
                                                     % _RIG_LINE_MAX}))
                continue
            line = bytes(memoryview(self._rig_buf)[:self._rig_len])
            self._rig_len = 0
            self._rig_out.write(rigproto.encode(self.rig_request(line)))

    def rig_request(self, line):
        """The reply (a dict) to one rig request line: applied at the plant's current time."""
        try:
            request = rigproto.decode(line)
        except Exception as exc:   # a MemoryError too: the reply says which
            return {"ok": False, "error": "bad request (%s)" % type(exc).__name__}
        problem = rigproto.check_request(request)
        if problem is not None:
            return {"ok": False, "error": problem}
        op = request.get("op")
        if op == rigproto.OP_INJECT:
            fault = request.get("fault")
            if not self.inject(fault):
                return {"ok": False, "error": "unknown fault %s" % fault}
            return {"ok": True, "fault": fault, "inject_us": self.inject_us}
        if op == rigproto.OP_CLEAR_INJECTIONS:
            self.clear_injections()
            return {"ok": True}
        if op == rigproto.OP_CARTRIDGE:
            cart = request.get("id")
            self.cartridge = None if cart is None else str(cart).upper()
            if self.cartridge is not None and request.get("used", False) is True:
                self.set_cartridge_mark(self.cartridge)    # used elsewhere; "used": false keeps a mark
            return {"ok": True, "cartridge": self.cartridge,
                    "used": self.cartridge is not None and self.cartridge_marked(self.cartridge)}
        if op == rigproto.OP_LID:
            closed = request.get("closed") is True
            if not closed and self._uv_light():
                self.uv_off_us = self._plant_us     # the hardware interlock darkens the LED at once
            self.lid = closed
            return {"ok": True, "lid_closed": self.lid}
        if op == rigproto.OP_HOLD_OUTPUT:
            self._hold_until_us = self._plant_us + request.get("ms") * 1000
            return {"ok": True, "hold_until_us": self._hold_until_us}
        if op == rigproto.OP_MEASURE:
            return self.measure()
        return {"ok": False, "error": "op %s is answered by the supervisor" % op}

    def measure(self):
        state = self.plant_state()
        state["ok"] = True
        state["interrupt_us"] = self.interrupt_us
        state["clock"] = self.clock_name
        state["clock_factor_x100"] = self.clock_factor_x100
        state["core0_us"] = self._core0_us
        state["output_held"] = self._core0_us < self._hold_until_us
        state["output_fifo"] = len(self._fifo)
        state["output_dropped_bytes"] = self.out_dropped_bytes
        return state

    def _write_final_plant(self):
        import json
        if not self._plant_file:
            return
        try:
            with open(self._plant_file, "w") as handle:
                handle.write(json.dumps(self.measure()))
        except Exception:
            pass
