"""The virtual pen's event loop: one thread, one selector, timers, and calls from other threads.

Every part of the virtual pen (pty port, interpreter, rig channel, rig server) registers its file
descriptors here with a callback and runs only in the loop thread, so none of them needs a lock.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

Callback = Callable[[int], None]          # called with the selector's event mask

# Events of one select() are handled in priority order: the REPL shim's state byte before the
# host's bytes, so a Ctrl-C in the same batch sees whether code is running.
PRIORITY_STATE = 0
PRIORITY_NORMAL = 1


class Timer:
    """A pending call of `EventLoop.after`; `cancel()` stops it."""

    __slots__ = ("when", "seq", "fn", "cancelled")

    def __init__(self, when: float, seq: int, fn: Callable[[], None]):
        self.when = when
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._calls: deque[Callable[[], None]] = deque()
        self._calls_lock = threading.Lock()
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._stopping = False
        self.thread: threading.Thread | None = None
        self._sel.register(self._wake_r, selectors.EVENT_READ, (PRIORITY_NORMAL, self._run_calls))

    # ---- file descriptors -------------------------------------------------------------------

    def watch(self, fd: int, mask: int, callback: Callback, priority: int = PRIORITY_NORMAL) -> None:
        """Watch `fd` for `mask` (0: stop watching), calling `callback(mask)` on events."""
        try:
            key = self._sel.get_key(fd)
        except (KeyError, ValueError):
            key = None
        if not mask:
            if key is not None:
                self._sel.unregister(fd)
        elif key is None:
            self._sel.register(fd, mask, (priority, callback))
        elif key.events != mask or key.data != (priority, callback):
            self._sel.modify(fd, mask, (priority, callback))

    def forget(self, fd: int | None) -> None:
        """Stop watching `fd` (before it is closed); unknown fds are ignored."""
        if fd is None:
            return
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    # ---- timers and calls -------------------------------------------------------------------

    def after(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        with self._calls_lock:
            self._calls.append(fn)
        self._wake()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pipe full: a wake-up is already pending
            pass

    def _run_calls(self, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn = self._calls.popleft()
            self._guarded(fn)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guarded(timer.fn)

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - keep the pen alive, report the bug
            traceback.print_exc(file=sys.stderr)

    # ---- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Handle events until `stop()`; runs in `self.thread`."""
        while not self._stopping:
            timeout = max(0.0, self._timers[0].when - time.monotonic()) if self._timers else None
            try:
                events = self._sel.select(timeout)
            except InterruptedError:
                continue
            events.sort(key=lambda event: event[0].data[0])
            for key, mask in events:
                _priority, callback = key.data
                self._guarded(lambda callback=callback, mask=mask: callback(mask))
            self._run_timers()

    def stop(self) -> None:
        """Make `run()` return (from any thread)."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
