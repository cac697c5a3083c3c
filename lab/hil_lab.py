"""`make hil-lab N=3`: the HIL suite on N lab places in parallel (runs in the suite's venv, .venv).

Uses the lab `make lab` started in --state when it runs (and leaves it running); otherwise starts a
lab of N pens there for this run and stops it afterwards. Runs pytest with one pytest-xdist worker
per place (each worker reserves, acquires and releases its own place, hil_tests/conftest.py), then
checks that this run left no place acquired. Exit status: pytest's, or 1 when the lab could not be
started or a place of this run is still held.

    hil_lab.py --lab-python .venv-lab/bin/python --state .lab --pens 3 --clock fast \
               --penctl .venv/bin/penctl --report hil_report [-- PYTEST ARGS]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABCTL = ROOT / "lab" / "labctl.py"
CLIENT = ROOT / "lab" / "client.py"
INTERRUPT_WAIT_S = 60.0


def lab_summary(state):
    try:
        summary = json.loads((state / "lab.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("state") == "ready" else None


def held_by_run(lab_python, coordinator, run):
    """Places still acquired for this run (by the holder comment the harness writes)."""
    out = subprocess.run([lab_python, str(CLIENT), "-x", coordinator, "places"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise RuntimeError("cannot list the lab's places: %s" % (out.stdout + out.stderr).strip()[-500:])
    places = json.loads(out.stdout)["places"]
    return [p["name"] for p in places if p["acquired"] and (" run=%s " % run) in " %s " % p["comment"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-python", required=True, type=os.path.abspath)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--pens", required=True, type=int)
    parser.add_argument("--clock", required=True)
    parser.add_argument("--penctl", required=True, type=os.path.abspath)
    parser.add_argument("--report", default="hil_report")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if args.pens < 1:
        parser.error("N must be at least 1")

    summary = lab_summary(state)
    started_here = summary is None
    if started_here:
        rc = subprocess.call([args.lab_python, str(LABCTL), "start", "--state", str(state), "--pens",
                              str(args.pens), "--clock", args.clock, "--penctl", str(args.penctl)])
        if rc != 0:
            return 1
        summary = lab_summary(state)
    elif summary["pens"] < args.pens or summary["clock"] != args.clock:
        print("hil-lab: the running lab in %s has %d pen(s) with clock %s; this run wants %d with clock %s "
              "(`make lab-stop`, or N=/CLOCK= to match)" % (state, summary["pens"], summary["clock"], args.pens,
                                                         args.clock), file=sys.stderr)
        return 1
    run = uuid.uuid4().hex[:12]
    env = dict(os.environ, PEN_HIL_RUN=run, PEN_LAB_PYTHON=args.lab_python)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "hil_tests", "-n", str(args.pens),
           "--dist", "loadfile", "--lab", summary["coordinator"], "--hil-clock", args.clock,
           "--hil-report", args.report] + args.pytest_args
    print("hil-lab: run %s on %d place(s) of %s: %s" % (run, args.pens, summary["coordinator"], " ".join(cmd)),
          flush=True)
    started = time.monotonic()
    rc = 1
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached pytest too: its workers release their places; wait for that.
            print("hil-lab: interrupted: waiting for pytest to release its places", file=sys.stderr, flush=True)
            try:
                rc = proc.wait(INTERRUPT_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                rc = proc.wait()
    finally:
        print("hil-lab: pytest finished in %.1f s (exit %d)" % (time.monotonic() - started, rc), flush=True)
        try:
            held = held_by_run(args.lab_python, summary["coordinator"], run)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print("hil-lab: %s" % exc, file=sys.stderr)
            held = ["(unknown)"]
        if held:
            print("hil-lab: place(s) still acquired by this run: %s" % ", ".join(held), file=sys.stderr)
            rc = rc or 1
        else:
            print("hil-lab: no place acquired by this run", flush=True)
        if started_here:
            if subprocess.call([args.lab_python, str(LABCTL), "stop", "--state", str(state)]) != 0:
                rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
