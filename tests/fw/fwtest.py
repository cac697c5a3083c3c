# Helpers for firmware tests that run unchanged on CPython (pytest) and on the
# MicroPython unix port (tests/mp_runner.py). Common subset only.
import os

from boards.sim import Board
from pen import control as c
from pen.app import App

_counter = [0]


class _NullOut:
    """The host side of the pen's USB link: collects the lines the pen wrote."""

    def __init__(self):
        self.frames = []
        self._partial = b""

    def write(self, data):
        data = self._partial + bytes(data)
        while True:
            end = data.find(b"\n")
            if end < 0:
                break
            self.frames.append(data[:end + 1])
            data = data[end + 1:]
        self._partial = data
        return len(data)


class _NoInput:
    """A host that sends nothing (a stream that is also its own poll object)."""

    def read(self, n):
        return b""

    def poll(self, timeout):
        return []

    def ipoll(self, timeout):
        return iter(())


def fresh_dir(tag):
    """A new empty folder for a pen's flash."""
    base = os.getenv("PEN_TEST_TMP") or "/tmp"
    _counter[0] += 1
    path = "%s/pen-%s-%d-%d" % (base, tag, os.getpid() if hasattr(os, "getpid") else 0, _counter[0])
    _rmtree(path)
    os.mkdir(path)
    return path


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        full = path + "/" + name
        try:
            os.remove(full)
        except OSError:
            _rmtree(full)
    os.rmdir(path)


class Pen:
    """A virtual pen on the fast clock, driven tick by tick from a test."""

    def __init__(self, folder=None, seed=12345, time_start_s=0):
        self.folder = folder or fresh_dir("t")
        self.power_on(seed, time_start_s=time_start_s)

    def power_on(self, seed=12345, clock="fast", time_start_s=0):
        self.out = _NullOut()
        self.board = Board(clock=clock, serial="TEST-1", seed=seed, out=self.out, inp=_NoInput(),
                           time_start_s=time_start_s, world=False)
        self.board.store_dir = self.folder + "/data"
        self.app = App(self.board)
        self.ctl = self.app.ctl
        self.board.cartridge = getattr(self, "cartridge", None)

    def now_us(self):
        """Core 0's pen time (us since power-on, plus the clock's start)."""
        return self.board._core0_us

    def run_ms(self, ms):
        """Let `ms` of pen time pass (the app's loop, as on the pen)."""
        end = self.board._core0_us + ms * 1000
        while self.board._core0_us < end:
            self.app.step()

    def run_until(self, predicate, limit_ms):
        """Run until predicate() holds; returns the pen time it took (ms)."""
        start = self.board._core0_us
        end = start + limit_ms * 1000
        while self.board._core0_us <= end:
            if predicate():
                return (self.board._core0_us - start) // 1000
            self.app.step()
        raise AssertionError("condition not reached within %d ms (state %s)" % (limit_ms, self.state()))

    def state(self):
        return c.STATE_NAMES[self.ctl.state]

    def request(self, op, **fields):
        # As in the app's loop: what core 1 published is acted on before a request.
        self.app.poll_events()
        body = {"op": op}
        for key in fields:
            body[key] = fields[key]
        return self.app.handle_request(body)

    def boot(self):
        self.run_until(lambda: self.ctl.state != c.BOOT, 2000)
        return self.state()

    def insert(self, cartridge_id):
        self.cartridge = cartridge_id
        self.board.cartridge = cartridge_id

    def sterilise(self):
        assert self.request("sterilise_start")["ok"]
        self.run_until(lambda: self.ctl.state != c.STERILISING, 100000)
        return self.state()

    def push_profile(self, name="scalp", depth_um=500, stroke_hz=100, max_session_s=60):
        if depth_um > self.app.clinical.ceiling_um:
            # A factory-fresh pen allows 0.5 mm (S16): the clinician opens the full range first
            # (2.5 mm, the S1 maximum), as for a pen used across the whole depth range.
            from clinicalfix import clinician_sets_ceiling
            clinician_sets_ceiling(self.request, self.board.serial, 2500)
        reply = self.request("profile_put", profile={"name": name, "depth_um": depth_um,
                                                     "stroke_hz": stroke_hz,
                                                     "max_session_s": max_session_s})
        assert reply["ok"], reply
        assert self.request("profile_use", name=name)["ok"]

    def take_events(self, kind=None):
        """The events written so far (of `kind`), and forget every frame written so far."""
        found = self.events(kind)
        self.out.frames = []
        return found

    def events(self, kind=None):
        from pen import wire
        self.app.poll_events()
        found = []
        for frame in self.out.frames:
            frame_kind, num, body = wire.decode(frame)
            if frame_kind == "E" and (kind is None or body.get("ev") == kind):
                found.append(body)
        return found


class SkipTest(Exception):
    """Raised by a test that does not apply on this interpreter (reported as a skip)."""


def skip(reason):
    raise SkipTest(reason)


def on_micropython():
    import sys
    return sys.implementation.name == "micropython"


def read_pages(request, op):
    """Every entry of a paged read (log_read, audit_read), oldest first, 4 per request:
    `request(op, **fields)` returns the reply dict."""
    entries = []
    start = 0
    while True:
        reply = request(op, **{"from": start, "count": 4})
        assert reply["ok"], reply
        entries.extend(reply["entries"])
        if reply["next"] >= reply["end"]:
            return entries
        start = reply["next"]
