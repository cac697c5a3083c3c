"""penctl as a tool (issue 10 items 5 and 6): --version, python -m penctl, ports and --serial, -v and
--trace. Packaging from a wheel is tests/test_wheel.py."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from test_cli import ok, run, wait_state

from pensim.supervisor import VirtualPen

ROOT = Path(__file__).resolve().parents[1]
TRACE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \+\d+\.\d{6} ([<>#]) (.*)$")


@pytest.fixture(scope="module")
def vpen():
    with VirtualPen(clock="fast") as pen:
        wait_state(pen, ("LOCKED", "READY"))
        yield pen


def test_version_names_tool_firmware_and_protocol():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    firmware = re.search(r'FIRMWARE_VERSION = "([^"]+)"', (ROOT / "firmware/pen/limits.py").read_text()).group(1)
    for cmd in ([sys.executable, "-m", "penctl", "--version"], [str(Path(sys.executable).with_name("penctl")),
                                                                 "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out
        assert out.stdout.strip() == "penctl %s (firmware %s, protocol 2)" % (tool, firmware)
    out = subprocess.run([sys.executable, "-m", "penctl", "--json", "--version"], capture_output=True, text=True,
                         timeout=30)
    assert json.loads(out.stdout) == {"ok": True, "penctl": tool, "firmware": firmware, "protocol": 2}


def test_python_m_penctl_runs_commands(vpen):
    out = subprocess.run([sys.executable, "-m", "penctl", "--port", vpen.port, "--json", "info"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["serial"] == vpen.serial


class _FakePort:
    def __init__(self, device, serial_number, vid=0x2E8A, pid=0x0005):
        self.device, self.vid, self.pid, self.serial_number = device, vid, pid, serial_number
        self.description = "Board in FS mode"


def test_ports_lists_pens_with_their_serial_numbers(monkeypatch, capsys):
    from serial.tools import list_ports

    from penctl import cli

    monkeypatch.setattr(list_ports, "comports", lambda: [
        _FakePort("/dev/ttyACM0", "E6614C311B7E2A35"), _FakePort("/dev/ttyACM1", "E6614C311B1D5C2F"),
        _FakePort("/dev/ttyUSB0", "A50285BI", vid=0x0403, pid=0x6001)])
    assert cli.main(["--json", "ports"]) == 0
    listed = json.loads(capsys.readouterr().out)["ports"]
    assert [(p["device"], p["serial_number"]) for p in listed] == [("/dev/ttyACM0", "E6614C311B7E2A35"),
                                                                   ("/dev/ttyACM1", "E6614C311B1D5C2F")]
    assert cli.main(["ports"]) == 0
    text = capsys.readouterr().out
    assert "E6614C311B1D5C2F" in text and "/dev/ttyUSB0" not in text


def test_serial_selects_the_pen(monkeypatch, capsys, vpen):
    from serial.tools import list_ports

    from penctl import cli

    monkeypatch.delenv("PENCTL_PORT", raising=False)
    monkeypatch.setattr(list_ports, "comports", lambda: [_FakePort("/dev/no-such-tty", "E6614C311B7E2A35"),
                                                         _FakePort(vpen.port, "E6614C311B1D5C2F")])
    assert cli.main(["--json", "--serial", "e6614c311b1d5c2f", "info"]) == 0     # case does not matter
    assert json.loads(capsys.readouterr().out)["serial"] == vpen.serial
    monkeypatch.setenv("PENCTL_PORT", "/dev/no-such-tty")                          # --serial wins over it
    assert cli.main(["--json", "--serial", "E6614C311B1D5C2F", "info"]) == 0
    capsys.readouterr()
    assert cli.main(["--json", "--serial", "0000", "info"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "no pen with USB serial number 0000" in captured.err and "E6614C311B1D5C2F" in captured.err


def test_verbose_says_what_penctl_does_on_stderr(vpen):
    result = run("-v", "info", port=vpen.port)
    assert result.rc == 0 and result.json["ok"] is True                      # stdout stays one JSON object
    for words in ("opened %s" % vpen.port, "request ping", "request info"):
        assert words in result.stderr, (words, result.stderr)
    assert all(line.startswith("penctl: [") for line in result.stderr.splitlines())


def test_trace_has_every_frame_both_ways_with_host_timestamps(vpen, tmp_path):
    trace = tmp_path / "info.trace"
    ok(run("--trace", trace, "info", port=vpen.port))
    lines = trace.read_text().splitlines()
    parsed = [TRACE_LINE.match(line) for line in lines]
    assert lines and all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m][:3]
    sent = [m.group(2) for m in parsed if m.group(1) == ">" and m.group(2).startswith("@")]
    received = [m.group(2) for m in parsed if m.group(1) == "<" and m.group(2).startswith("@")]
    ids = [re.match(r"@2,Q,(\d+),", frame).group(1) for frame in sent]
    assert len(ids) == 2 and '"op": "ping"' in sent[0] and '"op": "info"' in sent[1]
    for num in ids:                                   # every request's reply is in the trace
        assert any(frame.startswith("@2,R,%s," % num) for frame in received), num
    stamps = [float(line.split()[1]) for line in lines]
    assert stamps == sorted(stamps)


def test_trace_of_a_flash_shows_the_raw_repl(tmp_path):
    trace = tmp_path / "flash.trace"
    with VirtualPen(clock="fast", blank=True) as pen:
        ok(run("--trace", trace, "flash", port=pen.port, timeout=120))
    text = trace.read_text()
    assert "> \\r\\x03" in text and "> \\r\\x01" in text                   # Ctrl-C, then the raw REPL
    assert "raw REPL; CTRL-B to exit" in text and '@2,Q,' in text           # the guard's info, the ping
