"""The virtual pen supervisor (pensim.supervisor) and its REPL shim, driven like a board:
stock mpremote and pyserial on the pty, JSON lines on the rig socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import serial

from pensim.supervisor import VirtualPen

HERE = Path(__file__).resolve().parent
FIXTURE_MAIN = HERE / "simfixtures" / "tick_main.py"
MPREMOTE = Path(sys.executable).parent / "mpremote"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"

pytestmark = pytest.mark.skipif(not MPREMOTE.exists(), reason="mpremote not installed in the venv")


# ---- helpers -------------------------------------------------------------------------------

def mpremote(port: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(MPREMOTE), "connect", port, *args], capture_output=True, timeout=timeout,
                          check=False)


def ok(r: subprocess.CompletedProcess) -> bytes:
    assert r.returncode == 0, f"mpremote failed ({r.returncode}): {r.stdout[-500:]!r} {r.stderr[-800:]!r}"
    return r.stdout


def read_until(ser: serial.Serial, token: bytes, timeout: float = 10) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while token not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"timeout waiting for {token!r}; got {buf[-600:]!r}")
        buf += ser.read(ser.in_waiting or 1)
    return buf


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def rig(sock_path: Path, *reqs: dict | bytes) -> list[dict]:
    """Send requests on one connection of the rig socket, return the replies."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        f = s.makefile("rwb")
        out = []
        for r in reqs:
            f.write(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n")
            f.flush()
            out.append(json.loads(f.readline()))
        return out


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vpen")  # short: AF_UNIX paths are limited to ~100 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def blank_pen(tmp_path, sockdir):
    with VirtualPen(blank=True, state_dir=tmp_path / "flash", control=sockdir / "rig.sock") as pen:
        yield pen


@pytest.fixture
def fw_pen(tmp_path, sockdir):
    flash = tmp_path / "flash"
    flash.mkdir()
    shutil.copyfile(FIXTURE_MAIN, flash / "main.py")
    with VirtualPen(blank=True, state_dir=flash, control=sockdir / "rig.sock", clock="fast") as pen:
        yield pen


def open_port(pen: VirtualPen) -> serial.Serial:
    ser = serial.Serial(pen.port, 115200, timeout=0.1)
    ser.reset_input_buffer()
    return ser


# ---- blank pen: the REPL shim behind stock mpremote -----------------------------------------

def test_mpremote_exec(blank_pen):
    # (how long it takes is a `make bench` figure, not asserted here)
    out = ok(mpremote(blank_pen.port, "exec", "print(6*7)"))
    assert out.strip() == b"42"
    assert out == b"42\r\n"  # a board's stdout turns \n into \r\n
    st = blank_pen.status()
    assert st["powered"] and not st["firmware"] and st["mode"] == "repl"
    # mpremote leaves the pen in the friendly REPL
    blank_pen.wait_for(lambda s: s["repl"] == "friendly")


def test_fs_cp_cat_ls_roundtrip(blank_pen, tmp_path):
    src = tmp_path / "local.txt"
    text = "hello pen\nline two\n" + "x" * 1000 + "\n"
    src.write_text(text)
    ok(mpremote(blank_pen.port, "fs", "cp", str(src), ":x.txt"))
    assert (blank_pen.state_dir / "x.txt").read_text() == text  # landed in the pen's flash
    out = ok(mpremote(blank_pen.port, "fs", "cat", ":x.txt"))
    assert out.replace(b"\r\n", b"\n") == text.encode()
    back = tmp_path / "back.txt"
    ok(mpremote(blank_pen.port, "fs", "cp", ":x.txt", str(back)))
    assert back.read_text() == text
    ok(mpremote(blank_pen.port, "fs", "mkdir", ":lib"))
    listing = ok(mpremote(blank_pen.port, "fs", "ls")).decode()
    assert f"{len(text.encode())} x.txt" in " ".join(listing.split())  # sizes, as LittleFS reports
    assert "lib/" in listing
    # the flash is the filesystem root, as on a board
    out = ok(mpremote(blank_pen.port, "exec", "import os; print(sorted(os.listdir('/')))"))
    assert "'x.txt'" in out.decode() and "'lib'" in out.decode()


def test_soft_reset_then_exec(blank_pen):
    ok(mpremote(blank_pen.port, "exec", "marker = 1"))
    starts = blank_pen.status()["shim_starts"]
    ok(mpremote(blank_pen.port, "soft-reset"))
    assert blank_pen.status()["shim_starts"] > starts  # a new interpreter: fresh globals
    out = ok(mpremote(blank_pen.port, "exec", "print('marker' in globals())"))
    assert out.strip() == b"False"
    # several commands in one session share the globals; `resume` skips the soft reset
    out = ok(mpremote(blank_pen.port, "exec", "a = 5", "+", "exec", "print(a * 2)"))
    assert out.strip() == b"10"
    out = ok(mpremote(blank_pen.port, "resume", "exec", "print(a * 3)"))
    assert out.strip() == b"15"


def test_exec_exception_traceback(blank_pen):
    r = mpremote(blank_pen.port, "exec", "def f():\n    1/0\nf()")
    assert r.returncode == 1
    text = (r.stdout + r.stderr).decode()
    assert 'File "<stdin>", line 2, in f' in text and "ZeroDivisionError" in text
    assert "sim_repl" not in text  # no frames of the shim itself


def test_friendly_repl_pyserial(blank_pen):
    with open_port(blank_pen) as ser:
        ser.write(b"\x03")  # Ctrl-C at the prompt: a fresh prompt
        ser.write(b"print('sy' + 'nc')\r")  # skip whatever the pen printed before we connected
        read_until(ser, b"sync\r\n>>> ")
        ser.write(b"1+1\r")
        assert read_until(ser, b">>> ").endswith(b"1+1\r\n2\r\n>>> ")
        ser.write(b"x = 7\rfor i in range(2):\r")
        read_until(ser, b"...     ")  # continuation prompt with auto-indent
        ser.write(b"print(i * x)\r\b\r")
        out = read_until(ser, b">>> ")
        assert b"0\r\n7\r\n" in out
        ser.write(b"1/0\r")
        out = read_until(ser, b">>> ")
        assert b"ZeroDivisionError: divide by zero\r\n" in out
        ser.write(b"abc\b\b\b\x03")  # backspace, then Ctrl-C cancels the line
        read_until(ser, b">>> ")
        ser.write(b"\x02")  # Ctrl-B: banner
        out = read_until(ser, b">>> ")
        assert b"MicroPython v1.29.0" in out and b"RP2040" in out
        ser.write(b"\x05")  # paste mode
        read_until(ser, b"=== ")
        ser.write(b"y = 3\rprint(y * 2)\r\x04")
        out = read_until(ser, b">>> ")
        assert b"6\r\n" in out
        ser.write(b"\x04")  # Ctrl-D: soft reboot, back to the friendly REPL
        out = read_until(ser, b">>> ")
        assert b"MPY: soft reboot\r\n" in out and b"MicroPython v1.29.0" in out


def test_raw_repl_and_raw_paste_protocol(blank_pen):
    with open_port(blank_pen) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, RAW_BANNER)
        ser.write(b"print('raw')\x04")
        assert read_until(ser, b"\x04>") == b"OKraw\r\n\x04\x04>"
        ser.write(b"raise ValueError(5)\x04")
        out = read_until(ser, b"\x04>")
        assert out.startswith(b"OK\x04Traceback") and out.endswith(b"ValueError: 5\r\n\x04>")
        ser.write(b"\x05A\x01")
        hdr = b""
        deadline = time.monotonic() + 5
        while len(hdr) < 5 and time.monotonic() < deadline:
            hdr += ser.read(5 - len(hdr))
        assert hdr == b"R\x01\x80\x00\x01"  # raw paste accepted, window 128 bytes, one window free
        ser.write(b"print('paste')\x04")
        assert read_until(ser, b"\x04>") == b"\x04paste\r\n\x04\x04>"
        ser.write(b"\x05B\x01")  # unknown raw-paste command
        assert read_until(ser, b">") == b"R\x00>"
        ser.write(b"\x04")  # empty: soft reboot, stays in the raw REPL, no main.py
        assert read_until(ser, RAW_BANNER) == b"OK\r\nMPY: soft reboot\r\n" + RAW_BANNER
        ser.write(b"\x02")
        read_until(ser, b">>> ")


