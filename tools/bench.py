"""`make bench`: every performance budget of docs/design.md §6, measured side by side with its
baseline in one run. Prints a table and writes bench.json:
{"budgets": [{"name", "unit", "measured", "baseline", "ratio", "budget", "pass", "note"}, ...]}.
A ratio budget is measured with both sides interleaved (alternating rounds, the median of the
per-round ratios), so it holds from run to run. Methods: docs/performance.md.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import serial

from penctl.client import Pen
from penctl.flash import compile_firmware, flash_firmware
from pensim.supervisor import VirtualPen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from simfixtures.targetpen import TargetPen, make_template  # noqa: E402

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

# (rig fault, the budget's event: "inject" or the end of the tach's detection window)
TARGET_FAULTS = ("stall", "overcurrent", "overtemp", "tach_loss", "depth_jam", "low_battery", "cartridge_out")
STROKE_HZ = 100

results = []


def record(name, unit, measured, baseline, budget, passed, ratio=None, note=""):
    if ratio is None and baseline:
        ratio = measured / baseline
    results.append({"name": name, "unit": unit, "measured": measured, "baseline": baseline,
                    "ratio": ratio, "budget": budget, "pass": bool(passed), "note": note})
    print("  measured %-50s %s" % (name, _fmt(measured)), flush=True)


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


def wait_state(pen, wanted, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while pen.state() not in wanted:
        if time.monotonic() > deadline:
            raise RuntimeError("pen not %s within %d s" % ("/".join(wanted), timeout_s))
        time.sleep(0.05)


# ---- 1. control tick cost (unix port) ----------------------------------------------------

def bench_tick(rounds):
    print("tick cost (unix port, %d rounds)" % rounds, flush=True)
    out = subprocess.run([MICROPYTHON, "-X", "heapsize=1024K", "tools/bench_tick.py", str(rounds)],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PEN_TEST_TMP=tempfile.mkdtemp(prefix="bench-tick-"))).stdout
    data = json.loads(out.strip().splitlines()[-1])
    record("control tick cost (Controller.tick)", "us", round(data["tick_us"], 3), round(data["ref_us"], 3),
           "<= 3 x reference PI tick", data["ratio"] <= 3.0, ratio=round(data["ratio"], 3),
           note="median of %d rounds of %d calls, each tick timed next to a reference call"
           % (data["rounds"], data["ticks_per_round"]))
    record("allocations in core 1's loop (heap_lock)", "count", data["tick_allocates"], None, "0",
           data["tick_allocates"] == 0, note="5000 periods under micropython.heap_lock()")


# ---- 2. target clock: the pen's CPU speed --------------------------------------------------

def _motor_off(tp):
    deadline = time.monotonic() + 60
    while True:
        plant = tp.measure()
        if not plant["motor_on"]:
            return plant
        if time.monotonic() > deadline:
            raise RuntimeError("motor still on")
        time.sleep(0.01)


def bench_target(work, seconds):
    print("target clock: a %d s session with 50 Hz telemetry, requests, faults" % seconds, flush=True)
    template = make_template(work / "target-template")
    tp = TargetPen(work / "target-session", template)
    try:
        pen = tp.pen
        tp.start_session(stroke_hz=STROKE_HZ, max_session_s=1800)
        pen.request("timing", reset=True)
        result = pen.telemetry(seconds)
        timing = pen.request("timing")
        factor = pen.info().get("clock_factor_x100", 0) / 100
        info_ms = []
        for _ in range(100):
            pen.request("info")
            info_ms.append(pen.request("timing")["request_max_us"].get("info", 0) / 1000)
            pen.request("timing", reset=True)
        # the host stops reading for 5 s of pen time
        pen.telemetry_on(True)
        dropped0 = pen.info()["counters"]["tm_dropped"]
        tp.rig(op="hold_output", ms=5000)
        tp.wait(lambda: not tp.measure()["output_held"], "hold over")
        time.sleep(0.2)
        dropped = pen.info()["counters"]["tm_dropped"] - dropped0
        pen.telemetry_on(False)
    finally:
        tp.close()
    ticks = timing["ticks"]
    mean = timing["tick_mean_us"]
    cpu = 100 * mean / timing["period_us"]
    per_10k = 10000 * timing["overruns"] / max(ticks, 1)
    p99 = percentile(timing["hist"], timing["bucket_us"], 0.99)
    p999 = percentile(timing["hist"], timing["bucket_us"], 0.999)
    note = "%d ticks over %d s of pen time, clock factor %.0f (host us -> pen us)" % (ticks, seconds, factor)
    record("target: tick cost, mean", "us", mean, None, "report", True, note=note)
    record("target: tick cost, max (costliest code path)", "us", timing["tick_max_us"], None, "report", True)
    record("target: tick CPU share", "% of core 1", round(cpu, 1), None, "<= 50", cpu <= 50)
    record("target: overruns", "per 10^4 ticks", round(per_10k, 2), None, "<= 1", per_10k <= 1)
    record("target: tick lateness p99", "us", p99, None, "<= 50", p99 is not None and p99 <= 50)
    record("target: tick lateness p99.9", "us", p999, None, "<= 200", p999 is not None and p999 <= 200)
    rows = result["rows"]
    span = rows[-1]["t_s"] - rows[0]["t_s"]
    rate = (len(rows) - 1) / span if span else 0
    gaps = result["sample_gaps"] + result["event_gaps"]
    record("target: telemetry rate", "Hz", round(rate, 2), 50, ">= 50 sustained", rate >= 49.5)
    record("target: telemetry gaps over %d s" % seconds, "samples", gaps, None, "0", gaps == 0)
    info_ms.sort()
    record("target: info answered within (max of 100)", "ms", round(info_ms[-1], 1), None, "<= 50",
           info_ms[-1] <= 50, note="median %.1f ms; from its first byte read to its answer written" % info_ms[50])
    record("target: telemetry dropped while the host stops reading 5 s", "samples", dropped, None, "report", True,
           note="hold_output: the USB FIFO full, the samples are dropped, not the ticks")
    bench_target_reactions(work, template)
    bench_target_session_limit(work, template)


def bench_target_reactions(work, template):
    print("target clock: reaction time of each fault", flush=True)
    for index, fault in enumerate(TARGET_FAULTS):
        for mode in ("", "held"):
            tp = TargetPen(work / ("target-fault-%d%s" % (index, mode)), template)
            try:
                tp.start_session(stroke_hz=STROKE_HZ)
                if mode:
                    tp.pen.telemetry_on(True)
                    tp.rig(op="hold_output", ms=20000)
                    threading.Thread(target=_quietly, args=(tp.pen.request, "info", 2), daemon=True).start()
                    time.sleep(0.02)
                injected = tp.rig(op="inject", fault=fault)
                plant = _motor_off(tp)
            finally:
                tp.close()
            if fault == "tach_loss":
                reaction = plant["motor_off_us"] - (plant["tach_us"] + 2 * 1_000_000 // STROKE_HZ)
                event = "the end of the detection window"
            else:
                reaction = plant["motor_off_us"] - injected["inject_us"]
                event = "injection"
            name = "target: %s -> motor off%s" % (fault, " (output held)" if mode else "")
            record(name, "ms", round(reaction / 1000, 3), None, "<= 2", 0 <= reaction <= 2000,
                   note="pen time from %s" % event)
    tp = TargetPen(work / "target-lid", template)
    try:
        tp.wait_state("READY")
        tp.pen.sterilise(wait=False)
        tp.wait(lambda: tp.measure()["uv_on"], "UV on")
        injected = tp.rig(op="inject", fault="lid_open")
        tp.wait_state("LOCKED")
        plant = tp.measure()
    finally:
        tp.close()
    light = plant["uv_off_us"] - injected["inject_us"]
    command = plant["uv_cmd_off_us"] - injected["inject_us"]
    record("target: lid open -> UV light off", "ms", round(light / 1000, 3), None, "<= 1", 0 <= light <= 1000,
           note="the lid switch gates the LED driver (docs/hardware.md); the firmware's own cut: %.3f ms"
           % (command / 1000))


def bench_target_session_limit(work, template):
    print("target clock: session limit", flush=True)
    tp = TargetPen(work / "target-limit", template)
    try:
        started = tp.start_session(max_session_s=10, settle_ms=0)
        plant = _motor_off_wait(tp, 120)
    finally:
        tp.close()
    error_ms = plant["motor_off_us"] / 1000 - started["t_ms"] - 10000
    record("target: session end at max_session_s = 10 s", "ms error", round(error_ms, 3), None, "within +-10",
           abs(error_ms) <= 10)


def _motor_off_wait(tp, timeout_s):
    deadline = time.monotonic() + timeout_s
    while tp.measure()["motor_on"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the session did not end")
        time.sleep(0.05)
    return tp.measure()


def _quietly(call, *args):
    try:
        return call(*args)
    except Exception:
        return None


# ---- 3. real-clock virtual pen: lateness, CPU, telemetry, heap -----------------------------

def bench_realtime(work, seconds, template):
    print("real-clock virtual pen: %d s session with 50 Hz telemetry" % seconds, flush=True)
    tp = TargetPen(work / "realtime", template, clock="real")
    try:
        pen = tp.pen
        tp.start_session(max_session_s=1800)
        pen.request("timing", reset=True)
        pid = tp.vpen.interpreter_pid
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        result = pen.telemetry(seconds)
        wall = time.monotonic() - wall0
        cpu = cpu_seconds(pid) - cpu0
        timing = pen.request("timing")
    finally:
        tp.close()
    rows = result["rows"]
    span = rows[-1]["t_s"] - rows[0]["t_s"]
    rate = (len(rows) - 1) / span if span else 0
    p99 = percentile(timing["hist"], timing["bucket_us"], 0.99)
    p999 = percentile(timing["hist"], timing["bucket_us"], 0.999)
    cpu_pct = 100 * cpu / wall
    record("real clock: tick lateness p99 (co-simulated core 1)", "us", p99, None, "report", True,
           note="%d ticks; pen time of each tick's start after its deadline" % timing["ticks"])
    record("real clock: tick lateness p99.9", "us", p999, None, "report", True)
    record("CPU use of the virtual pen (real clock)", "% of a core", round(cpu_pct, 1), None, "<= 30",
           cpu_pct <= 30, note="utime+stime of the interpreter over the window")
    record("real clock: telemetry rate", "Hz", round(rate, 2), 50, ">= 50 sustained", rate >= 49.5 and wall >= 60,
           note="%d samples over %.1f s of pen time" % (len(rows), span))
    gaps = result["sample_gaps"] + result["event_gaps"]
    record("real clock: telemetry gaps over %d s" % seconds, "samples", gaps, None, "0", gaps == 0)


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
    """The host's floor for waking on time: how late a bare 150 us sleep of the same interpreter
    wakes up, with the virtual pen's timer slack (same process set-up)."""
    from pensim.supervisor import _CHILD_SETUP
    out = subprocess.run([MICROPYTHON, "-c", SLEEP_FLOOR], capture_output=True, text=True, check=True,
                         preexec_fn=_CHILD_SETUP).stdout.split()
    p99, p999 = int(out[0]), int(out[1])
    record("  host floor: bare sleep_us(150) overshoot p99", "us", p99, None, "report", True,
           note="20000 sleeps, same interpreter and timer slack as the virtual pen")
    record("  host floor: bare sleep_us(150) overshoot p99.9", "us", p999, None, "report", True)


