"""The clinical commands of `penctl` end to end (docs/design.md §4, docs/clinical.md): `key new|provision`,
`ceiling set`, `clock set`, `interval override`, `log --kind/--csv`, the clinical lines of `info` and
`min_interval_days` in `profile push`, each run as a subprocess (the installed entry point) against a
virtual pen on the fast clock, with their exit codes: 0 ok, 1 the pen refused, 2 usage or input file
(nothing sent: shown by a port that does not exist, which would be exit 3 if it were opened), 3 no pen."""

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from penctl import clinical
from penctl.client import Pen
from pensim.supervisor import VirtualPen

ENTRY = Path(sys.executable).with_name("penctl")
PENCTL = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "penctl.cli"]
NO_PORT = "/nonexistent/pen-port"    # opening it would be exit 3: exit 2 shows nothing was opened


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        self.json = json.loads(lines[0]) if len(lines) == 1 and lines[0].startswith("{") else None

    def __repr__(self):
        return "<penctl rc=%s stdout=%r stderr=%r>" % (self.rc, self.stdout[-1500:], self.stderr[-1500:])


def run(*args, port=None, json_out=True):
    cmd = list(PENCTL) + (["--port", port] if port else []) + (["--json"] if json_out else [])
    env = dict(os.environ)
    env.pop("PENCTL_PORT", None)
    return Result(subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=90, env=env))


def ok(result):
    assert result.rc == 0 and (result.json is None or result.json["ok"] is True), result
    return result.json


def failed(result, rc, code):
    assert result.rc == rc, result
    assert result.json["ok"] is False and result.json["error"]["code"] == code, result
    assert result.stderr.startswith("penctl: "), result
    return result.json["error"]


def info(vpen):
    return ok(run("info", port=vpen.port))


@pytest.fixture
def vpen():
    with VirtualPen(clock="fast") as pen:
        yield pen


def _key(tmp_path, name="k.penkey", serial=None):
    path = tmp_path / name
    ok(run("key", "new", "--key-file", path, *(["--pen-serial", serial] if serial else [])))
    return path


# ---- key new: a file on this computer, nothing sent ----

