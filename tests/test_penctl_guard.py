"""`penctl flash` fails closed (issue 9 item 1, docs/design.md §4.3): it breaks into the firmware only
when the pen positively answered that it is idle, or is verifiably at the REPL. A slow link, a port
backlog or a silent pen never count as idle.

The pens here are virtual pens on the real clock (a session must outlast the test); the sterilisation
that unlocks them runs first on the fast clock, on the same flash folder.
"""

import os
import pty
import socket
import time
import tty

import pytest
from penctl_links import LatencyLink
from test_cli import full_depth_range, ok, refused, rig, run, wait_motor, wait_state

from penctl import flash
from penctl.errors import NoAnswer, PenRefused
from penctl.firmware.pen import wire
from pensim.supervisor import VirtualPen

LONG_PROFILE = '[[profile]]\nname = "long"\ndepth_mm = 1.0\nstroke_hz = 100\nmax_session_s = 1800\n'


def unlocked_state(tmp_path, profile_text=LONG_PROFILE, name="long"):
    """A pen flash folder with one profile active and a completed sterilisation (READY after boot)."""
    state = tmp_path / "state"
    profiles = tmp_path / "profile.toml"
    profiles.write_text(profile_text)
    with VirtualPen(state_dir=state, clock="fast") as pen:
        wait_state(pen, ("LOCKED", "READY"))
        full_depth_range(pen)             # the clinician allows more than the factory 0.5 mm (S16)
        ok(run("profile", "push", profiles, port=pen.port))
        ok(run("profile", "use", name, port=pen.port))
        ok(run("sterilise", port=pen.port))
    return state


@pytest.fixture
def running(tmp_path):
    """A virtual pen (real clock) in a session."""
    state = unlocked_state(tmp_path)
    with VirtualPen(state_dir=state, clock="real") as pen:
        wait_state(pen, ("READY",))
        rig(pen, {"op": "cartridge", "id": "5E5510A100000001"})
        ok(run("session", "start", port=pen.port))
        wait_motor(pen, True)
        yield pen


def untouched(pen):
    """The session still runs and nothing was flashed (the factory image has no slots)."""
    assert rig(pen, {"op": "measure"})["motor_on"] is True
    assert ok(run("info", port=pen.port))["state"] == "RUNNING"
    assert not (pen.state_dir / "fw").exists()


def test_slow_link_flash_refuses_a_running_session(running):
    # 150 ms each way: every command works over it, and flash must not take the slow answer as "idle".
    with LatencyLink(running.port, delay_s=0.15) as link:
        assert ok(run("info", port=link.url))["state"] == "RUNNING"
        error = refused(run("flash", port=link.url, timeout=60), "BUSY")
        assert "RUNNING" in error["message"] and "session stop" in error["message"]
        with pytest.raises(PenRefused) as info:          # the library call has the same guard
            flash.flash_firmware(link.url)
        assert info.value.code == "BUSY"
    untouched(running)


def test_port_backlog_flash_refuses_a_running_session(running):
    # A client switched telemetry on and died: its stream queues up in the link (8 s of it), which
    # carries 20 kB/s. The answer to the guard's `info` comes after the backlog.
    with LatencyLink(running.port, delay_s=0.0, rate=20000) as link:
        dead = wire.encode("Q", 1, {"op": "telemetry", "on": True, "lease": 3000})
        with socket.create_connection(link.address) as client:
            client.sendall(b"\n" + dead)
            time.sleep(0.3)
        time.sleep(8)
        assert len(link.backlog) > 20000, len(link.backlog)
        result = run("--timeout", "10", "flash", port=link.url, timeout=60)
        refused(result, "BUSY")
    untouched(running)


def test_powered_off_pen_is_no_answer(running):
    # A pen without power answers nothing: exit 3, nothing but one `info` sent, and not told to flash.
    rig(running, {"op": "power_cut"})
    result = run("--timeout", "1", "flash", port=running.port, timeout=60)
    assert result.rc == 3, result
    assert result.json["error"]["code"] == "NO_ANSWER"
    assert "no usable answer" in result.stderr and "--force" in result.stderr
    assert "try `penctl flash`" not in result.stderr
    info = run("--timeout", "1", "info", port=running.port)
    assert info.rc == 3 and "penctl flash" not in info.stderr, info
    rig(running, {"op": "power_on"})
    assert not (running.state_dir / "fw").exists()


def test_silent_port_is_no_answer_and_nothing_is_broken_into():
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        port = os.ttyname(slave)
        result = run("--timeout", "0.5", "flash", port=port, timeout=60)
        assert result.rc == 3 and result.json["error"]["code"] == "NO_ANSWER", result
        os.set_blocking(master, False)
        sent = os.read(master, 65536)
        assert b"\x03" not in sent and b'"op": "info"' in sent           # one info, no Ctrl-C
        with pytest.raises(NoAnswer):
            flash.flash_firmware(port, probe_timeout=0.5)
    finally:
        os.close(master)
        os.close(slave)


def test_force_skips_the_guard_and_says_so(running):
    result = run("flash", "--force", port=running.port, timeout=120)
    assert result.rc == 0, result
    assert "--force" in result.stderr
    assert result.json["report"]["guard"] == "skipped (force)"
    # Breaking in stopped the motor (S9) and the new firmware runs; the session is over.
    assert rig(running, {"op": "measure"})["motor_on"] is False
    assert ok(run("info", port=running.port))["state"] in ("LOCKED", "BOOT")


def test_flash_help_documents_the_guard_and_force():
    result = run("flash", "--help", json_out=False)
    assert result.rc == 0
    for words in ("--force", "idle", "REPL", "BUSY", "exit 3"):
        assert words in result.stdout, words