# ---- 4. request round trip, interleaved with the echo ----------------------------------------

def bench_roundtrip(work, rounds, per_round):
    print("request round trip (info) vs 64-byte echo, %d interleaved rounds of %d" % (rounds, per_round), flush=True)
    state = work / "echo-flash"
    state.mkdir()
    (state / "main.py").write_text(ECHO_MAIN)
    payload = b"@" + b"x" * 62 + b"\n"                      # 64 bytes with the newline
    ours_r, base_r, ratios = [], [], []
    with VirtualPen(state_dir=work / "rtt-flash", clock="real") as vpen, \
            VirtualPen(state_dir=state, clock="real") as echo:
        with Pen(vpen.port, timeout=5) as pen, serial.Serial(echo.port, timeout=5) as ser:
            time.sleep(0.5)
            ser.reset_input_buffer()
            for _ in range(20):                              # warm both up
                pen.request("info")
                ser.write(payload)
                ser.readline()
            for _ in range(rounds):
                ours = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    pen.request("info")
                    ours.append(time.perf_counter() - t0)
                base = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    ser.write(payload)
                    if ser.readline() != payload:
                        raise RuntimeError("echo baseline failed")
                    base.append(time.perf_counter() - t0)
                ours_r.append(statistics.median(ours))
                base_r.append(statistics.median(base))
                ratios.append(ours_r[-1] / base_r[-1])
    ratio = statistics.median(ratios)
    record("request round trip (info)", "us", round(statistics.median(ours_r) * 1e6),
           round(statistics.median(base_r) * 1e6), "<= 1.5 x echo", ratio <= 1.5, ratio=round(ratio, 3),
           note="median of %d per-round ratios (rounds alternate); spread %.2f-%.2f"
           % (rounds, min(ratios), max(ratios)))


