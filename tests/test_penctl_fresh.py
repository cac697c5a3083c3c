"""No command acts on frames older than its own start (issue 9 item 2, docs/design.md §3.3, §3.4).

The stale data comes from a client that switched telemetry on and died without reading: its reply and
its stream are still queued (in the virtual pen's output buffer, or in a link that keeps what the pen
sent, as a USB-serial bridge or the pen's own transmit buffer does).
"""

import os
import socket
import subprocess
import time

import pytest
from penctl_links import LatencyLink
from test_cli import PENCTL, ok, rig, run, wait_motor, wait_state

from penctl.firmware.pen import wire
from pensim.supervisor import VirtualPen

LONG_PROFILE = '[[profile]]\nname = "long"\ndepth_mm = 0.5\nstroke_hz = 100\nmax_session_s = 1800\n'
DEAD_CLIENT_REQUEST = wire.encode("Q", 1, {"op": "telemetry", "on": True, "lease": 3000})


def pen_time_s(pen):
    return rig(pen, {"op": "measure"})["t_us"] / 1e6


def dead_client_on_the_pty(port):
    """Open the port, switch telemetry on (lease: 3000 samples, 60 s), close without reading."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\n" + DEAD_CLIENT_REQUEST)
        time.sleep(0.3)
    finally:
        os.close(fd)


def dead_client_on_the_link(link):
    with socket.create_connection(link.address) as client:
        client.sendall(b"\n" + DEAD_CLIENT_REQUEST)     # and gone before the reply arrives


@pytest.fixture
def pen(tmp_path):
    with VirtualPen(clock="fast", state_dir=tmp_path / "state") as vpen:
        wait_state(vpen, ("LOCKED", "READY"))
        yield vpen


def check_fresh_rows(result, started_s, seconds, every_sample=True):
    rows = result["rows"]
    assert rows, result
    assert rows[0]["t_s"] >= started_s, (rows[0]["t_s"], started_s)       # nothing from before the command
    assert rows[-1]["t_s"] - rows[0]["t_s"] >= seconds - 0.02 - 1e-9       # the time asked (one 20 ms period)
    if every_sample:     # 50 samples per second of pen time (on a slow link the fast clock outruns renewals)
        assert 50 * seconds - 1 <= result["samples"] <= 50 * seconds + 1
    times = [row["t_s"] for row in rows]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_telemetry_after_a_dead_client_returns_only_fresh_rows(pen):
    dead_client_on_the_pty(pen.port)
    time.sleep(1.0)                                  # its stream piles up while nobody reads
    started = pen_time_s(pen)
    result = ok(run("telemetry", "--seconds", "1", port=pen.port))
    check_fresh_rows(result, started, 1)


def test_telemetry_over_a_link_that_kept_the_dead_clients_reply(pen):
    # The dead client's reply (request id 1) and stream wait in the link for the next client.
    with LatencyLink(pen.port, delay_s=0.15) as link:
        dead_client_on_the_link(link)
        time.sleep(1.0)
        assert link.backlog
        started = pen_time_s(pen)
        result = ok(run("telemetry", "--seconds", "1", port=link.url))
        check_fresh_rows(result, started, 1, every_sample=False)


@pytest.mark.parametrize("dead_client", [False, True], ids=["slow-link", "slow-link-after-dead-client"])
def test_session_run_runs_the_time_asked(pen, tmp_path, dead_client):
    profiles = tmp_path / "long.toml"
    profiles.write_text(LONG_PROFILE)
    ok(run("profile", "push", profiles, port=pen.port))
    ok(run("profile", "use", "long", port=pen.port))
    ok(run("sterilise", port=pen.port))
    rig(pen, {"op": "cartridge", "id": "F4E5A00100000001"})
    with LatencyLink(pen.port, delay_s=0.15) as link:
        if dead_client:
            dead_client_on_the_link(link)
            time.sleep(0.5)
        started = pen_time_s(pen)
        result = ok(run("session", "run", "--seconds", "10", port=link.url, timeout=120))
    assert result["end_reason"] == "TIME_LIMIT" and result["complete"] is True   # the pen ended it ...
    assert result["ended_by"] == "the time asked"                                # ... at the time asked
    assert 10.0 - 0.01 <= result["duration_s"] <= 10.0 + 0.01             # pen time, from the pen's log (S8)
    rows = result["rows"]
    # The fast clock runs pen time ~50x faster than the 150 ms link delivers lease renewals, so
    # the recording may end early; the time the needles ran is the pen's, whatever the link does.
    assert rows and rows[0]["t_s"] >= started                             # nothing from before the command
    assert result["strokes"] >= 900                                       # 100 Hz for 10 s, after soft start
    session = [e for e in ok(run("log", port=pen.port))["entries"] if e["kind"] == "session"][-1]
    assert session["end"] == "TIME_LIMIT" and 10.0 - 0.01 <= session["duration_s"] <= 10.0 + 0.01


def test_session_run_ended_by_someone_else_is_not_a_success(pen, tmp_path):
    # Two programs on one pen (a link does not lock the port): the other one stops the session.
    # `session run` did not get the time asked: exit 1, the summary says it ended early.
    profiles = tmp_path / "long.toml"
    profiles.write_text(LONG_PROFILE)
    ok(run("profile", "push", profiles, port=pen.port))
    ok(run("profile", "use", "long", port=pen.port))
    ok(run("sterilise", port=pen.port))
    rig(pen, {"op": "cartridge", "id": "F4E5A00200000002"})
    with LatencyLink(pen.port, delay_s=0.0) as link:
        proc = subprocess.Popen(PENCTL + ["--port", link.url, "--json", "session", "run", "--seconds", "1800"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_motor(pen, True)
            ok(run("session", "stop", port=link.url))
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, (stdout, stderr)
    assert '"code": "ENDED_EARLY"' in stdout and "ended early" in stderr


def test_session_run_that_the_pen_does_not_end_is_not_a_success(tmp_path):
    # A pen whose firmware ignores session_start's run_ms (an older firmware, or a bug) drives on
    # past the time asked: penctl's backstop stops it 2 s later (Pen.RUN_BACKSTOP_MS) and says
    # the pen overran: exit 1 OVERRAN, never "ran the time asked".
    from pensim.flash_dir import install_factory_image

    state = tmp_path / "state"
    state.mkdir()
    assert install_factory_image(state)
    ops = state / "pen" / "ops.py"
    source = ops.read_text()
    assert "    run_ms = _run_ms(body)\n" in source
    ops.write_text(source.replace("    run_ms = _run_ms(body)\n", "    run_ms = None\n"))
    with VirtualPen(clock="fast", state_dir=state) as vpen:
        wait_state(vpen, ("LOCKED", "READY"))
        profiles = tmp_path / "long.toml"
        profiles.write_text(LONG_PROFILE)
        ok(run("profile", "push", profiles, port=vpen.port))
        ok(run("profile", "use", "long", port=vpen.port))
        ok(run("sterilise", port=vpen.port))
        rig(vpen, {"op": "cartridge", "id": "F4E5A00300000003"})
        result = run("session", "run", "--seconds", "2", port=vpen.port)
    assert result.rc == 1, (result.stdout, result.stderr)
    error = result.json["error"]
    assert error["code"] == "OVERRAN" and "did not end the session at the 2 s asked" in error["message"]
    session = result.json["session"]
    assert session["complete"] is False and session["ended_by"] == "penctl's backstop"
    assert session["end_reason"] == "STOPPED" and session["duration_s"] >= 2.0 + 2.0
