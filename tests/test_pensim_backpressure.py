"""The host paces the virtual pen's output (docs/design.md §5.2, host/pensim/ptyport.py).

A pen on an unpaced clock writes faster than real time; a host that reads slower (pyserial's
RFC 2217 client reads about 120 KB/s) must still get every byte, as it would from a real pen
whose 50 Hz telemetry it easily keeps up with. A stand-in firmware writes numbered lines as fast
as its stdout takes them; the host reads slowly; no line may be lost or duplicated, and the
writer must have been held back (it finishes only as the host reads).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from test_simpen import open_port

from pensim.ptyport import OUT_CAP
from pensim.supervisor import VirtualPen

LINES = 40000                        # ~1.2 MB: several times the supervisor's OUT_CAP
LINE_BYTES = 30

WRITER_MAIN = r'''
import sys
out = sys.stdout.buffer
for n in range(%d):
    out.write(b"line %%08d ........... end\n" %% n)
out.write(b"DONE\n")
import time
while True:
    time.sleep(1)
''' % LINES


def test_a_slow_host_gets_every_byte_the_pen_writes():
    assert LINES * LINE_BYTES > 4 * OUT_CAP       # dropping beyond OUT_CAP would show
    with tempfile.TemporaryDirectory(prefix="vpen") as tmp:
        flash = Path(tmp) / "flash"
        flash.mkdir()
        (flash / "main.py").write_text(WRITER_MAIN)
        with VirtualPen(state_dir=flash, clock="fast") as pen:
            ser = open_port(pen)
            received = bytearray()
            started = time.monotonic()
            slow_until = started + 1.0
            while b"DONE\n" not in received:
                assert time.monotonic() - started < 60, "the writer never finished: %d bytes" % len(received)
                chunk = ser.read(4096)
                received += chunk
                if time.monotonic() < slow_until:
                    time.sleep(0.05)            # a slow host for the first second: ~80 KB/s
            ser.close()
    lines = bytes(received).split(b"\n")
    numbered = [int(line.split()[1]) for line in lines if line.startswith(b"line ")]
    assert numbered == list(range(LINES)), "lost or repeated lines: first gap near %s" % next(
        (i for i, n in enumerate(numbered) if n != i), None)
    assert all(len(line) + 1 == LINE_BYTES for line in lines if line.startswith(b"line "))
