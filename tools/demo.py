"""`make demo`: the whole product on a virtual pen, through the real CLI.

A blank virtual pen -> `penctl flash` -> push the scalp profiles -> a sterilisation
cycle -> a cartridge inserted through the rig socket -> a 10 s session with
telemetry to demo_out/ (CSV + PNG) -> a summary table. Every process it starts is
stopped at the end, also on failure or Ctrl-C.

The virtual pen runs on the target clock: the firmware's work costs what it would on the
pen's CPU (docs/design.md §5.2), so the tick figures are the pen's. DEMO_CLOCK=real runs
it on the wall clock (the UV cycle then takes its full 60 s), DEMO_CLOCK=fast on simulated
time that costs nothing.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PENCTL = os.path.join(BIN, "penctl")
OUT = os.path.join(ROOT, "demo_out")
PROFILE_FILE = os.path.join(ROOT, "profiles", "scalp.toml")
PROFILE = "scalp-crown"
SESSION_S = 10
CARTRIDGE = "DE30" + os.urandom(6).hex().upper()


def step(title):
    print("\n== %s" % title, flush=True)


def penctl(port, *args, capture=False):
    cmd = [PENCTL, "--port", port, *args]
    print("$ penctl " + " ".join(args), flush=True)
    if capture:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit("demo: `penctl %s` failed with exit %d" % (" ".join(args), proc.returncode))
        return proc.stdout
    proc = subprocess.run(cmd)
    if proc.returncode:
        raise SystemExit("demo: `penctl %s` failed with exit %d" % (" ".join(args), proc.returncode))
    return None


def rig(sock_path, **body):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        sock.sendall(json.dumps(body).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise SystemExit("demo: rig refused %s: %s" % (body, reply))
    return reply


def summary(csv_path):
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    driven = [r for r in rows if float(r["duty"]) > 0]
    if not driven:
        raise SystemExit("demo: the motor never ran (see %s)" % csv_path)
    hz_set = float(driven[0]["hz_set"])
    depth_set = float(driven[0]["depth_set_mm"])
    t0 = float(driven[0]["t_s"])
    tail = [r for r in driven if float(r["t_s"]) >= float(driven[-1]["t_s"]) - 1.0]
    settle = None
    for index, row in enumerate(driven):
        if all(abs(float(r["hz"]) - hz_set) <= 0.02 * hz_set for r in driven[index:]):
            settle = (float(row["t_s"]) - t0) * 1000
            break
    table = [
        ("telemetry samples", "%d" % len(rows), ""),
        ("session length (motor on)", "%.2f" % (float(driven[-1]["t_s"]) - t0), "s"),
        ("depth set / measured (mean)", "%.2f / %.3f" % (depth_set, sum(float(r["depth_mm"]) for r in driven)
                                                        / len(driven)), "mm"),
        ("depth worst error", "%.3f" % max(abs(float(r["depth_mm"]) - depth_set) for r in driven), "mm"),
        ("frequency set / last 1 s mean", "%.0f / %.2f" % (hz_set, sum(float(r["hz"]) for r in tail) / len(tail)),
         "Hz"),
        ("frequency settle (±2 %)", "%.0f" % settle if settle is not None else "n/a", "ms"),
        ("peak overshoot", "%.1f" % (100 * (max(float(r["hz"]) for r in driven) / hz_set - 1)), "%"),
        ("max current", "%.0f" % max(float(r["current_ma"]) for r in driven), "mA"),
        ("max handpiece temperature", "%.2f" % max(float(r["temp_c"]) for r in driven), "°C"),
        ("min battery", "%.3f" % min(float(r["battery_v"]) for r in driven), "V"),
        ("strokes", driven[-1]["strokes"], ""),
        ("faults", rows[-1]["faults"], ""),
        ("tick overruns", rows[-1]["overruns"], ""),
        ("worst tick (pen's CPU time)", rows[-1]["tick_max_us"], "µs"),
    ]
    width = max(len(name) for name, _, _ in table)
    print()
    for name, value, unit in table:
        print("  %-*s  %12s %s" % (width, name, value, unit))


def main():
    clock = os.environ.get("DEMO_CLOCK", "target")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="pen-demo-")
    sock = os.path.join(work, "rig.sock")
    step("1. a blank virtual pen (no firmware, REPL only), %s clock" % clock)
    sim = subprocess.Popen([PENCTL, "--json", "sim", "--blank", "--clock", clock, "--state",
                            os.path.join(work, "flash"), "--control", sock],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = sim.stdout.readline()
        if not first:
            raise SystemExit("demo: `penctl sim` did not start")
        port = json.loads(first)["port"]
        print("virtual pen on %s (supervisor pid %d)" % (port, sim.pid))

        step("2. deploy the firmware")
        penctl(port, "flash")
        penctl(port, "info")

        step("2b. the clinician key: a fresh pen allows 0.5 mm; the clinician raises the ceiling")
        key_file = os.path.join(work, "clinician.penkey")     # a real clinic keeps it (docs/clinical.md)
        penctl(port, "key", "new", "--key-file", key_file)
        penctl(port, "key", "provision", "--key-file", key_file)
        penctl(port, "ceiling", "set", "1.5", "--key-file", key_file)

        step("3. profiles with published scalp parameters (0.5-1.5 mm)")
        penctl(port, "profile", "push", PROFILE_FILE)
        penctl(port, "profile", "use", PROFILE)
        penctl(port, "profile", "list")

        step("4. a fresh pen is locked: a UV sterilisation cycle in the dock")
        penctl(port, "sterilise")

        step("5. a fresh cartridge, inserted through the rig")
        print("rig: cartridge %s -> %s" % (CARTRIDGE, rig(sock, op="cartridge", id=CARTRIDGE)))

        step("6. a %d s session with telemetry" % SESSION_S)
        csv_path = os.path.join(OUT, "session.csv")
        png_path = os.path.join(OUT, "session.png")
        penctl(port, "session", "run", "--seconds", str(SESSION_S), "--csv", csv_path, "--plot", png_path)
        penctl(port, "log")
        penctl(port, "info")

        step("7. summary (from %s; plot in %s)" % (os.path.relpath(csv_path, ROOT), os.path.relpath(png_path, ROOT)))
        summary(csv_path)
    finally:
        step("8. stopping the virtual pen")
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(sim.pid, signal.SIGKILL)
                sim.wait()
        try:
            os.killpg(sim.pid, 0)
            leftover = True
        except ProcessLookupError:
            leftover = False
        if leftover:
            os.killpg(sim.pid, signal.SIGKILL)
        print("virtual pen stopped (exit %s); no process left behind" % sim.returncode)


if __name__ == "__main__":
    main()
