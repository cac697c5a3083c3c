"""Wall time and CPU of the HIL suite: on the local virtual pen, on 1 lab place, on N lab places in
parallel (runs in the suite's venv, .venv; docs/lab.md "Measured").

    .venv/bin/python lab/bench.py [--pens 3] [--clock fast] [--json lab-bench.json] [-- PYTEST ARGS]

Each configuration runs the whole suite once, in a fresh lab (started and stopped here, in a
temporary state folder). CPU is user + system time: of pytest and everything it started (workers,
the lab client, the local virtual pen), and of the lab's processes (coordinator, exporter, ser2net,
the virtual pens and their interpreters), read from /proc just before the lab stops. The machine's
other load shows in the wall times: compare runs made back to back.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB_PYTHON = ROOT / ".venv-lab" / "bin" / "python"
LABCTL = ROOT / "lab" / "labctl.py"
PENCTL = Path(sys.executable).parent / "penctl"
MARKER = "PEN_LAB_STATE"
TICKS = os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lab_cpu_s(state):
    """CPU seconds of the lab's live processes and of the children they have reaped."""
    want = ("%s=%s" % (MARKER, state)).encode()
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if want not in handle.read().split(b"\0"):
                    continue
            with open("/proc/%s/stat" % entry, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])       # utime stime cutime cstime
    return total / TICKS


def junit_counts(path):
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_suite(args, extra):
    report = Path(tempfile.mkdtemp(prefix="hil-bench-"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "hil_tests",
           "--hil-clock", args.clock, "--hil-report", str(report)] + extra + args.pytest_args
    before = children_cpu_s()
    started = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - started
    return wall, children_cpu_s() - before, junit_counts(report / "junit.xml")


def local(args):
    wall, cpu, counts = run_suite(args, [])
    return {"config": "local virtual pen (make hil)", "pens": 1, "wall_s": wall, "cpu_harness_s": cpu,
            "cpu_lab_s": 0.0, **counts}


def lab(args, pens):
    state = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    subprocess.run([str(LAB_PYTHON), str(LABCTL), "start", "--state", str(state), "--pens", str(pens),
                    "--clock", args.clock, "--penctl", str(PENCTL)], check=True, stdout=subprocess.DEVNULL)
    try:
        coordinator = json.loads((state / "lab.json").read_text())["coordinator"]
        lab_before = lab_cpu_s(state)
        extra = ["--lab", coordinator, "--lab-python", str(LAB_PYTHON)]
        if pens > 1:
            extra += ["-n", str(pens), "--dist", "loadfile"]
        wall, cpu, counts = run_suite(args, extra)
        lab_cpu = lab_cpu_s(state) - lab_before
    finally:
        subprocess.run([str(LAB_PYTHON), str(LABCTL), "stop", "--state", str(state)], check=True,
                       stdout=subprocess.DEVNULL)
    return {"config": "lab, %d place%s%s" % (pens, "s" if pens > 1 else "", " in parallel" if pens > 1 else ""),
            "pens": pens, "wall_s": wall, "cpu_harness_s": cpu, "cpu_lab_s": lab_cpu, **counts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pens", type=int, default=3)
    parser.add_argument("--clock", default="fast", choices=("fast", "real", "target"))
    parser.add_argument("--json", default=None)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    if args.pens < 2:
        parser.error("--pens must be at least 2 (1 place is always measured)")
    rows = [local(args), lab(args, 1), lab(args, args.pens)]
    print("%-32s %8s %12s %10s %10s  %s" % ("configuration", "wall s", "CPU harness", "CPU lab", "CPU total",
                                          "tests"))
    for row in rows:
        print("%-32s %8.1f %12.1f %10.1f %10.1f  %d passed, %d failed, %d skipped" % (
            row["config"], row["wall_s"], row["cpu_harness_s"], row["cpu_lab_s"],
            row["cpu_harness_s"] + row["cpu_lab_s"], row["passed"], row["failed"], row["skipped"]))
    one, many = rows[1], rows[2]
    print("speed-up of %d places over 1: %.2fx wall" % (args.pens, one["wall_s"] / many["wall_s"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"clock": args.clock, "cores": os.cpu_count(), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
