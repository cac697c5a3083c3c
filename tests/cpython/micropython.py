"""CPython stand-in for MicroPython's `micropython` module, so the firmware core
(pen/control.py uses the native code emitter) imports in CPython tests.
Only what the firmware uses; the decorators and const are identities here."""


def const(value):
    return value


def native(func):
    return func


def heap_lock():
    raise NotImplementedError("heap_lock exists only on MicroPython")


def heap_unlock():
    raise NotImplementedError("heap_unlock exists only on MicroPython")
