"""`penctl` end to end: every command run as a subprocess (the installed entry point)
against a virtual pen on the fast clock (docs/design.md §4 and 5)."""

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pensim.supervisor import VirtualPen

ROOT = Path(__file__).resolve().parents[1]
SCALP = str(ROOT / "profiles" / "scalp.toml")
BAD = str(ROOT / "profiles" / "bad-depth.toml")
ENTRY = Path(sys.executable).with_name("penctl")
PENCTL = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "penctl.cli"]
TM_HEADER = ["t_s", "state", "depth_set_mm", "depth_mm", "hz_set", "hz", "duty", "current_ma", "temp_c",
             "battery_v", "strokes", "faults", "overruns", "tick_max_us"]


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json = None
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if lines and lines[0].startswith("{"):
            assert len(lines) == 1, "--json must print exactly one JSON object: %r" % proc.stdout
            self.json = json.loads(lines[0])

    def __repr__(self):
        return "<penctl rc=%s stdout=%r stderr=%r>" % (self.rc, self.stdout[-2000:], self.stderr[-2000:])


def run(*args, port=None, json_out=True, timeout=90, env=None):
    cmd = list(PENCTL)
    if port is not None:
        cmd += ["--port", port]
    if json_out:
        cmd.append("--json")
    cmd += [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.pop("PENCTL_PORT", None)
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Result(proc)


def ok(result):
    assert result.rc == 0, result
    if result.json is not None:
        assert result.json["ok"] is True, result
    return result.json


def refused(result, code):
    assert result.rc == 1, result
    assert result.json == {"ok": False, "error": result.json["error"]}, result
    assert result.json["error"]["code"] == code, result
    assert result.stderr.startswith("penctl: "), result
    return result.json["error"]


def rig(vpen, request):
    reply = vpen.rig_request(request)
    assert reply.get("ok") is True, reply
    return reply


def wait_state(vpen, want, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        state = ok(run("info", port=vpen.port))["state"]
        if state in want:
            return state
        assert time.monotonic() < deadline, "state %s, wanted %s" % (state, want)
        time.sleep(0.1)


def full_depth_range(pen):
    """A factory-fresh pen allows 0.5 mm (S16): the clinician opens the whole range (2.5 mm) with a
    key of its own, through penctl, so the example profiles (up to 1.5 mm) can be used."""
    folder = tempfile.mkdtemp(prefix="penctl-key-")
    key_file = os.path.join(folder, "pen.penkey")
    ok(run("key", "new", "--key-file", key_file))
    ok(run("key", "provision", "--key-file", key_file, port=pen.port))
    ok(run("ceiling", "set", "2.5", "--key-file", key_file, port=pen.port))


@pytest.fixture(scope="module")
def vpen():
    with VirtualPen(clock="fast") as pen:
        wait_state(pen, ("LOCKED", "READY"))
        full_depth_range(pen)
        yield pen


@pytest.fixture
def fresh_pen():
    with VirtualPen(clock="fast") as pen:
        wait_state(pen, ("LOCKED", "READY"))
        full_depth_range(pen)
        yield pen


# ---- info, usage, connection errors ----


def test_info_json_keys(vpen):
    info = ok(run("info", port=vpen.port))
    for key in ("firmware", "protocol", "board", "serial", "state", "depth_mm", "stroke_hz", "profile", "limits"):
        assert key in info, key
    assert info["limits"]["depth_min_mm"] == 0.25 and info["limits"]["depth_max_mm"] == 2.5
    assert info["limits"]["depth_step_mm"] == 0.05
    assert (info["limits"]["hz_min"], info["limits"]["hz_max"]) == (50, 150)
    assert info["protocol"] == 2 and info["board"] == "sim" and info["serial"] == vpen.serial
    assert info["state"] in ("LOCKED", "READY")
    assert isinstance(info["depth_mm"], float) and -0.05 <= info["depth_mm"] <= 3.0   # sensor noise


def test_info_human(vpen):
    result = run("info", port=vpen.port, json_out=False)
    assert result.rc == 0, result
    assert "state" in result.stdout and "0.25-2.5 mm" in result.stdout and result.stderr == ""


def test_port_from_environment(vpen):
    assert ok(run("info", env={"PENCTL_PORT": vpen.port}))["serial"] == vpen.serial


def test_help_and_usage_errors():
    result = run("--help", json_out=False)
    assert result.rc == 0 and "exit codes" in result.stdout and "PENCTL_PORT" in result.stdout
    result = run("session", "run", port="/dev/null")                  # --seconds missing
    assert result.rc == 2 and result.json["ok"] is False and result.json["error"]["code"] == "USAGE"
    assert "--seconds" in result.stderr
    assert run("frobnicate", json_out=False).rc == 2
    assert run("telemetry", "--seconds", "-1", json_out=False).rc == 2


def test_wrong_port_exit_3(tmp_path):
    result = run("info", port=str(tmp_path / "no-pen"))
    assert result.rc == 3, result
    assert result.json["error"]["code"] == "LINK"
    assert "no-pen" in result.stderr and "--port" in result.stderr


def test_silent_port_times_out_exit_3():
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        started = time.monotonic()
        result = run("--timeout", "0.5", "info", port=port)
        assert time.monotonic() - started < 10
        assert result.rc == 3, result
        assert "no response from the pen on %s within 0.5 s" % port in result.stderr
    finally:
        os.close(master)
        os.close(slave)


def test_pen_at_repl_exit_3():
    with VirtualPen(clock="fast", blank=True) as pen:
        result = run("--timeout", "1", "info", port=pen.port)
        assert result.rc == 3, result
        assert "REPL" in result.stderr and "penctl flash" in result.stderr


# ---- profiles ----


def test_profile_push_list_use_rm(vpen):
    pushed = ok(run("profile", "push", SCALP, port=vpen.port))
    assert pushed["pushed"] == ["scalp-frontal", "scalp-crown", "scalp-vertex"]
    listing = ok(run("profile", "list", port=vpen.port))
    by_name = {p["name"]: p for p in listing["profiles"]}
    assert by_name["scalp-frontal"] == {"name": "scalp-frontal", "depth_mm": 0.5, "stroke_hz": 100,
                                        "max_session_s": 600, "min_interval_days": 0}
    assert by_name["scalp-crown"]["depth_mm"] == 1.0 and by_name["scalp-vertex"]["depth_mm"] == 1.5
    assert ok(run("profile", "use", "scalp-crown", port=vpen.port))["active"] == "scalp-crown"
    assert ok(run("info", port=vpen.port))["profile"] == "scalp-crown"
    human = run("profile", "list", port=vpen.port, json_out=False)
    assert human.rc == 0 and "* scalp-crown" in human.stdout.replace("*  ", "* ")
    assert ok(run("profile", "rm", "scalp-vertex", port=vpen.port))["removed"] == "scalp-vertex"
    names = [p["name"] for p in ok(run("profile", "list", port=vpen.port))["profiles"]]
    assert "scalp-vertex" not in names and "scalp-crown" in names
    error = refused(run("profile", "use", "no-such", port=vpen.port), "UNKNOWN_PROFILE")
    assert "no-such" in error["message"]


def test_bad_profile_file_exit_2_and_nothing_changes(vpen, tmp_path):
    before = ok(run("profile", "list", port=vpen.port))
    result = run("profile", "push", BAD, port=vpen.port)
    assert result.rc == 2, result
    assert result.json["ok"] is False
    assert "profile 2 'crown': depth_mm 3.0 outside 0.25-2.5 mm" in result.stderr
    assert "bad-depth.toml" in result.json["error"]["message"]
    assert ok(run("profile", "list", port=vpen.port)) == before
    # Nothing is sent at all: a bad file fails the same way with no pen on the port.
    assert run("profile", "push", BAD, port=str(tmp_path / "no-pen")).rc == 2
    assert run("profile", "push", str(tmp_path / "missing.toml"), port=vpen.port).rc == 2
    assert run("profile", "use", "Bad Name!", port=str(tmp_path / "no-pen")).rc == 2


# ---- the treatment cycle: lockout, cartridges, sessions, telemetry files, log ----


def test_lockout_cartridges_and_session_run(fresh_pen, tmp_path):
    port = fresh_pen.port
    ok(run("profile", "push", SCALP, port=port))
    ok(run("profile", "use", "scalp-frontal", port=port))
    rig(fresh_pen, {"op": "cartridge", "id": "C0FFEE0100000001"})
    assert ok(run("info", port=port))["state"] == "LOCKED"
    error = refused(run("session", "start", port=port), "LOCKED")
    assert "steril" in error["message"]

    rig(fresh_pen, {"op": "cartridge", "id": None})
    steril = ok(run("sterilise", port=port))
    assert steril["state"] == "READY" and steril["sterilise"]["result"] == "done"
    refused(run("session", "start", port=port), "NO_CARTRIDGE")

    rig(fresh_pen, {"op": "cartridge", "id": "C0FFEE0100000001"})
    csv_path, png_path = tmp_path / "run.csv", tmp_path / "run.png"
    started = time.monotonic()
    session = ok(run("session", "run", "--seconds", "2", "--csv", csv_path, "--plot", png_path, port=port))
    assert time.monotonic() - started < 30
    assert session["profile"] == "scalp-frontal" and session["cartridge"] == "C0FFEE0100000001"
    # the pen itself ended it at the 2 s asked (session_start's run_ms; S8 precision, 10 ms)
    assert session["end_reason"] == "TIME_LIMIT" and session["ended_by"] == "the time asked"
    assert session["complete"] is True and 2.0 - 0.01 <= session["duration_s"] <= 2.0 + 0.01
    assert session["samples"] >= 90 and session["sample_gaps"] == 0
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == TM_HEADER
    assert len(rows) - 1 == session["samples"]
    data = [dict(zip(TM_HEADER, r, strict=True)) for r in rows[1:]]
    times = [float(r["t_s"]) for r in data]
    assert times == sorted(times) and times[-1] - times[0] >= 2.0
    # RUNNING at 0.5 mm / 100 Hz (after the stop the set points drop to 0 while the needles retract)
    running = [r for r in data if r["state"] == "RUNNING" and r["depth_set_mm"] == "0.5"]
    assert running and {r["hz_set"] for r in running} == {"100.0"}
    settled = [r for r in running if float(r["t_s"]) > float(running[0]["t_s"]) + 0.5]
    assert len(settled) >= 50
    assert all(abs(float(r["hz"]) - 100) <= 2 for r in settled)              # S3: within 2 % once settled
    assert all(abs(float(r["depth_mm"]) - 0.5) <= 0.05 for r in settled)     # S2: depth within 0.05 mm
    assert int(data[-1]["strokes"]) >= 150
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10000
    assert ok(run("info", port=port))["state"] == "LOCKED"            # S5: one session per cycle

    ok(run("sterilise", port=port))
    error = refused(run("session", "start", port=port), "CARTRIDGE_USED")
    assert "C0FFEE0100000001" in error["message"]

    rig(fresh_pen, {"op": "cartridge", "id": "C0FFEE0200000002"})
    started_session = ok(run("session", "start", "--profile", "scalp-crown", port=port))
    assert started_session["profile"] == "scalp-crown"
    assert ok(run("info", port=port))["state"] == "RUNNING"
    refused(run("profile", "rm", "scalp-crown", port=port), "BUSY")
    ok(run("session", "stop", port=port))
    wait_state(fresh_pen, ("LOCKED",))
    refused(run("session", "stop", port=port), "NOT_RUNNING")

    entries = ok(run("log", port=port))["entries"]
    sessions = [e for e in entries if e["kind"] == "session"]
    assert [s["cartridge"] for s in sessions] == ["C0FFEE0100000001", "C0FFEE0200000002"]
    assert sessions[0]["depth_mm"] == 0.5 and sessions[0]["end"] == "TIME_LIMIT" and sessions[0]["limit_s"] == 2.0
    assert sessions[1]["profile"] == "scalp-crown" and sessions[1]["depth_mm"] == 1.0
    assert [e["result"] for e in entries if e["kind"] == "sterilise"] == ["done", "done"]
    human = run("log", port=port, json_out=False)
    assert human.rc == 0 and "C0FFEE0200000002" in human.stdout


def test_sterilise_no_wait_and_lid_abort(fresh_pen):
    port = fresh_pen.port
    status = ok(run("sterilise", "--no-wait", port=port))
    assert status["state"] == "STERILISING"
    wait_state(fresh_pen, ("READY",), timeout=20)
    rig(fresh_pen, {"op": "inject", "fault": "lid_open"})
    refused(run("sterilise", port=port), "LID_OPEN")


def test_telemetry(vpen, tmp_path):
    csv_path = tmp_path / "tm.csv"
    result = ok(run("telemetry", "--seconds", "1", "--csv", csv_path, "--plot", tmp_path / "tm.png",
                    port=vpen.port))
    assert 45 <= result["samples"] <= 55 and result["sample_gaps"] == 0
    assert len(result["rows"]) == result["samples"] and list(result["rows"][0]) == TM_HEADER
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == TM_HEADER and len(rows) == result["samples"] + 1
    assert (tmp_path / "tm.png").read_bytes()[:4] == b"\x89PNG"
    human = run("telemetry", "--seconds", "0.5", port=vpen.port, json_out=False)
    assert human.rc == 0 and "samples" in human.stdout and "T_S" in human.stdout
    # nothing keeps streaming afterwards: a plain request still works
    ok(run("info", port=vpen.port))


def test_log(vpen):
    result = ok(run("log", port=vpen.port))
    assert isinstance(result["entries"], list)


def test_fault_clear(fresh_pen):
    port = fresh_pen.port
    refused(run("fault", "clear", "--reason", "nothing to clear", port=port), "NO_FAULT")
    assert run("fault", "clear", "--reason", "   ", port=port).rc == 2
    rig(fresh_pen, {"op": "inject", "fault": "overtemp"})
    wait_state(fresh_pen, ("FAULT",))
    info = ok(run("info", port=port))
    assert info["fault"] == "OVERTEMP"
    refused(run("sterilise", port=port), "FAULT")
    rig(fresh_pen, {"op": "clear_injections"})
    cleared = ok(run("fault", "clear", "--reason", "handpiece cooled down, checked", port=port))
    assert cleared["cleared"] == "OVERTEMP" and cleared["state"] != "FAULT"
    assert wait_state(fresh_pen, ("LOCKED", "READY")) != "FAULT"
    entries = ok(run("log", port=port))["entries"]
    assert [e["kind"] for e in entries][-2:] == ["fault", "fault_clear"]
    assert entries[-1]["reason"] == "handpiece cooled down, checked"


def test_flash_usage_error_sends_nothing(tmp_path):
    result = run("flash", "--source", tmp_path / "nope", port=str(tmp_path / "no-pen"))
    assert result.rc == 2, result


def test_sim_command(tmp_path):
    link = tmp_path / "pen-link"
    proc = subprocess.Popen(PENCTL + ["--json", "sim", "--clock", "fast", "--link", str(link)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["port"].startswith("/dev/") and first["pid"] == proc.pid
        info = ok(run("info", port=str(link)))
        assert info["board"] == "sim"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.stdout.close()
        proc.stderr.close()
    assert not link.exists()


def test_flash_blank_pen_then_info():
    with VirtualPen(clock="fast", blank=True) as pen:
        report = ok(run("flash", port=pen.port, timeout=120))["report"]
        assert report["changed"] is True and report["protocol"] == 2
        again = run("flash", port=pen.port, json_out=False, timeout=120)
        assert again.rc == 0 and "up to date" in again.stdout, again
        assert ok(run("info", port=pen.port))["firmware"]


def wait_motor(vpen, on=True, timeout=20):
    """Wait on the rig (the port is busy while a `session run` holds it) for the stroke motor."""
    deadline = time.monotonic() + timeout
    while rig(vpen, {"op": "measure"})["motor_on"] is not on:
        assert time.monotonic() < deadline, "motor never %s" % ("on" if on else "off")
        time.sleep(0.02)


def _start(port, *args):
    return subprocess.Popen(PENCTL + ["--port", port, "--json"] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_session_run_ends_time_limit_fault_and_interrupt(fresh_pen, tmp_path):
    port = fresh_pen.port
    profiles = tmp_path / "p.toml"
    profiles.write_text('[[profile]]\nname = "short"\ndepth_mm = 0.25\nstroke_hz = 150\nmax_session_s = 10\n'
                        '[[profile]]\nname = "long"\ndepth_mm = 2.5\nstroke_hz = 50\nmax_session_s = 1800\n')
    ok(run("profile", "push", profiles, port=port))

    # S8: the pen ends the session at max_session_s, before --seconds; that is a normal end.
    ok(run("sterilise", port=port))
    rig(fresh_pen, {"op": "cartridge", "id": "A100000000000001"})
    result = ok(run("session", "run", "--seconds", "60", "--profile", "short", port=port))
    assert result["end_reason"] == "TIME_LIMIT" and abs(result["duration_s"] - 10) < 0.1
    assert result["rows"][-1]["t_s"] - result["rows"][0]["t_s"] < 12

    # A fault ends it early: exit 1, the recording is still written.
    ok(run("sterilise", port=port))
    rig(fresh_pen, {"op": "cartridge", "id": "A200000000000002"})
    csv_path = tmp_path / "fault.csv"
    proc = _start(port, "session", "run", "--seconds", "1800", "--profile", "long", "--csv", csv_path)
    wait_motor(fresh_pen)
    busy = run("info", port=port)
    assert busy.rc == 3 and "in use by another program" in busy.stderr, busy
    rig(fresh_pen, {"op": "inject", "fault": "overcurrent"})
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, (stdout, stderr)
    error = json.loads(stdout)["error"]
    assert error["code"] == "FAULT" and "OVERCURRENT" in error["message"] and "OVERCURRENT" in stderr
    assert csv_path.read_text().startswith(",".join(TM_HEADER))
    rig(fresh_pen, {"op": "clear_injections"})
    ok(run("fault", "clear", "--reason", "test rig short removed", port=port))
    wait_state(fresh_pen, ("LOCKED",))

    # Ctrl-C (SIGINT) stops the session before penctl exits.
    ok(run("sterilise", port=port))
    rig(fresh_pen, {"op": "cartridge", "id": "A300000000000003"})
    interrupted_csv = tmp_path / "interrupted.csv"
    proc = _start(port, "session", "run", "--seconds", "1800", "--profile", "long", "--csv", interrupted_csv)
    wait_motor(fresh_pen)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, (stdout, stderr)
    assert json.loads(stdout)["error"]["code"] == "INTERRUPTED"
    # what was recorded before the interrupt is not lost
    assert "written to %s" % interrupted_csv in stderr, stderr
    with open(interrupted_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == TM_HEADER and any(row[1] == "RUNNING" for row in rows[1:])
    assert ok(run("info", port=port))["state"] == "LOCKED"
    sessions = [e for e in ok(run("log", port=port))["entries"] if e["kind"] == "session"]
    assert [(s["cartridge"], s["end"]) for s in sessions] == [("A100000000000001", "TIME_LIMIT"),
                                                              ("A200000000000002", "FAULT"),
                                                              ("A300000000000003", "STOPPED")]


class _FakePort:
    def __init__(self, device, vid=0x2E8A, pid=0x0005, serial_number=None):
        self.device, self.vid, self.pid = device, vid, pid
        self.serial_number = serial_number
        self.description = "Board in FS mode"


@pytest.mark.parametrize("ports,rc,words", [
    ([], 3, ["no pen found", "2e8a:0005", "--port", "PENCTL_PORT"]),
    ([_FakePort("/dev/ttyACM0", serial_number="E6614"), _FakePort("/dev/ttyACM1", serial_number="E6615"),
      _FakePort("/dev/ttyUSB0", vid=0x0403, pid=0x6001)], 2,
     ["2 pens are attached", "/dev/ttyACM0, serial E6614", "/dev/ttyACM1", "--port", "PENCTL_PORT"]),
])
def test_auto_detect_none_or_several(monkeypatch, capsys, ports, rc, words):
    from serial.tools import list_ports

    from penctl import cli

    monkeypatch.delenv("PENCTL_PORT", raising=False)
    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    assert cli.main(["--json", "info"]) == rc
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    for word in words:
        assert word in captured.err
    assert "/dev/ttyUSB0" not in captured.err


def test_auto_detect_single_pen(monkeypatch, capsys, vpen):
    from serial.tools import list_ports

    from penctl import cli

    monkeypatch.delenv("PENCTL_PORT", raising=False)
    monkeypatch.setattr(list_ports, "comports",
                        lambda: [_FakePort(vpen.port), _FakePort("/dev/ttyUSB0", vid=0x0403, pid=0x6001)])
    assert cli.main(["--json", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["serial"] == vpen.serial


def test_flash_refused_while_a_session_runs(fresh_pen):
    # Flashing breaks into the firmware (the motor stops): never behind the user's back.
    port = fresh_pen.port
    ok(run("profile", "push", SCALP, port=port))
    ok(run("profile", "use", "scalp-crown", port=port))
    ok(run("sterilise", port=port))
    rig(fresh_pen, {"op": "cartridge", "id": "F1A5F1A500000000"})
    ok(run("session", "start", port=port))
    wait_motor(fresh_pen, True)
    error = refused(run("flash", port=port, timeout=120), "BUSY")
    assert "session stop" in error["message"]
    assert ok(run("info", port=port))["state"] == "RUNNING"      # nothing happened to it
    ok(run("session", "stop", port=port))
    wait_state(fresh_pen, ("LOCKED",))
    report = ok(run("flash", port=port, timeout=120))["report"]  # idle: flashing goes ahead
    assert report["protocol"] == 2
