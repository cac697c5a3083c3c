"""`machine.reset()` on the virtual pen restarts it as a board's does (issue 9 item 6,
docs/design.md §5): stock `mpremote reset`, the friendly REPL, the raw REPL, code that tries to
catch the reset; the pen then boots main.py if the flash has one."""

from __future__ import annotations

import shutil

import pytest
from test_simpen import FIXTURE_MAIN, MPREMOTE, RAW_BANNER, mpremote, ok, open_port, pid_gone, read_until

from pensim.supervisor import VirtualPen

pytestmark = pytest.mark.skipif(not MPREMOTE.exists(), reason="mpremote not installed in the venv")

BANNER = b"MicroPython v1.29.0"
# How long the tests wait for a reset to finish before they call it lost (a hang guard, not a
# timing figure: timings are `make bench`'s).
RESET_DONE_S = 5.0


@pytest.fixture
def blank_pen(tmp_path):
    with VirtualPen(blank=True, state_dir=tmp_path / "flash", clock="fast") as pen:
        yield pen


def install_fixture_main(pen: VirtualPen) -> None:
    assert pen.state_dir is not None
    shutil.copyfile(FIXTURE_MAIN, pen.state_dir / "main.py")


def test_mpremote_reset_without_main_restarts_the_repl(blank_pen):
    pid = blank_pen.interpreter_pid
    before = blank_pen.status()
    ok(mpremote(blank_pen.port, "exec", "marker = 1"))
    ok(mpremote(blank_pen.port, "reset"))
    st = blank_pen.wait_for(lambda s: s["resets"] == 1 and s["repl"] == "friendly", timeout=RESET_DONE_S)
    assert st["boots"] == before["boots"] + 1 and st["power_cuts"] == 0
    assert st["mode"] == "repl" and not st["firmware"]
    assert pid_gone(pid)
    # a fresh interpreter: nothing survives a hard reset (mpremote's own soft reset would not
    # show this, so `resume` skips it)
    out = ok(mpremote(blank_pen.port, "resume", "exec", "print('marker' in globals())"))
    assert out.strip() == b"False"


def test_mpremote_reset_boots_the_firmware(blank_pen):
    install_fixture_main(blank_pen)
    with open_port(blank_pen) as ser:
        ok(mpremote(blank_pen.port, "reset"))
        out = read_until(ser, b"tick 1\n", timeout=RESET_DONE_S)
    assert b"fixture: boot" in out
    st = blank_pen.wait_for(lambda s: s["firmware"], timeout=RESET_DONE_S)
    assert st["mode"] == "firmware" and st["resets"] == 1 and st["firmware_starts"] == 1
    # and mpremote can break into that firmware again, as on a board
    assert ok(mpremote(blank_pen.port, "exec", "print(6*7)")).strip() == b"42"


def test_reset_typed_at_the_friendly_repl(blank_pen):
    install_fixture_main(blank_pen)
    with open_port(blank_pen) as ser:
        ser.write(b"\x03")
        ser.write(b"print('sy' + 'nc')\r")
        read_until(ser, b"sync\r\n>>> ")
        ser.write(b"import machine\r")
        read_until(ser, b">>> ")
        ser.write(b"machine.reset()\r")
        out = read_until(ser, b"fixture: boot", timeout=RESET_DONE_S)
    # a hard reset is not a soft reboot: no "MPY: soft reboot", no traceback
    assert b"soft reboot" not in out and b"Traceback" not in out
    assert blank_pen.wait_for(lambda s: s["firmware"], timeout=RESET_DONE_S)["resets"] == 1


def test_reset_in_the_raw_repl(blank_pen):
    with open_port(blank_pen) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, RAW_BANNER)
        ser.write(b"import machine; print('going'); machine.reset()\x04")
        out = read_until(ser, b">>> ", timeout=RESET_DONE_S)
        assert out.startswith(b"OKgoing\r\n")
        assert BANNER in out    # the friendly REPL of a fresh boot, not the raw REPL
        assert b"Traceback" not in out and b"soft reboot" not in out
    st = blank_pen.wait_for(lambda s: s["repl"] == "friendly", timeout=RESET_DONE_S)
    assert st["resets"] == 1


def test_reset_cannot_be_caught(blank_pen):
    # On a board the reset happens in hardware: code that catches what machine.reset() raises,
    # then loops, must not keep the pen from restarting.
    pid = blank_pen.interpreter_pid
    code = ("import machine, time\n"
            "try:\n    machine.reset()\nexcept BaseException:\n    pass\n"
            "while True:\n    time.sleep_ms(10)\n")
    ok(mpremote(blank_pen.port, "exec", "--no-follow", code))
    st = blank_pen.wait_for(lambda s: s["resets"] == 1 and s["repl"] == "friendly", timeout=RESET_DONE_S)
    assert st["interpreter_pid"] != pid and pid_gone(pid)


def test_soft_reset_is_not_a_hard_reset(blank_pen):
    # machine.soft_reset() and Ctrl-D stay soft reboots (no main.py from the raw REPL)
    install_fixture_main(blank_pen)
    ok(mpremote(blank_pen.port, "exec", "import machine; machine.soft_reset()"))
    ok(mpremote(blank_pen.port, "soft-reset"))
    st = blank_pen.status()
    assert st["resets"] == 0 and not st["firmware"]


def test_reset_drops_what_the_firmware_left_running(tmp_path):
    # The firmware is stopped with the motor left on (a final plant state with motor_on); a
    # reset drops the MCU's outputs, so the REPL that boots reports the motor off.
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import json, os, time\n"
        "try:\n"
        "    while True:\n        time.sleep_ms(10)\n"
        "except KeyboardInterrupt:\n"
        "    with open(os.getenv('PEN_SIM_PLANT_FILE'), 'w') as f:\n"
        "        f.write(json.dumps({'ok': True, 'motor_on': True, 'hz': 150}))\n")
    with VirtualPen(blank=True, state_dir=flash, clock="fast") as pen:
        with open_port(pen) as ser:
            ser.write(b"\x03")
            read_until(ser, b">>> ")
        meas = pen.measure()
        assert meas["motor_on"] is True and meas["hz"] == 150 and meas["firmware"] is False
        (flash / "main.py").unlink()   # so that the reset boots the REPL, not the firmware
        ok(mpremote(pen.port, "reset"))
        pen.wait_for(lambda s: s["resets"] == 1 and s["repl"] == "friendly", timeout=RESET_DONE_S)
        meas = pen.measure()
        assert meas["motor_on"] is False and meas["hz"] == 0
