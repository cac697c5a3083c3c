# Time helpers that exist on MicroPython (time.ticks_*) and on CPython (tests,
# host), so the core runs unchanged on both.
try:
    from time import ticks_add, ticks_diff, ticks_us, sleep_us  # type: ignore[attr-defined]
except ImportError:  # CPython: same arithmetic as MicroPython's unix port (period 2**62)
    import time as _time

    _PERIOD = 1 << 62
    _HALF = _PERIOD >> 1

    def ticks_us():
        return (_time.monotonic_ns() // 1000) % _PERIOD  # type: ignore[attr-defined]

    def ticks_add(ticks, delta):
        return (ticks + delta) % _PERIOD

    def ticks_diff(end, start):
        return ((end - start + _HALF) % _PERIOD) - _HALF

    def sleep_us(us):
        if us > 0:
            _time.sleep(us / 1e6)