def test_key_new_writes_a_private_file_and_never_overwrites(tmp_path):
    path = tmp_path / "E6614C311B6F5A2C.penkey"
    result = ok(run("key", "new", "--key-file", path, "--pen-serial", "E6614C311B6F5A2C"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["format"] == "penctl-clinician-key" and body["version"] == 1
    assert len(body["key"]) == 64 and body["key_id"] == result["key_id"] and body["pen_serial"] == "E6614C311B6F5A2C"
    assert body["key"] not in json.dumps(result)                       # the key is never printed
    before = path.read_bytes()
    failed(run("key", "new", "--key-file", path), 2, "FILE")           # exists: never overwritten
    assert path.read_bytes() == before
    failed(run("key", "new", "--key-file", tmp_path / "k.json"), 2, "USAGE")        # not *.penkey
    failed(run("key", "new", "--key-file", tmp_path / "no" / "k.penkey"), 2, "FILE")  # missing folder
    os.symlink(tmp_path / "gone", tmp_path / "dangling.penkey")
    failed(run("key", "new", "--key-file", tmp_path / "dangling.penkey"), 2, "FILE")  # even a dangling link
    failed(run("key", "new", "--key-file", tmp_path / "s.penkey", "--pen-serial", "E66/14"), 2, "USAGE")
    assert not (tmp_path / "s.penkey").exists()


# ---- key provision, ceiling set, the clinical lines of info ----

def test_provision_and_ceiling_exit_codes(vpen, tmp_path):
    key = _key(tmp_path)
    wrong = _key(tmp_path, "wrong.penkey")
    fresh = info(vpen)
    assert fresh["depth_ceiling_mm"] == 0.5 and fresh["key_provisioned"] is False
    assert fresh["wall_clock_set"] is False and fresh["auth_locked_s"] == 0 and "key" not in fresh
    # checked before the port is opened: exit 2, not 3
    for depth in ("0.33", "3.0", "0.2", "abc", "nan"):
        failed(run("ceiling", "set", depth, "--key-file", key, port=NO_PORT), 2, "DEPTH")
    failed(run("ceiling", "set", "1.0", "--key-file", tmp_path / "none.penkey", port=NO_PORT), 2, "FILE")
    os.chmod(wrong, 0o644)
    failed(run("ceiling", "set", "1.0", "--key-file", wrong, port=NO_PORT), 2, "FILE")     # readable by others
    os.chmod(wrong, 0o600)
    failed(run("key", "provision", "--key-file", tmp_path / "none.penkey", port=NO_PORT), 2, "FILE")
    assert run("ceiling", "set", "1.0", "--key-file", key, port=NO_PORT).rc == 3           # valid: no pen there
    # no key on the pen yet
    failed(run("ceiling", "set", "1.0", "--key-file", key, port=vpen.port), 1, "NO_KEY")
    assert ok(run("key", "provision", "--key-file", key, port=vpen.port))["replaced"] is False
    assert info(vpen)["key_provisioned"] is True
    # a provisioned pen: replacing needs the current key (nothing sent without it)
    failed(run("key", "provision", "--key-file", wrong, port=vpen.port), 2, "KEY_PRESENT")
    error = failed(run("ceiling", "set", "1.0", "--key-file", wrong, port=vpen.port), 1, "AUTH_FAILED")
    assert "wrong answer" in error["message"]
    assert ok(run("ceiling", "set", "1.0", "--key-file", key, port=vpen.port)) == {"ok": True, "depth_ceiling_mm": 1.0}
    assert info(vpen)["depth_ceiling_mm"] == 1.0
    human = run("info", port=vpen.port, json_out=False)
    assert human.rc == 0 and "1 mm" in human.stdout and "clinician key provisioned" in human.stdout
    # rotate to a new key with the current one; the old key is refused afterwards
    assert ok(run("key", "provision", "--key-file", wrong, "--current-key-file", key, port=vpen.port))["replaced"]
    failed(run("ceiling", "set", "0.5", "--key-file", key, port=vpen.port), 1, "AUTH_FAILED")
    assert ok(run("ceiling", "set", "0.5", "--key-file", wrong, port=vpen.port))["depth_ceiling_mm"] == 0.5
    # a key bound to another pen is refused before anything privileged is sent
    bound = _key(tmp_path, "bound.penkey", serial="0000000000000001")
    failed(run("ceiling", "set", "1.0", "--key-file", bound, port=vpen.port), 2, "KEY_PEN")


# ---- clock set ----

def test_clock_set_back_needs_the_key(vpen, tmp_path):
    key = _key(tmp_path)
    failed(run("clock", "set", "--key-file", tmp_path / "none.penkey", port=NO_PORT), 2, "FILE")
    result = ok(run("clock", "set", port=vpen.port))
    assert result["auth"] is False and abs(result["utc_s"] - time.time()) < 60
    pen_info = info(vpen)
    assert pen_info["wall_clock_set"] is True and pen_info["utc"].endswith("Z")
    # the pen once saw a time two hours ahead: this computer's time is then more than an hour back
    with Pen(vpen.port) as pen:
        clinical.set_clock(pen, utc_s=int(time.time()) + 2 * 3600)
    error = failed(run("clock", "set", port=vpen.port), 1, "AUTH_REQUIRED")
    assert "--key-file" in error["message"]
    failed(run("clock", "set", "--key-file", key, port=vpen.port), 1, "NO_KEY")
    ok(run("key", "provision", "--key-file", key, port=vpen.port))
    assert ok(run("clock", "set", "--key-file", key, port=vpen.port))["auth"] is True
    entries = ok(run("log", "--kind", "clock_set", port=vpen.port))["audit"]["entries"]
    assert [e["auth"] for e in entries] == [False, False, True]


# ---- profiles with intervals, interval override ----

def test_interval_profiles_and_override(vpen, tmp_path):
    key = _key(tmp_path)
    good = tmp_path / "iv.toml"
    good.write_text('[[profile]]\nname = "scalp-iv"\ndepth_mm = 0.5\nstroke_hz = 100\nmax_session_s = 600\n'
                    'min_interval_days = 14\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[profile]]\nname = "scalp-bad"\ndepth_mm = 0.5\nstroke_hz = 100\nmax_session_s = 600\n'
                   'min_interval_days = 91\n')
    error = failed(run("profile", "push", bad, port=NO_PORT), 2, "PROFILE_FILE")
    assert "min_interval_days" in error["message"]
    ok(run("profile", "push", good, port=vpen.port))
    listed = {p["name"]: p for p in ok(run("profile", "list", port=vpen.port))["profiles"]}
    assert listed["scalp-iv"]["min_interval_days"] == 14
    human = run("profile", "list", port=vpen.port, json_out=False)
    assert "14 d" in human.stdout
    failed(run("interval", "override", "--profile", "Bad Name", "--key-file", key, port=NO_PORT), 2, "NAME_INVALID")
    failed(run("interval", "override", "--profile", "scalp-iv", "--key-file", tmp_path / "x.penkey",
               port=NO_PORT), 2, "FILE")
    failed(run("interval", "override", "--profile", "scalp-iv", "--key-file", key, port=vpen.port), 1, "NO_KEY")
    ok(run("key", "provision", "--key-file", key, port=vpen.port))
    failed(run("interval", "override", "--profile", "nobody", "--key-file", key, port=vpen.port), 1,
           "UNKNOWN_PROFILE")
    assert ok(run("interval", "override", "--profile", "scalp-iv", "--key-file", key, port=vpen.port)) == {
        "ok": True, "profile": "scalp-iv", "override": True}
    assert [e["profile"] for e in ok(run("log", "--kind", "interval_override", port=vpen.port))["audit"]["entries"]] \
        == ["scalp-iv"]


# ---- log --kind / --csv ----

def test_log_kind_and_csv(vpen, tmp_path):
    key = _key(tmp_path)
    wrong = _key(tmp_path, "wrong.penkey")
    ok(run("key", "provision", "--key-file", key, port=vpen.port))
    ok(run("ceiling", "set", "1.5", "--key-file", key, port=vpen.port))
    failed(run("ceiling", "set", "2.5", "--key-file", wrong, port=vpen.port), 1, "AUTH_FAILED")
    # checked before the port is opened
    failed(run("log", "--kind", "nonsense", port=NO_PORT), 2, "USAGE")
    failed(run("log", "--csv", tmp_path / "log.txt", port=NO_PORT), 2, "FILE")
    failed(run("log", "--csv", tmp_path, port=NO_PORT), 2, "FILE")
    failed(run("log", "--csv", tmp_path / "no" / "log.csv", port=NO_PORT), 2, "FILE")
    everything = ok(run("log", port=vpen.port))
    assert [e["kind"] for e in everything["audit"]["entries"]] == ["key_provision", "ceiling_set", "auth_failed"]
    assert everything["audit"]["oldest"] == 0 and everything["audit"]["lost"] == 0
    out = tmp_path / "audit.csv"
    result = ok(run("log", "--kind", "auth_failed", "--csv", out, port=vpen.port))
    assert result["csv"] == str(out) and result["entries"] == []
    assert [e["reason"] for e in result["audit"]["entries"]] == ["wrong answer"]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["log"], r["kind"], r["op"], r["reason"]) for r in rows] == [
        ("audit", "auth_failed", "ceiling_set", "wrong answer")]
    assert rows[0]["utc"] == "unset" and float(rows[0]["t_s"]) > 0
    human = run("log", "--kind", "ceiling_set", port=vpen.port, json_out=False)
    assert human.rc == 0 and "ceiling_set" in human.stdout and "to_mm 1.5" in human.stdout