# ---- 5. flashing, interleaved with mpremote ---------------------------------------------------

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


def bench_flash(work, rounds):
    print("flash: penctl flash (full, unchanged) vs mpremote fs cp -r, %d interleaved rounds" % rounds, flush=True)
    tree, size, nfiles = mpremote_tree(work)
    full, unchanged, cp, ratios = [], [], [], []
    for index in range(rounds):
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
        ratios.append(full[-1] / cp[-1])
    ratio = statistics.median(ratios)
    record("penctl flash, full", "s", round(statistics.median(full), 3), round(statistics.median(cp), 3),
           "<= 0.5 x mpremote fs cp -r", ratio <= 0.5, ratio=round(ratio, 3),
           note="median of %d per-round ratios; %d .mpy files, %d bytes; blank virtual pen" % (rounds, nfiles, size))
    unchanged_s = statistics.median(unchanged)
    record("penctl flash, nothing changed", "s", round(unchanged_s, 3), None, "<= 0.4", unchanged_s <= 0.4)
    return size


# ---- 6. heap and fast clock --------------------------------------------------------------------

CODE_HEAP = """\
import gc, sys
sys.path.insert(0, sys.argv[1])
gc.collect()
base = gc.mem_alloc()
import pen.limits, pen.proto, pen.compat, pen.wire, pen.store, pen.profiles, pen.control, pen.phases
import pen.loop, pen.records, pen.ops, pen.app
gc.collect()
core = gc.mem_alloc() - base
import boards.sim
gc.collect()
print(core, gc.mem_alloc() - base)
"""


