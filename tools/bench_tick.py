# MicroPython script (unix port): control tick cost next to a reference
# 20-line PI tick in the same process, allocations in the tick, and heap use.
# Usage: micropython -X heapsize=192K tools/bench_tick.py [ROUNDS]
# Prints one JSON object.
import gc
import json
import sys
import time

import micropython

sys.path.insert(0, "tests/fw")
sys.path.insert(0, "firmware")

from fwtest import Pen  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
TICKS = 5000


class ReferencePI:
    """A plain 20-line integer PI speed tick: the baseline for the tick budget."""

    def __init__(self, board):
        self.board = board
        self.integ = 0
        self.last_count = 0
        self.last_us = 0
        self.hz = 0
        self.target = 10000

    def tick(self):
        board = self.board
        count = board.tach_count()
        if count != self.last_count:
            edge = board.tach_edge_us()
            period = time.ticks_diff(edge, self.last_us)
            if period > 0:
                self.hz = 100000000 * (count - self.last_count) // period
            self.last_count = count
            self.last_us = edge
        error = self.target - self.hz
        self.integ += error
        if self.integ > 100000:
            self.integ = 100000
        elif self.integ < -100000:
            self.integ = -100000
        duty = 4000 + error // 5 + (self.integ >> 7)
        if duty > 9500:
            duty = 9500
        elif duty < 0:
            duty = 0
        board.motor_drive(duty)


def running_pen():
    pen = Pen(seed=7)
    pen.boot()
    pen.push_profile(stroke_hz=100, max_session_s=1800)
    pen.sterilise()
    pen.insert("BE7C000100000000")
    assert pen.request("session_start")["ok"]
    pen.run_until(lambda: pen.ctl.motor_on, 3000)
    pen.run_ms(500)
    return pen


def time_ticks(tick, board, count):
    # Plant steps are excluded: only the control code is timed.
    total = 0
    for _ in range(count):
        board._plant_step()
        start = time.ticks_us()
        tick()
        total += time.ticks_diff(time.ticks_us(), start)
    return total / count


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    gc.collect()
    pen = running_pen()
    ctl = pen.ctl
    board = pen.board
    from boards.sim import Board
    ref_board = Board(clock="fast", seed=11)   # its own plant: the two loops must not fight
    ref = ReferencePI(ref_board)
    # Rounds alternate between the two ticks, so load on the machine hits both alike.
    tick_samples = []
    ref_samples = []
    for _ in range(ROUNDS):
        tick_samples.append(time_ticks(ctl.tick, board, TICKS))
        ref_samples.append(time_ticks(ref.tick, ref_board, TICKS))
    ratios = [tick_samples[i] / ref_samples[i] for i in range(ROUNDS)]
    tick_us = median(tick_samples)
    ref_us = median(ref_samples)
    # Allocations: run the tick under heap_lock; any allocation raises MemoryError.
    allocating = 0
    micropython.heap_lock()
    try:
        for _ in range(TICKS):
            board._plant_step()
            ctl.tick()
    except MemoryError:
        allocating = 1
    finally:
        micropython.heap_unlock()
    gc.collect()
    print(json.dumps({"tick_us": tick_us, "ref_us": ref_us, "ratio": median(ratios),
                      "rounds": ROUNDS, "ticks_per_round": TICKS, "tick_allocates": allocating,
                      "state": pen.state(), "heap_free": gc.mem_free(), "heap_alloc": gc.mem_alloc()}))


main()
