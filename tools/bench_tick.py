# MicroPython script (unix port): Controller.tick's cost next to the reference 20-line PI
# tick (boards/refpi.py) in the same process, timed call by call in alternation; allocations
# in core 1's loop (run_tick around the tick) under heap_lock; heap use.
# Usage: micropython -X heapsize=192K tools/bench_tick.py [ROUNDS]
# Prints one JSON object.
import gc
import json
import sys
import time

import micropython

sys.path.insert(0, "tests/fw")
sys.path.insert(0, "firmware")

import penfix  # noqa: E402
from boards.refpi import ReferencePI  # noqa: E402
from boards.sim import Board  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
TICKS = 5000


def running_pen():
    pen = penfix.ready_pen(stroke_hz=100, max_session_s=1800, cartridge="BE7C000000000001")
    assert pen.request("session_start")["ok"]
    pen.run_until(lambda: pen.ctl.motor_on, 3000)
    pen.run_ms(500)
    pen.board.stop_control()             # this script is core 1's scheduler now
    return pen


def time_interleaved(tick, board, ref_tick, ref_board, count):
    """Mean host cost of the two ticks, timed call by call in alternation (so load on the
    machine hits both alike); the plant steps are not timed."""
    total = 0
    ref_total = 0
    for _ in range(count):
        board._plant_step()
        ref_board._plant_step()
        start = time.ticks_us()
        tick()
        middle = time.ticks_us()
        ref_tick()
        end = time.ticks_us()
        total += time.ticks_diff(middle, start)
        ref_total += time.ticks_diff(end, middle)
    return total / count, ref_total / count


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    gc.collect()
    pen = running_pen()
    loop = pen.app.loop
    board = pen.board

    ctl = pen.ctl

    def tick():                            # Controller.tick at the loop's next deadline
        deadline = loop.deadline
        ctl.tick(deadline, 1)
        loop.deadline = deadline + 1000

    ref_board = Board(clock="fast", seed=11, world=False)   # its own plant: the two loops must not fight
    ref = ReferencePI(ref_board)
    tick_samples = []
    ref_samples = []
    for _ in range(ROUNDS):
        mine, theirs = time_interleaved(tick, board, ref.tick, ref_board, TICKS)
        tick_samples.append(mine)
        ref_samples.append(theirs)
    ratios = [tick_samples[i] / ref_samples[i] for i in range(ROUNDS)]
    # Allocations: core 1's loop under heap_lock; any allocation raises MemoryError.
    allocating = 0
    micropython.heap_lock()
    try:
        for _ in range(TICKS):
            board._plant_step()
            loop.run_tick(loop.deadline)
    except MemoryError:
        allocating = 1
    finally:
        micropython.heap_unlock()
    gc.collect()
    print(json.dumps({"tick_us": median(tick_samples), "ref_us": median(ref_samples), "ratio": median(ratios),
                      "rounds": ROUNDS, "ticks_per_round": TICKS, "tick_allocates": allocating,
                      "state": pen.state(), "heap_free": gc.mem_free(), "heap_alloc": gc.mem_alloc()}))


main()
