"""`make lab` / `make lab-stop` and friends (lab/labctl.py): start, stop and drive the local labgrid lab.

    labctl.py start --state DIR --pens N --clock fast|real|target --penctl PATH
    labctl.py stop --state DIR
    labctl.py status --state DIR [--json]
    labctl.py replug PLACE --state DIR [--down S] [--wipe]     # the pen re-enumerates on a new port
    labctl.py unplug PLACE --state DIR / labctl.py plug PLACE --state DIR
    labctl.py processes --state DIR                            # the lab's processes still running

`start` runs lab/supervisor.py in the background (its own process group, output in DIR) and returns
once every place is online; `stop` ends exactly the lab's processes: each one carries
PEN_LAB_STATE=DIR in its environment, including the pens' interpreters, which run in sessions of
their own. Needs only the standard library; the supervisor runs with this same interpreter, which
must be the lab's venv (.venv-lab, with labgrid).

Exit status: 0 ok, 1 the lab failed or refused (the message says why), 2 usage.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "PEN_LAB_STATE"
CLOCKS = ("fast", "real", "target")
PENS_MAX = 16
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0
SOCKET_PATH_MAX = 100          # AF_UNIX paths: 107 bytes on Linux, the pens' rig sockets sit deeper
CONTROL_TIMEOUT_S = 120.0


class LabError(Exception):
    pass


def lab_processes(state):
    """[(pid, command line)] of every running process of the lab in `state` (by its marker)."""
    want = ("%s=%s" % (MARKER, state)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if want not in handle.read().split(b"\0"):
                    continue
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open("/proc/%s/stat" % entry, "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue                 # a zombie has ended; its parent has not reaped it yet
        except OSError:
            continue                         # gone meanwhile, or not ours to read
        found.append((int(entry), cmdline))
    return found


def read_summary(state):
    try:
        return json.loads((state / "lab.json").read_text())
    except (OSError, ValueError):
        return None


def running_supervisor(state):
    """The supervisor's pid when the lab in `state` runs, else None."""
    summary = read_summary(state)
    if not summary:
        return None
    pid = summary.get("pid")
    return pid if any(p == pid for p, _ in lab_processes(state)) else None


def control(state, request, timeout=CONTROL_TIMEOUT_S):
    """One request to the running supervisor's control socket; its reply (dict)."""
    if running_supervisor(state) is None:
        raise LabError("no lab is running in %s: start one with `make lab`" % state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(state / "control.sock"))
        sock.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise LabError("the lab supervisor closed the control socket without answering")
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise LabError("the lab refused %s: %s" % (request.get("op"), reply.get("error")))
    return reply