def test_large_exec_uses_raw_paste(blank_pen):
    blob = "".join(chr(97 + i % 26) for i in range(16000))
    funcs = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(60))
    code = f"s = {blob!r}\n{funcs}print(len(s), s.count('z'), f59(f1(0)))\n"
    assert len(code) > 17000  # > 130 windows of raw-paste flow control
    out = ok(mpremote(blank_pen.port, "exec", code))
    assert out.split() == [b"16000", str(blob.count("z")).encode(), b"60"]


def test_ctrl_c_interrupts_running_code_in_repl(blank_pen):
    # code that never ends: the next mpremote's Ctrl-C must break it (KeyboardInterrupt)
    r = mpremote(blank_pen.port, "exec", "--no-follow", "import time\nwhile True: time.sleep_ms(5)")
    ok(r)
    blank_pen.wait_for(lambda s: s["repl"] == "busy")
    out = ok(mpremote(blank_pen.port, "exec", "print('after')"))
    assert out.strip() == b"after"


def test_power_cut_and_power_on(blank_pen):
    ok(mpremote(blank_pen.port, "exec", "print(1)"))
    pid = blank_pen.interpreter_pid
    assert pid is not None
    rep = blank_pen.power_cut()
    assert rep["ok"] and rep["powered"] is False
    assert pid_gone(pid)
    st = blank_pen.status()
    assert not st["powered"] and st["interpreter_pid"] is None and st["mode"] == "off"
    with open_port(blank_pen) as ser:  # the port stays; nothing answers
        ser.write(b"\r\x03\r\x01")
        time.sleep(0.3)
        assert ser.read(1000) == b""
    assert blank_pen.power_on()["ok"]
    assert blank_pen.status()["powered"]
    out = ok(mpremote(blank_pen.port, "exec", "print(6*7)"))
    assert out.strip() == b"42"


