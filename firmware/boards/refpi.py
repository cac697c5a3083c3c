# The reference 20-line PI speed tick, defined once: the baseline of the tick budget
# (docs/design.md §6). Measured on the pen's Cortex-M0+ it costs 163 us (docs/hardware.md);
# the virtual pen's target clock (boards/sim.py) scales host time so that it costs that
# much there too, and `make bench` (tools/bench_tick.py) compares Controller.tick with it.
# Plain bytecode on purpose: it is the interpreter's speed that is being calibrated.
from pen.compat import ticks_diff, ticks_us


class ReferencePI:
    """A plain 20-line integer PI speed tick on a board's tach and motor."""

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
            period = ticks_diff(edge, self.last_us)
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


def host_cost_us(pi, board, batches=9, calls=1000):
    """Host cost (us, float) of one pi.tick() on a simulated board, timed call by call as
    the virtual pen times its ticks (boards/sim.py), the plant stepped before each call:
    the median over `batches` batches of the mean of `calls` calls."""
    costs = []
    tick = pi.tick
    for _ in range(batches):
        total = 0
        for _ in range(calls):
            board._plant_step()
            start = ticks_us()
            tick()
            total += ticks_diff(ticks_us(), start)
        costs.append(total / calls)
    costs.sort()
    board.motor_coast()
    return costs[len(costs) // 2]
