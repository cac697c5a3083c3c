"""Validation before side effects (issue 9 items 3 and 7, docs/design.md §4): every argument, input
file and output path is checked before the port is opened. "Nothing sent" is checked for real: the
port is a pty whose other end records every byte penctl writes (opening the port alone writes one).
A recording that cannot be written after a session (a full disk: /dev/full) goes to a fallback file.
"""

import csv
import json
import os
import resource
import shutil
import subprocess
import tty

import pytest
from test_cli import PENCTL, ok, rig, run, wait_state

from pensim.supervisor import VirtualPen

TM_HEADER = ["t_s", "state", "depth_set_mm", "depth_mm", "hz_set", "hz", "duty", "current_ma", "temp_c",
             "battery_v", "strokes", "faults", "overruns", "tick_max_us"]
MEMORY_LIMIT = 2 << 30       # a penctl that reads /dev/zero dies here, not by eating the machine


class Recorder:
    """A pty: penctl gets the slave as its port; everything it writes is read from the master."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)

    def received(self):
        out = b""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                return out
            if not chunk:
                return out
            out += chunk

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_port():
    rec = Recorder()
    yield rec
    rec.close()


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def penctl(*args, port=None, env=None, timeout=60):
    cmd = list(PENCTL) + (["--port", str(port)] if port else []) + ["--json"] + [str(a) for a in args]
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PENCTL_PORT", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, preexec_fn=_limits)
    payload = json.loads(proc.stdout.splitlines()[0]) if proc.stdout.startswith("{") else None
    return proc, payload


def refused_unsent(rec, *args, code="FILE", words=()):
    proc, payload = penctl(*args, port=rec.port)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("penctl: "), proc.stderr
    assert payload["ok"] is False and payload["error"]["code"] == code, payload
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert rec.received() == b"", "penctl wrote to the port"
    return proc


# ---- output paths ----

RECORDING_COMMANDS = [("session", "run", "--seconds", "5"), ("telemetry", "--seconds", "1")]


@pytest.mark.parametrize("command", RECORDING_COMMANDS, ids=["session-run", "telemetry"])
def test_output_paths_are_checked_before_the_port_is_opened(pty_port, tmp_path, command):
    folder = tmp_path / "out"
    folder.mkdir()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    cases = [
        (("--csv", folder), ["is a directory"]),
        (("--csv", str(tmp_path / "new-folder") + "/"), ["is a directory"]),
        (("--plot", folder), ["is a directory"]),
        (("--csv", tmp_path / "missing" / "run.csv"), ["does not exist"]),
        (("--plot", tmp_path / "missing" / "run.png"), ["does not exist"]),
        (("--csv", tmp_path / "run.txt"), ["must end in .csv"]),
        (("--plot", tmp_path / "run.jpg"), ["must end in .png"]),
        (("--csv", fifo), ["not a regular file"]),
    ]
    for option, words in cases:
        refused_unsent(pty_port, *command, *option, words=words)
    assert list(folder.iterdir()) == [] and not (tmp_path / "new-folder").exists()


def test_trace_path_is_checked_before_the_port_is_opened(pty_port, tmp_path):
    refused_unsent(pty_port, "--trace", tmp_path, "info", words=["--trace", "is a directory"])
    refused_unsent(pty_port, "--trace", tmp_path / "missing" / "t.log", "info", words=["does not exist"])


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process may not create files in. Root ignores permission bits, so for root the
    folder is made immutable (chattr +i); where that is not allowed, sysfs (no new files, even for root)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    yield "/sys/kernel"


def test_no_write_permission_is_refused_before_the_port_is_opened(pty_port, unwritable_dir):
    before = sorted(os.listdir(unwritable_dir))
    refused_unsent(pty_port, "session", "run", "--seconds", "5", "--csv", os.path.join(unwritable_dir, "run.csv"),
                   words=["cannot write"])
    refused_unsent(pty_port, "telemetry", "--seconds", "1", "--plot", os.path.join(unwritable_dir, "t.png"),
                   words=["cannot write"])
    refused_unsent(pty_port, "--trace", os.path.join(unwritable_dir, "t.log"), "info", words=["cannot write"])
    assert sorted(os.listdir(unwritable_dir)) == before


# ---- a recording is never lost ----

def test_full_disk_after_a_session_saves_the_rows_to_a_fallback_file(tmp_path):
    out = tmp_path / "run.csv"
    out.symlink_to("/dev/full")              # writes fail with ENOSPC, as on a full disk
    fallback_dir = tmp_path / "tmp"
    fallback_dir.mkdir()
    profiles = tmp_path / "p.toml"
    profiles.write_text('[[profile]]\nname = "p"\ndepth_mm = 0.5\nstroke_hz = 100\nmax_session_s = 600\n')
    with VirtualPen(clock="fast") as pen:
        wait_state(pen, ("LOCKED", "READY"))
        ok(run("profile", "push", profiles, port=pen.port))
        ok(run("profile", "use", "p", port=pen.port))
        ok(run("sterilise", port=pen.port))
        rig(pen, {"op": "cartridge", "id": "D15CF01100000001"})
        proc, payload = penctl("session", "run", "--seconds", "2", "--csv", out, port=pen.port,
                               env={"TMPDIR": str(fallback_dir)})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert payload["error"]["code"] == "FILE"
    assert "No space left on device" in proc.stderr and "the pen was used" in proc.stderr.lower()
    session = payload["session"]
    assert session["complete"] is True and session["end_reason"] == "TIME_LIMIT"
    fallback = session["csv_fallback"]
    assert os.path.dirname(fallback) == str(fallback_dir) and fallback in proc.stderr
    with open(fallback, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == TM_HEADER and len(rows) - 1 == session["samples"] >= 100


# ---- input files ----

def test_profile_files_that_are_not_small_regular_files_are_refused_unread(pty_port, tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:
        handle.write(b"# padding\n" * (1024 * 1024 // 10 + 1))          # just over 1 MB
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    refused_unsent(pty_port, "profile", "push", "/dev/zero", words=["/dev/zero", "not a regular file"])
    refused_unsent(pty_port, "profile", "push", big, words=["more than the 1048576"])
    refused_unsent(pty_port, "profile", "push", fifo, words=["not a regular file"])
    refused_unsent(pty_port, "profile", "push", tmp_path, words=["is a directory"])
    refused_unsent(pty_port, "profile", "push", tmp_path / "missing.toml", words=["no such file"])


# ---- numbers ----

@pytest.mark.parametrize("value", ["1e10", "nan", "inf", "-inf", "0", "-1", "3600.5", "soon"])
def test_bad_timeout_is_a_usage_error(pty_port, value):
    refused_unsent(pty_port, "--timeout=" + value, "info", code="USAGE", words=["--timeout", "0 < N <= 3600"])


@pytest.mark.parametrize("value", ["0", "-1", "1800.5", "100000", "nan", "inf"])
def test_session_seconds_out_of_range_before_the_port(pty_port, value):
    refused_unsent(pty_port, "session", "run", "--seconds=" + value, code="USAGE", words=["0 < N <= 1800"])
    # with no pen at all it is still a usage error (exit 2), not a connection error (exit 3)
    proc, payload = penctl("session", "run", "--seconds", value, port="/dev/no-such-pen")
    assert proc.returncode == 2 and payload["error"]["code"] == "USAGE", proc.stderr


@pytest.mark.parametrize("value", ["0", "3601", "nan"])
def test_telemetry_seconds_out_of_range_before_the_port(pty_port, value):
    refused_unsent(pty_port, "telemetry", "--seconds", value, code="USAGE", words=["0 < N <= 3600"])


def test_bad_stop_timeout_and_port_with_serial(pty_port):
    refused_unsent(pty_port, "session", "stop", "--stop-timeout", "nan", code="USAGE", words=["0 < N <= 3600"])
    refused_unsent(pty_port, "--serial", "E661", "info", code="USAGE", words=["--port or --serial"])
    for option in ("--port=", "--serial="):
        proc, payload = penctl(option, "info")
        assert proc.returncode == 2 and payload["error"]["code"] == "USAGE", (option, proc.stderr)


# ---- penctl sim never replaces a file it did not create ----

def test_sim_link_and_control_never_replace_existing_files(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me\n")
    link = tmp_path / "pen-link"
    link.symlink_to(precious)
    for option, path in (("--link", precious), ("--link", link), ("--control", precious)):
        proc, payload = penctl("sim", "--clock", "fast", option, path, timeout=30)
        assert proc.returncode == 2 and payload["error"]["code"] == "FILE", (option, path, proc.stderr)
    assert precious.read_text() == "keep me\n" and link.is_symlink() and os.readlink(link) == str(precious)
