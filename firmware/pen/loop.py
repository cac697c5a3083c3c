# Core 1's fixed-period control loop (docs/design.md §2.3), the same code on every board.
# The board decides *when* a period runs: boards/pico_pen.py spins on the real clock on
# core 1, boards/sim.py co-simulates core 1 at each deadline in pen time. This module
# decides *what* a period does: lateness histogram, missed periods counted and skipped
# (never burst), Controller.tick at the deadline, the next deadline from the previous one
# (no drift), and the tick cost statistics.
#
# Fields written by core 1: deadline, ticks, late_hist, stopped, _reset_ack (and the
# controller's overruns / tick_max_us). Fields written by core 0: stop_req, reset_req.
import micropython
from micropython import const

from .compat import ticks_add, ticks_diff, zeros
from .limits import LATE_BUCKET_US, LATE_BUCKETS, TICK_US

_COUNT_MASK = const(0x3FFFFFFF)   # counters wrap below 2**30 (small ints on the RP2040)
_TICK_MS = TICK_US // 1000        # the tick's elapsed-time unit


class ControlLoop:
    def __init__(self, ctl):
        self.ctl = ctl
        self.deadline = 0          # pen time (board.ticks_us clock) of the next period
        self.ticks = 0             # periods run, wrapping at 2**30 (the watchdog watches it move)
        self.late_hist = zeros("i", LATE_BUCKETS + 1)
        self.stop_req = False      # core 0: please stop
        self.stopped = True        # core 1: not running (after stop_req: acknowledged)
        self.reset_req = 0         # core 0 bumps it to zero the statistics
        self._reset_ack = 0
        self.cost_sum_us = 0       # tick costs since the last reset (saturating) ...
        self.cost_count = 0        # ... over this many ticks: the mean tick cost

    def begin(self, now_us, now_ms):
        """Core 0, before the board starts core 1: pen time now (us on the board's clock,
        ms since power-on); the first period is one period from now."""
        self.ctl.start_clock(now_ms)
        self.deadline = ticks_add(now_us, TICK_US)  # type: ignore[arg-type]
        self.stop_req = False
        self.stopped = False

    @micropython.native
    def run_tick(self, start_us):
        """Core 1: run the period that is due. `start_us` is when core 1 got to it (at or
        after `deadline`). Returns the pen time the tick ran at."""
        ctl = self.ctl
        deadline = self.deadline
        late = ticks_diff(start_us, deadline)
        periods = 1
        if late >= TICK_US:
            # Whole periods missed: count them and run the latest one, never a burst.
            missed = late // TICK_US
            overruns = ctl.overruns + missed
            ctl.overruns = overruns if overruns < _COUNT_MASK else _COUNT_MASK
            deadline = ticks_add(deadline, missed * TICK_US)  # type: ignore[arg-type]
            late -= missed * TICK_US
            periods += missed
        elif late < 0:
            late = 0
        hist = self.late_hist
        if self.reset_req != self._reset_ack:
            self._reset(hist)
        bucket = late // LATE_BUCKET_US
        if bucket > LATE_BUCKETS:
            bucket = LATE_BUCKETS
        hist[bucket] += 1
        ctl.tick(deadline, periods * _TICK_MS)
        self.ticks = (self.ticks + 1) & _COUNT_MASK
        self.deadline = ticks_add(deadline, TICK_US)  # type: ignore[arg-type] - from the previous deadline
        return deadline

    def record_cost(self, cost_us):
        """Core 1: the cost of the tick just run (us of pen time)."""
        ctl = self.ctl
        if cost_us > ctl.tick_max_us:
            ctl.tick_max_us = cost_us
        total = self.cost_sum_us + cost_us
        if total < _COUNT_MASK:
            self.cost_sum_us = total
            self.cost_count += 1

    def _reset(self, hist):
        for index in range(len(hist)):
            hist[index] = 0
        self.ctl.overruns = 0
        self.ctl.tick_max_us = 0
        self.cost_sum_us = 0
        self.cost_count = 0
        self._reset_ack = self.reset_req
