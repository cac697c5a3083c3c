"""`make bench`: every performance budget of docs/design.md §6, measured side by side with its
baseline in one run. Prints a table and writes bench.json:
{"budgets": [{"name", "unit", "measured", "baseline", "ratio", "budget", "pass"}, ...]}.
Methods: docs/performance.md.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serial

from penctl.client import Pen
from penctl.flash import compile_firmware, flash_firmware
from pensim.supervisor import VirtualPen

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MICROPYTHON = str(BIN / "micropython")
MPREMOTE = str(BIN / "mpremote")
CLK_TCK = os.sysconf("SC_CLK_TCK")

ECHO_MAIN = """\
# Baseline for the request round trip: a bare line echo through MicroPython.
import sys
read = sys.stdin.buffer.readline
write = sys.stdout.buffer.write
while True:
    line = read()
    if not line:
        break
    write(line)
"""

results = []


def record(name, unit, measured, baseline, budget, passed, ratio=None, note=""):
    if ratio is None and baseline:
        ratio = measured / baseline
    results.append({"name": name, "unit": unit, "measured": measured, "baseline": baseline,
                    "ratio": ratio, "budget": budget, "pass": bool(passed), "note": note})
    print("  measured %-42s %s" % (name, _fmt(measured)), flush=True)


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime + stime


def percentile(hist, bucket_us, fraction):
    """Lateness at `fraction` from the pen's histogram (upper edge of the bucket)."""
    target = fraction * sum(hist)
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= target:
            return (index + 1) * bucket_us
    return None


# ---- 1. control tick cost ----------------------------------------------------------------

