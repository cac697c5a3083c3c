# Time helpers that exist on MicroPython (time.ticks_*) and on CPython (tests,
# host), so the core runs unchanged on both.
#
# The µs clock wraps: every 2**30 us (17.9 min) on the RP2040, every 2**62 us on the
# 64-bit unix port. Pen logic only ever takes differences (ticks_diff) of values less
# than 2**29 apart. A test can make the clock wrap like the pen's with the environment
# variable PEN_TICKS_PERIOD (a power of two, e.g. 1073741824): the functions below then
# use that period, on CPython and on the unix port (slower there: Python, not C).
import os

_getenv = getattr(os, "getenv", None)     # the RP2040's os has no getenv
_env_period = _getenv("PEN_TICKS_PERIOD") if _getenv is not None else None

try:
    if _env_period:
        raise ImportError("PEN_TICKS_PERIOD set: use the Python arithmetic below")
    from time import sleep_us, ticks_add, ticks_diff, ticks_us  # type: ignore[attr-defined]
    TICKS_PERIOD = ticks_add(0, -1) + 1
except ImportError:  # CPython, or a test period: the same arithmetic as MicroPython's ticks
    import time as _time

    TICKS_PERIOD = int(_env_period) if _env_period else 1 << 62
    if TICKS_PERIOD & (TICKS_PERIOD - 1):
        raise ValueError("PEN_TICKS_PERIOD must be a power of two")
    _MASK = TICKS_PERIOD - 1
    _HALF = TICKS_PERIOD >> 1

    if hasattr(_time, "monotonic_ns"):
        def ticks_us():
            return (_time.monotonic_ns() // 1000) & _MASK  # type: ignore[attr-defined]
    else:  # pragma: no cover - MicroPython with a test period
        _ticks_us = _time.ticks_us  # type: ignore[attr-defined]

        def ticks_us():
            return _ticks_us() & _MASK  # type: ignore[operator]

    def ticks_add(ticks, delta):
        return (ticks + delta) & _MASK

    def ticks_diff(end, start):
        return ((end - start + _HALF) & _MASK) - _HALF

    if hasattr(_time, "sleep_us"):
        sleep_us = _time.sleep_us  # type: ignore[attr-defined]
    else:
        def sleep_us(us):
            if us > 0:
                _time.sleep(us / 1e6)


def zeros(typecode, count):
    """array(typecode) of `count` zeros, without a temporary list of `count` objects (8
    bytes each on the unix port: a fragmented heap may not have that in one piece).
    MicroPython takes a bytes object as the array's raw buffer; CPython repeats an array."""
    from array import array
    one = array(typecode, [0])
    try:
        return array(typecode, bytes(count * len(bytes(one))))
    except TypeError:
        return one * count