def firmware_code_heap(work):
    """Heap the firmware's modules occupy once imported from the .mpy files `penctl flash`
    writes (the unix port, like stock rp2 firmware, loads them into the heap): the pen's core,
    and with the virtual pen's board (sim, plant, rig protocol) too."""
    build = compile_firmware(arch="x64")
    tree = work / "code-heap"
    for item in build.files:
        path = tree / item.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
    out = subprocess.run([MICROPYTHON, "-X", "heapsize=192K", "-c", CODE_HEAP, str(tree)], capture_output=True,
                         text=True, check=True).stdout.split()
    arm = compile_firmware(arch="armv6m")
    return int(out[0]), int(out[1]), {f.rel: len(f.data) for f in build.files}, {f.rel: len(f.data) for f in arm.files}


def bench_fast_clock(work, template):
    print("fast clock: speed and heap over a long session", flush=True)
    tp = TargetPen(work / "soak", template, clock="fast")
    try:
        pen = tp.pen
        tp.start_session(stroke_hz=120, max_session_s=1800, settle_ms=0)
        # Live heap once the session runs (its records written: cartridge, log entry) ...
        heap_start = pen.request("mem")["live"]
        t0, up0 = time.monotonic(), pen.request("info")["counters"]["uptime_ms"]
        # ... with 50 Hz telemetry for a while (its frames are the largest data in flight)
        result = pen.telemetry(20.0)
        for _ in range(5):
            pen.telemetry_on(True)
            pen.request("info")
            pen.request("mem")
            time.sleep(0.2)
        pen.telemetry_on(False)
        while pen.state() == "RUNNING":
            time.sleep(0.5)
        wall = time.monotonic() - t0
        up1 = pen.request("info")["counters"]["uptime_ms"]
        heap_end = pen.request("mem")["live"]         # ... and after 1800 s of it, ended
        heap_peak = pen.request("mem")["live_max"]
        entry = pen.log()[-1]
    finally:
        tp.close()
    speed = (up1 - up0) / 1000 / wall
    record("fast clock speed (during a session)", "x real time", round(speed, 1), None, ">= 50", speed >= 50,
           note="%.0f s of pen time in %.1f s" % ((up1 - up0) / 1000, wall))
    record("heap growth over a 1800 s session (fast clock)", "bytes", heap_end - heap_start, None, "<= 0",
           heap_end - heap_start <= 0, note="live heap just after session start vs after the session (%s)"
           % entry.get("end"))
    assert result["samples"] > 0
    return heap_peak