def start(state, pens, clock, penctl):
    if not 1 <= pens <= PENS_MAX:
        raise LabError("--pens must be 1-%d, not %d" % (PENS_MAX, pens))
    if clock not in CLOCKS:
        raise LabError("--clock must be one of %s" % ", ".join(CLOCKS))
    if not os.access(penctl, os.X_OK):
        raise LabError("penctl not found at %s (make setup builds it)" % penctl)
    rig = state / "pens" / ("pen-%d" % pens) / "rig.sock"
    if len(str(rig)) > SOCKET_PATH_MAX:
        raise LabError("state folder path too long for the pens' rig sockets (%s): use a shorter one" % rig)
    try:
        import labgrid  # noqa: F401 - only checks that this is the lab's venv
    except ImportError:
        raise LabError("labgrid is not installed for %s: run labctl.py with .venv-lab/bin/python "
                       "(make lab-setup)" % sys.executable) from None
    pid = running_supervisor(state)
    if pid is not None:
        summary = read_summary(state)
        raise LabError("a lab is already running in %s (supervisor pid %d, coordinator %s): "
                       "`make lab-stop` first" % (state, pid, summary.get("coordinator")))
    leftovers = lab_processes(state)
    if leftovers:
        raise LabError("processes of an earlier lab in %s still run (%s): `make lab-stop` ends them"
                       % (state, ", ".join(str(p) for p, _ in leftovers)))
    state.mkdir(parents=True, exist_ok=True)
    (state / "lab.json").unlink(missing_ok=True)
    (state / "control.sock").unlink(missing_ok=True)
    env = dict(os.environ)
    env[MARKER] = str(state)
    with open(state / "supervisor.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "supervisor.py"), "--state", str(state), "--pens", str(pens),
             "--clock", clock, "--penctl", str(penctl)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        summary = read_summary(state) or {}
        if summary.get("state") == "ready":
            return summary
        if proc.poll() is not None or summary.get("state") in ("failed", "stopped") \
                or time.monotonic() > deadline:
            reason = summary.get("error") or ("not ready within %.0f s" % READY_TIMEOUT_S
                                              if proc.poll() is None else "exited with %s" % proc.returncode)
            stop(state)
            raise LabError("the lab did not start: %s\n%s" % (reason, log_tails(state)))
        time.sleep(0.1)


def log_tails(state, lines=12):
    out = []
    for name in ("supervisor.out", "supervisor.log", "coordinator.log", "exporter.log"):
        path = state / name
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append("--- %s (last %d lines)\n%s" % (path, len(tail), "\n".join(tail)))
    return "\n".join(out)


def stop(state):
    """End the lab's processes: SIGTERM to the supervisor (it stops its children in order), then
    SIGKILL to whatever of the lab still runs. Returns the pids that had to be killed."""
    pid = running_supervisor(state)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while running_supervisor(state) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    killed = []
    deadline = time.monotonic() + 5
    while True:
        leftovers = lab_processes(state)
        if not leftovers:
            return killed
        if time.monotonic() > deadline:
            raise LabError("lab processes still running after SIGKILL: %s" % leftovers)
        for leftover, _ in leftovers:
            try:
                os.kill(leftover, signal.SIGKILL)
                if leftover not in killed:
                    killed.append(leftover)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def print_status(reply):
    print("lab: coordinator %s, %d pens, clock %s (state %s)" % (
        reply["coordinator"], reply["pens"], reply["clock"], reply["state"]))
    for name, place in sorted(reply["places"].items()):
        pen = place["pen"]
        print("  %-6s %-7s %-28s pen %s %s (generation %s)%s" % (
            name, "online" if place["online"] else "OFFLINE",
            " ".join("%s=%s" % kv for kv in sorted(place["tags"].items())),
            pen.get("serial"), "on %s" % pen["port"] if pen.get("online") else "unplugged", pen.get("generation"),
            ", acquired by %s" % place["acquired"] if place["acquired"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status", "replug", "unplug", "plug", "processes"):
        p = sub.add_parser(name)
        p.add_argument("--state", required=True, type=Path, help="the lab's state folder (e.g. .lab)")
        if name in ("replug", "unplug", "plug"):
            p.add_argument("place")
        if name == "start":
            p.add_argument("--pens", type=int, required=True)
            p.add_argument("--clock", required=True, choices=CLOCKS)
            p.add_argument("--penctl", required=True, type=Path)
        if name == "replug":
            p.add_argument("--down", type=float, default=1.0, help="seconds the pen stays unplugged")
            p.add_argument("--wipe", action="store_true", help="come back as a blank pen")
        if name == "status":
            p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    try:
        if args.command == "start":
            summary = start(state, args.pens, args.clock, args.penctl.resolve())
            print("lab ready: coordinator %s, places %s (tags board=sim clock=%s online=yes); "
                  "state in %s; `make lab-stop` ends it" % (summary["coordinator"], ", ".join(summary["places"]),
                                                            summary["clock"], state))
        elif args.command == "stop":
            had = running_supervisor(state)
            killed = stop(state)
            if had is None and not killed:
                print("no lab running in %s" % state)
            else:
                print("lab stopped%s; no lab process left" % (
                    " (killed %d that did not stop: %s)" % (len(killed), killed) if killed else ""))
        elif args.command == "status":
            reply = control(state, {"op": "status"})
            if args.json:
                print(json.dumps(reply, indent=1, sort_keys=True))
            else:
                print_status(reply)
        elif args.command == "replug":
            reply = control(state, {"op": "replug", "place": args.place, "down_s": args.down, "wipe": args.wipe})
            print("%s re-enumerated: %s -> %s (generation %d)" % (args.place, reply["old_port"], reply["port"],
                                                                 reply["generation"]))
        elif args.command in ("unplug", "plug"):
            control(state, {"op": args.command, "place": args.place})
            print("%s %sged" % (args.place, args.command))
        elif args.command == "processes":
            for pid, cmdline in lab_processes(state):
                print(pid, cmdline)
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