def bench_tick(rounds):
    print("tick cost (unix port, %d rounds)" % rounds, flush=True)
    out = subprocess.run([MICROPYTHON, "-X", "heapsize=192K", "tools/bench_tick.py", str(rounds)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    record("control tick cost", "us", round(data["tick_us"], 3), round(data["ref_us"], 3), "<= 3 x reference PI tick",
           data["ratio"] <= 3.0, ratio=round(data["ratio"], 3),
           note="median of %d alternating rounds of %d ticks" % (data["rounds"], data["ticks_per_round"]))
    record("allocations in the tick (heap_lock)", "count", data["tick_allocates"], None, "0",
           data["tick_allocates"] == 0, note="5000 ticks under micropython.heap_lock()")


# ---- 2. real-clock virtual pen: lateness, CPU, telemetry, heap -----------------------------

def sterilised_state(work):
    """A flash folder whose pen is unlocked (sterilised on the fast clock, to save 60 s)."""
    state = work / "rt-flash"
    with VirtualPen(state_dir=state, clock="fast") as vpen:
        with Pen(vpen.port, timeout=5) as pen:
            wait_state(pen, ("LOCKED",))
            pen.profile_push([{"name": "bench", "depth_mm": 1.0, "stroke_hz": 100, "max_session_s": 1800}])
            pen.profile_use("bench")
            pen.sterilise(wait=True)
    return state


def wait_state(pen, wanted, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while pen.state() not in wanted:
        if time.monotonic() > deadline:
            raise RuntimeError("pen not %s within %d s" % ("/".join(wanted), timeout_s))
        time.sleep(0.05)


def bench_realtime(work, seconds):
    print("real-clock virtual pen: %d s session with 50 Hz telemetry" % seconds, flush=True)
    state = sterilised_state(work)
    with VirtualPen(state_dir=state, clock="real") as vpen:
        vpen.cartridge("BE7C%012X" % int(time.time()))
        with Pen(vpen.port, timeout=5) as pen:
            wait_state(pen, ("READY",))                       # homing after power-on
            pen.telemetry_on(True)
            pen.session_start()
            time.sleep(1.0)                                   # past positioning and soft start
            pen.request("timing", reset=True)
            pid = vpen.interpreter_pid
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            heap = []
            rows = []
            gaps_before = pen.link.event_gaps
            last_n = None
            sample_gaps = 0
            next_mem = wall0
            while time.monotonic() - wall0 < seconds:
                event = pen.link.next_event(0.2)
                if event is not None and event[1].get("ev") == "tm":
                    n = event[1]["n"]
                    if last_n is not None and n != last_n + 1:
                        sample_gaps += n - last_n - 1
                    last_n = n
                    rows.append(event[1]["s"][0])
                if time.monotonic() >= next_mem:
                    heap.append(pen.request("mem"))
                    next_mem += 5.0
            wall = time.monotonic() - wall0
            cpu = cpu_seconds(pid) - cpu0
            timing = pen.request("timing")
            event_gaps = pen.link.event_gaps - gaps_before
            pen.session_stop()
            pen.telemetry_on(False)
    span_s = (rows[-1] - rows[0]) / 1000 if len(rows) > 1 else 0
    rate = (len(rows) - 1) / span_s if span_s else 0
    p99 = percentile(timing["hist"], timing["bucket_us"], 0.99)
    p999 = percentile(timing["hist"], timing["bucket_us"], 0.999)
    cpu_pct = 100 * cpu / wall
    record("tick lateness p99 (real clock)", "us", p99, None, "<= 50", p99 is not None and p99 <= 50,
           note="%d ticks over %.0f s, 5 us buckets (upper edge)" % (timing["ticks"], wall))
    record("tick lateness p99.9 (real clock)", "us", p999, None, "<= 200", p999 is not None and p999 <= 200)
    record("CPU use of the virtual pen", "% of a core", round(cpu_pct, 1), None, "<= 30", cpu_pct <= 30,
           note="utime+stime of the interpreter over the window")
    record("telemetry rate", "Hz", round(rate, 2), 50, ">= 50 sustained", rate >= 49.5 and wall >= 60,
           note="%d samples over %.1f s of pen time" % (len(rows), span_s))
    record("telemetry gaps over %d s" % seconds, "samples", sample_gaps + event_gaps, None, "0",
           sample_gaps + event_gaps == 0)
    live = max(h["live"] for h in heap)
    return live, timing


SLEEP_FLOOR = """\
import time
late = []
for i in range(20000):
    t = time.ticks_us()
    time.sleep_us(150)
    late.append(time.ticks_diff(time.ticks_us(), t) - 150)
late.sort()
print(late[len(late) * 99 // 100], late[len(late) * 999 // 1000])
"""


def bench_sleep_floor():
    """The platform's floor for tick lateness: how late a bare 150 us sleep of the same
    interpreter wakes up, with the virtual pen's timer slack (same process set-up)."""
    from pensim.supervisor import _CHILD_SETUP
    out = subprocess.run([MICROPYTHON, "-c", SLEEP_FLOOR], capture_output=True, text=True, check=True,
                         preexec_fn=_CHILD_SETUP).stdout.split()
    p99, p999 = int(out[0]), int(out[1])
    record("  platform floor: bare sleep_us(150) overshoot p99", "us", p99, None, "report", True,
           note="20000 sleeps, same interpreter and timer slack as the virtual pen")
    record("  platform floor: bare sleep_us(150) overshoot p99.9", "us", p999, None, "report", True)


# ---- 3. request round trip ---------------------------------------------------------------

def roundtrip_samples(port, count):
    with Pen(port, timeout=5) as pen:
        for _ in range(20):
            pen.request("info")
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            pen.request("info")
            samples.append(time.perf_counter() - t0)
    return samples


def echo_samples(work, count):
    state = work / "echo-flash"
    state.mkdir()
    (state / "main.py").write_text(ECHO_MAIN)
    payload = b"@" + b"x" * 62 + b"\n"                      # 64 bytes with the newline
    with VirtualPen(state_dir=state, clock="real") as vpen:
        with serial.Serial(vpen.port, timeout=5) as ser:
            time.sleep(0.5)
            ser.reset_input_buffer()
            samples = []
            for index in range(count + 20):
                t0 = time.perf_counter()
                ser.write(payload)
                line = ser.readline()
                if line != payload:
                    raise RuntimeError("echo baseline returned %r" % line)
                if index >= 20:
                    samples.append(time.perf_counter() - t0)
    return samples


def bench_roundtrip(work, count):
    print("request round trip (%d info requests) vs 64-byte echo through MicroPython" % count, flush=True)
    with VirtualPen(state_dir=work / "rtt-flash", clock="real") as vpen:
        ours = statistics.median(roundtrip_samples(vpen.port, count)) * 1e6
    base = statistics.median(echo_samples(work, count)) * 1e6
    record("request round trip (info)", "us", round(ours), round(base), "<= 1.5 x echo", ours <= 1.5 * base,
           note="medians; both through the virtual pen's pty and supervisor")


# ---- 4. flashing ---------------------------------------------------------------------------

def mpremote_tree(work):
    """The same files penctl flash writes, as a folder for `mpremote fs cp -r`."""
    build = compile_firmware()
    tree = work / "mpy-tree" / "fw"
    for item in build.files:
        path = tree / item.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
    (tree.parent / "main.py").write_bytes(build.stub)
    size = sum(len(item.data) for item in build.files)
    return tree, size, len(build.files)


def bench_flash(work, repeats):
    print("flash: penctl flash (full, unchanged) vs mpremote fs cp -r, %d repeats" % repeats, flush=True)
    tree, size, nfiles = mpremote_tree(work)
    full, unchanged, cp = [], [], []
    for index in range(repeats):
        with VirtualPen(state_dir=work / ("flash-%d" % index), blank=True, clock="fast") as vpen:
            t0 = time.perf_counter()
            flash_firmware(vpen.port)
            full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = flash_firmware(vpen.port)
            unchanged.append(time.perf_counter() - t0)
            assert report["files_written"] == 0, report
        with VirtualPen(state_dir=work / ("cp-%d" % index), blank=True, clock="fast") as vpen:
            t0 = time.perf_counter()
            subprocess.run([MPREMOTE, "connect", vpen.port, "fs", "cp", "-r", str(tree), ":"], check=True,
                           capture_output=True)
            cp.append(time.perf_counter() - t0)
    full_s, unchanged_s, cp_s = (statistics.median(v) for v in (full, unchanged, cp))
    record("penctl flash, full", "s", round(full_s, 3), round(cp_s, 3), "<= 0.5 x mpremote fs cp -r",
           full_s <= 0.5 * cp_s, note="%d .mpy files, %d bytes; blank virtual pen" % (nfiles, size))
    record("penctl flash, nothing changed", "s", round(unchanged_s, 3), None, "<= 0.4", unchanged_s <= 0.4)
    return size


# ---- 5. heap and fast clock ----------------------------------------------------------------

CODE_HEAP = """\
import gc, sys
sys.path.insert(0, "firmware")
gc.collect()
base = gc.mem_alloc()
import pen.limits, pen.compat, pen.wire, pen.store, pen.profiles, pen.control, boards.sim, pen.app
gc.collect()
print(gc.mem_alloc() - base)
"""


def firmware_code_heap():
    """Heap the firmware's modules occupy once imported (bytecode and native code: the
    unix port, like an RP2040 without frozen modules, keeps loaded code in the heap)."""
    out = subprocess.run([MICROPYTHON, "-X", "heapsize=192K", "-c", CODE_HEAP], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return int(out.split()[-1])


def bench_fast_clock(work, live_session):
    print("fast clock: speed and heap over a long session", flush=True)
    with VirtualPen(state_dir=work / "soak-flash", clock="fast") as vpen:
        with Pen(vpen.port, timeout=10) as pen:
            pen.profile_push([{"name": "soak", "depth_mm": 1.5, "stroke_hz": 120, "max_session_s": 1800}])
            pen.profile_use("soak")
            wait_state(pen, ("LOCKED",))
            pen.sterilise(wait=True)
            vpen.cartridge("50AC%012X" % int(time.time()))
            pen.session_start()
            # Live heap once the session runs (its records written: cartridge, log entry) ...
            heap_start = pen.request("mem")["live"]
            t0, up0 = time.monotonic(), pen.request("info")["counters"]["uptime_ms"]
            while pen.state() == "RUNNING":
                time.sleep(0.5)
            wall = time.monotonic() - t0
            up1 = pen.request("info")["counters"]["uptime_ms"]
            heap_end = pen.request("mem")["live"]     # ... and after 1800 s of it, ended
            entry = pen.log()[-1]
    speed = (up1 - up0) / 1000 / wall
    record("fast clock speed (during a session)", "x real time", round(speed, 1), None, ">= 50", speed >= 50,
           note="%.0f s of pen time in %.1f s" % ((up1 - up0) / 1000, wall))
    code = firmware_code_heap()
    record("heap peak during a session (live)", "KB", round(live_session / 1024, 1), None, "<= 48",
           live_session <= 48 * 1024, note="192 KB heap; gc.collect() then gc.mem_alloc(), sampled every 5 s;"
           " includes the loaded firmware code")
    record("  of which: firmware code loaded into the heap", "KB", round(code / 1024, 1), None, "report", True,
           note="bytecode + native code of all modules after import (frozen modules would put it in flash)")
    record("  of which: data (session peak minus code)", "KB", round((live_session - code) / 1024, 1), None,
           "report", True)
    record("heap growth over a 1800 s session (fast clock)", "bytes", heap_end - heap_start, None, "<= 0",
           heap_end - heap_start <= 0, note="live heap just after session start vs after the session (%s)"
           % entry.get("end"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="bench.json")
    parser.add_argument("--seconds", type=int, default=60, help="real-clock window (>= 20; 60 for telemetry)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pen-bench-"))
    try:
        bench_tick(rounds=9)
        live, _timing = bench_realtime(work, args.seconds)
        bench_sleep_floor()
        bench_roundtrip(work, 200)
        size = bench_flash(work, args.repeats)
        bench_fast_clock(work, live)
        record("firmware .mpy size", "bytes", size, None, "report", True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("%-46s %-10s %10s %10s %7s  %-28s %s" % ("budget", "unit", "measured", "baseline", "ratio", "limit",
                                                  "pass"))
    for item in results:
        print("%-46s %-10s %10s %10s %7s  %-28s %s" % (
            item["name"], item["unit"], _fmt(item["measured"]), _fmt(item["baseline"]),
            _fmt(round(item["ratio"], 2)) if item["ratio"] is not None else "-", item["budget"],
            "PASS" if item["pass"] else "FAIL"))
    with open(args.json, "w") as handle:
        json.dump({"budgets": results}, handle, indent=1)
    print("\nwrote %s" % args.json)
    return 0 if all(item["pass"] for item in results) else 1


if __name__ == "__main__":
    sys.exit(main())