def test_rig_socket(blank_pen):
    sock = blank_pen.control
    st, unknown, bad, meas, inj, cart = rig(
        sock, {"op": "status"}, {"op": "frobnicate"}, b"{not json\n", {"op": "measure"},
        {"op": "inject", "fault": "stall"}, {"op": "cartridge", "id": "C0FFEE01"})
    assert st["ok"] and st["powered"] and st["firmware"] is False and st["mode"] == "repl"
    assert st["port"] == blank_pen.port and st["interpreter_pid"] == blank_pen.interpreter_pid
    assert unknown["ok"] is False and "unknown op" in unknown["error"]
    assert bad["ok"] is False and "JSON" in bad["error"]
    assert meas == {"ok": True, "powered": True, "firmware": False, "motor_on": False, "uv_on": False,
                    "hz": 0, "depth_um": None, "cartridge": None, "cartridge_used": False, "lid_closed": True}
    assert inj == {"ok": False, "error": "firmware not running", "powered": True}
    assert cart["ok"]
    # power ops over the socket; a second client, later
    cut, st2, meas2, on = rig(sock, {"op": "power_cut"}, {"op": "status"}, {"op": "measure"},
                              {"op": "power_on"})
    assert cut["ok"] and not st2["powered"] and st2["cartridge"] == "C0FFEE01"
    assert meas2["powered"] is False and meas2["motor_on"] is False
    assert on["ok"] and on["powered"]


def test_flash_main_then_soft_reset_boots_firmware(blank_pen, tmp_path):
    mod = tmp_path / "mymod.py"
    mod.write_text("VALUE = 41 + 1\n")
    ok(mpremote(blank_pen.port, "fs", "cp", str(mod), ":mymod.py", "+", "fs", "cp", str(FIXTURE_MAIN),
                ":main.py"))
    out = ok(mpremote(blank_pen.port, "exec", "import mymod; print(mymod.VALUE)"))  # imports from flash
    assert out.strip() == b"42"
    # mpremote's raw-mode soft reset does not run main.py ...
    ok(mpremote(blank_pen.port, "soft-reset"))
    assert blank_pen.status()["firmware"] is False
    # ... a friendly-mode soft reset (Ctrl-D at >>>) does, like a board
    with open_port(blank_pen) as ser:
        ser.write(b"\x03\x04")
        out = read_until(ser, b"tick 1\n")
        assert b"MPY: soft reboot\r\nfixture: boot" in out
    assert blank_pen.status()["firmware"]


# ---- firmware path (a stand-in main.py) ---------------------------------------------------

def test_ctrl_c_stops_firmware_then_repl(fw_pen):
    st = fw_pen.status()
    assert st["firmware"] and st["mode"] == "firmware"
    pid = st["interpreter_pid"]
    with open_port(fw_pen) as ser:
        read_until(ser, b"tick")
        ser.write(b"hello\r")  # bytes before the Ctrl-C reach the firmware
        read_until(ser, b"echo: hello\n")
        ser.write(b"\x03" + b"1+1\r")  # bytes after it go to the REPL
        out = read_until(ser, b"2\r\n>>> ")
        assert b"fixture: KeyboardInterrupt, motor off\n" in out  # SIGINT -> KeyboardInterrupt
        assert out.index(b"KeyboardInterrupt") < out.index(b"MicroPython v1.29.0")
    assert pid_gone(pid)
    st = fw_pen.status()
    assert not st["firmware"] and st["mode"] == "repl"
    # a friendly soft reset boots main.py again
    with open_port(fw_pen) as ser:
        ser.write(b"\x04")
        out = read_until(ser, b"tick")
        assert b"MPY: soft reboot\r\nfixture: boot" in out
    fw_pen.wait_for(lambda s: s["firmware"])