def bench_heap(work, live_session):
    core, with_sim, x64, arm = firmware_code_heap(work)
    sim_code = with_sim - core
    data = live_session - with_sim
    pen_mpy = sum(size for rel, size in x64.items() if rel.startswith("pen/") or rel == "main.mpy")
    pen_mpy_arm = sum(size for rel, size in arm.items() if rel.startswith("pen/") or rel == "main.mpy")
    core_arm = round(core * pen_mpy_arm / pen_mpy) if pen_mpy else core
    live_pen = core_arm + data
    record("heap peak during a session (live, virtual pen)", "KB", round(live_session / 1024, 1), None, "report", True,
           note="192 KB heap; the mem op's peak (gc.collect() then gc.mem_alloc()) in a session with 50 Hz "
           "telemetry and requests, fast clock (the real and target clocks add the sim's estimator tables)")
    record("  of which: the pen's firmware code (from .mpy, x64 native)", "KB", round(core / 1024, 1), None,
           "report", True, note="pen/*.mpy imported into a fresh interpreter")
    record("  of which: the virtual pen's board code (sim, plant, rig)", "KB", round(sim_code / 1024, 1), None,
           "report", True, note="not on a pen")
    record("  of which: data (session peak minus all code)", "KB", round(data / 1024, 1), None, "<= 16",
           data <= 16 * 1024, note="includes the sim board's own data")
    record("heap live on the pen (armv6m code estimate + data)", "KB", round(live_pen / 1024, 1), None, "<= 64",
           live_pen <= 64 * 1024, note="code scaled by the armv6m/x64 .mpy size ratio (%d/%d bytes)"
           % (pen_mpy_arm, pen_mpy))
    record("firmware .mpy size (armv6m, as flashed to a pen)", "bytes", sum(arm.values()), None, "report", True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="bench.json")
    parser.add_argument("--seconds", type=int, default=60, help="telemetry windows (60 for the budgets)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the ratio budgets")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pen-bench-"))
    try:
        bench_tick(rounds=9)
        bench_target(work, args.seconds)
        template = work / "target-template" / "flash"
        bench_realtime(work, args.seconds, template)
        bench_sleep_floor()
        bench_roundtrip(work, rounds=2 * args.rounds, per_round=20)
        bench_flash(work, args.rounds)
        live = bench_fast_clock(work, template)
        bench_heap(work, live)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("%-58s %-14s %10s %10s %7s  %-28s %s" % ("budget", "unit", "measured", "baseline", "ratio", "limit",
                                                  "pass"))
    for item in results:
        print("%-58s %-14s %10s %10s %7s  %-28s %s" % (
            item["name"], item["unit"], _fmt(item["measured"]), _fmt(item["baseline"]),
            _fmt(round(item["ratio"], 2)) if item["ratio"] is not None else "-", item["budget"],
            "PASS" if item["pass"] else "FAIL"))
    with open(args.json, "w") as handle:
        json.dump({"budgets": results}, handle, indent=1)
    print("\nwrote %s" % args.json)
    return 0 if all(item["pass"] for item in results) else 1


if __name__ == "__main__":
    sys.exit(main())