def test_ctrl_c_right_after_boot(fw_pen):
    # the interpreter ignores SIGINT until MicroPython runs main.py: the Ctrl-C must not get lost
    with open_port(fw_pen) as ser:
        for _ in range(3):
            fw_pen.power_cut()
            fw_pen.power_on()
            ser.write(b"\x03")
            out = read_until(ser, b">>> ")
            assert b"KeyboardInterrupt" in out  # SIGINT delivered (maybe before the fixture's `try`)
            ser.reset_input_buffer()


def test_mpremote_breaks_into_firmware(fw_pen):
    pid = fw_pen.interpreter_pid
    out = ok(mpremote(fw_pen.port, "exec", "print(open('main.py').read().count('tick'))"))
    assert int(out) >= 1
    assert pid_gone(pid)
    # after mpremote the pen sits in the friendly REPL, like a board: the firmware is not restarted
    st = fw_pen.status()
    assert st["mode"] == "repl" and not st["firmware"]


def test_firmware_crash_drops_to_repl(fw_pen):
    with open_port(fw_pen) as ser:
        read_until(ser, b"tick")
        ser.write(b"crash\r")
        out = read_until(ser, b">>> ")
        assert b"ValueError: fixture crash" in out
    assert fw_pen.status()["mode"] == "repl"


def test_rig_forwarding(fw_pen):
    sock = fw_pen.control
    cart, meas, inj, meas2, clr = rig(
        sock, {"op": "cartridge", "id": "ABCD1234"}, {"op": "measure"},
        {"op": "inject", "fault": "lid_open"}, {"op": "measure"}, {"op": "clear_injections"})
    assert cart == {"ok": True, "op": "cartridge", "fixture": True}
    assert meas["ok"] and meas["fixture"] and meas["cartridge"] == "ABCD1234" and meas["motor_on"] is True
    assert meas["powered"] is True and meas["firmware"] is True
    assert inj["ok"] and meas2["injected"] == ["lid_open"]
    assert clr["ok"]
    # the same through the Python API
    rep = fw_pen.rig_request({"op": "measure"})
    assert rep["ok"] and rep["injected"] == []
    # the inserted cartridge survives a power cut and is replayed to the new firmware (the lid
    # and the used mark too: tests/test_pensim_world.py, with a fixture that records every op)
    fw_pen.power_cut()
    fw_pen.power_on()
    rep = fw_pen.measure()
    assert rep["fixture"] and rep["cartridge"] == "ABCD1234"


def test_power_cut_kills_firmware(fw_pen):
    pid = fw_pen.interpreter_pid
    with open_port(fw_pen) as ser:
        read_until(ser, b"tick")
        rep = rig(fw_pen.control, {"op": "power_cut"})[0]
        assert rep["ok"] and not rep["powered"]
        assert pid_gone(pid)  # killed and reaped: no zombie
        time.sleep(0.05)
        ser.reset_input_buffer()
        time.sleep(0.1)
        assert ser.read(1000) == b""  # no more output
        assert fw_pen.measure()["firmware"] is False
        assert fw_pen.inject("stall") == {"ok": False, "error": "firmware not running", "powered": False}
        fw_pen.power_on()
        read_until(ser, b"fixture: boot")
    new = fw_pen.interpreter_pid
    assert new != pid and fw_pen.status()["firmware"]


def test_fixture_env(fw_pen):
    with open_port(fw_pen) as ser:
        ser.write(b"\x03")
        read_until(ser, b">>> ")
        ser.write(b"\x04")
        out = read_until(ser, b"tick")
    serial_no = (fw_pen.state_dir / ".serial").read_text().strip()
    assert f"fixture: boot serial={serial_no} clock=fast".encode() in out
    assert serial_no == fw_pen.serial


# ---- run_sim (what `penctl sim` calls) ------------------------------------------------------

def test_run_sim_foreground(tmp_path, sockdir):
    link = sockdir / "pen0"
    code = ("import sys; from pensim.supervisor import run_sim; "
            f"sys.exit(run_sim(link={str(link)!r}, blank=True, control={str(sockdir / 'c.sock')!r}, "
            "json_out=True))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["pid"] == proc.pid and info["port"].startswith("/dev/pts/")
        assert os.readlink(link) == info["port"]
        st = rig(sockdir / "c.sock", {"op": "status"})[0]
        child = st["interpreter_pid"]
        out = ok(mpremote(str(link), "exec", "print(6*7)"))  # through the symlink
        assert out.strip() == b"42"
        child = rig(sockdir / "c.sock", {"op": "status"})[0]["interpreter_pid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not link.is_symlink() and not (sockdir / "c.sock").exists()
    assert pid_gone(child)


def test_run_sim_text_and_sigint(tmp_path):
    state = tmp_path / "flash"
    code = ("import sys; from pensim.supervisor import run_sim; "
            f"sys.exit(run_sim(state_dir={str(state)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("port: /dev/pts/")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (state / ".serial").is_file()  # --state persists
