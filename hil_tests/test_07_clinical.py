"""Clinical safety on the pen (S16-S20, docs/clinical.md): every refusal code, on the pen under test
(the virtual pen at target speed by default), through penctl's library and its CLI.

The suite's baseline is a pen whose clinician allowed the whole depth range (conftest's `pen`,
helpers.full_range); these tests lower the ceiling and put it back. A virtual pen gets a clinician
key made for the run; a real pen's key comes from $PEN_HIL_KEY_FILE. The tests for a factory-fresh
pen (0.5 mm ceiling, no key: NO_KEY) start a second, fresh virtual pen of their own.
"""
import calendar
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_tests.conftest import need_rig
from hil_tests.helpers import (
    clinician_key, fresh_cartridge, make_ready, power_cycle, recover, refusal, use_profile, wait_motor,
    wait_pen_seconds, wait_state,
)
from penctl import clinical
from penctl.errors import UsageError

_rng = random.Random()
ENTRY = Path(sys.executable).with_name("penctl")
PENCTL = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "penctl.cli"]
DAY_S = 86400


def _key(pen):
    key = clinician_key(pen)
    if key is None:
        pytest.skip("needs the pen's clinician key: set $PEN_HIL_KEY_FILE")
    return key


def _other_key(tmp_path):
    """A key this pen does not hold (a wrong key file)."""
    return clinical.new_key_file(tmp_path / "other.penkey")


def _penctl(target, *args):
    proc = subprocess.run(PENCTL + ["--port", target.port, "--json"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc
    return proc.returncode, json.loads(lines[0]), proc.stderr


def _session_once(pen, rig, name):
    """A session with profile `name` that drives the motor, stopped; returns the cartridge."""
    make_ready(pen, rig)
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge)
    pen.session_start(name)
    wait_motor(rig, True)
    pen.session_stop()
    wait_state(pen, ("LOCKED", "FAULT"))
    return cartridge


def _push(pen, name, depth_mm=0.5, days=0):
    pen.profile_push([{"name": name, "depth_mm": depth_mm, "stroke_hz": 100, "max_session_s": 600,
                       "min_interval_days": days}])


def _utc_in(message):
    """The 'YYYY-MM-DD HH:MM:SS UTC' time a refusal names, as seconds since 1970."""
    found = re.findall(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) UTC", message)
    assert found, message
    return calendar.timegm(tuple(int(part) for part in found[-1]) + (0, 0, 0))


# ---- S16: the depth ceiling ----

def test_s16_depth_ceiling_refuses_push_use_and_start(pen, rig, recorder):
    need_rig(rig.measure)
    key = _key(pen)
    recover(pen, rig)
    deep = use_profile(pen, depth_mm=1.0)            # stored and active while the ceiling allows it
    make_ready(pen, rig)
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge)
    try:
        assert clinical.set_ceiling(pen, 0.5, key) == {"depth_ceiling_mm": 0.5}
        assert pen.info()["depth_ceiling_mm"] == 0.5
        # start: the active profile is now deeper than the ceiling
        exc = refusal(pen.session_start)
        assert exc.code == "DEPTH_CEILING" and "0.5 mm" in exc.message, exc.message
        measured = rig.measure()
        assert not measured["motor_on"] and measured["cartridge_used"] is False   # nothing written, not marked
        assert pen.state() == "READY" and pen.info()["unlocked"] is True
        # use
        exc = refusal(pen.profile_use, deep)
        assert exc.code == "DEPTH_CEILING" and "0.5 mm" in exc.message
        # push: penctl refuses before sending, and the pen refuses on its own
        exc = refusal(pen.profile_push, [{"name": "hil-deeper", "depth_mm": 0.75, "stroke_hz": 100,
                                          "max_session_s": 600}])
        assert exc.code == "DEPTH_CEILING"
        exc = refusal(pen.request, "profile_put", profile={"name": "hil-deeper", "depth_um": 750, "stroke_hz": 100,
                                                            "max_session_s": 600})
        assert exc.code == "DEPTH_CEILING" and exc.field == "depth_mm" and "0.5 mm" in exc.message
        assert "hil-deeper" not in {p["name"] for p in pen.profile_list()["profiles"]}
        # at the ceiling is allowed
        _push(pen, "hil-at-ceiling", 0.5)
    finally:
        clinical.set_ceiling(pen, 2.5, key)
    recorder.check("session start above the ceiling", int(measured["motor_on"]), "motor on", 0, 0)
    audit = clinical.read_audit(pen, kind="ceiling_set")["entries"]
    assert [(e["from_mm"], e["to_mm"]) for e in audit[-2:]] == [(2.5, 0.5), (0.5, 2.5)]


# ---- S17: the clinician key ----

def test_s17_auth_required_wrong_replayed_and_expired_answers(pen, rig, tmp_path):
    key = _key(pen)
    recover(pen, rig)
    serial = pen.info()["serial"]
    # AUTH_REQUIRED: no answer sent
    assert refusal(pen.request, "ceiling_set", depth_um=2500).code == "AUTH_REQUIRED"
    now = int(time.time())
    clinical.set_clock(pen, utc_s=now)
    exc = refusal(clinical.set_clock, pen, utc_s=now - 2 * 3600)     # back by more than an hour
    assert exc.code == "AUTH_REQUIRED"
    clinical.set_clock(pen, utc_s=now - 1800)                          # half an hour back needs no key
    clinical.set_clock(pen, utc_s=now)
    # AUTH_FAILED: a wrong key
    exc = refusal(clinical.set_ceiling, pen, 2.5, _other_key(tmp_path))
    assert exc.code == "AUTH_FAILED" and "wrong answer" in exc.message
    # AUTH_FAILED: a right answer replayed
    nonce = clinical.nonce(pen)
    auth = {"nonce": nonce, "mac": clinical.compute_mac(key.key, nonce, serial, "ceiling_set", {"depth_um": 2500})}
    assert pen.request("ceiling_set", auth=auth, depth_um=2500)["depth_ceiling_um"] == 2500
    exc = refusal(pen.request, "ceiling_set", auth=auth, depth_um=2500)
    assert exc.code == "AUTH_FAILED" and "nonce" in exc.message
    # AUTH_FAILED: a right answer for other arguments (mismatched)
    nonce = clinical.nonce(pen)
    auth = {"nonce": nonce, "mac": clinical.compute_mac(key.key, nonce, serial, "ceiling_set", {"depth_um": 2000})}
    assert refusal(pen.request, "ceiling_set", auth=auth, depth_um=2500).code == "AUTH_FAILED"
    # a nonce answers within 30 s of pen time, not after
    nonce = clinical.nonce(pen)
    wait_pen_seconds(pen, 25)
    auth = {"nonce": nonce, "mac": clinical.compute_mac(key.key, nonce, serial, "ceiling_set", {"depth_um": 2500})}
    assert pen.request("ceiling_set", auth=auth, depth_um=2500)["depth_ceiling_um"] == 2500
    nonce = clinical.nonce(pen)
    wait_pen_seconds(pen, 31)
    auth = {"nonce": nonce, "mac": clinical.compute_mac(key.key, nonce, serial, "ceiling_set", {"depth_um": 2500})}
    exc = refusal(pen.request, "ceiling_set", auth=auth, depth_um=2500)
    assert exc.code == "AUTH_FAILED" and "nonce" in exc.message
    clinical.set_ceiling(pen, 2.5, key)               # a right answer resets the failure count
    failed = clinical.read_audit(pen, kind="auth_failed")["entries"][-4:]
    assert [e["op"] for e in failed] == ["ceiling_set"] * 4
    assert failed[0]["reason"] == "wrong answer" and failed[2]["reason"] == "wrong answer"


def test_s17_lock_after_5_failures_survives_a_power_cut(target, pen, rig, tmp_path, recorder):
    need_rig(rig.measure)
    key = _key(pen)
    recover(pen, rig)
    other = _other_key(tmp_path)
    for attempt in range(1, 5):
        exc = refusal(clinical.set_ceiling, pen, 2.5, other)
        assert exc.code == "AUTH_FAILED" and "%d more failures" % (5 - attempt) in exc.message, exc.message
    exc = refusal(clinical.set_ceiling, pen, 2.5, other)
    assert exc.code == "AUTH_FAILED" and "locked for 60 s" in exc.message, exc.message
    exc = refusal(clinical.set_ceiling, pen, 2.5, key)              # even the right key, while locked
    assert exc.code == "AUTH_LOCKED"
    assert 0 < pen.info()["auth_locked_s"] <= 60
    pen = power_cycle(target, rig, pen)
    try:
        info = pen.info()
        locked_s, up_s = info["auth_locked_s"], info["counters"]["uptime_s"]
        # The lock starts again in full when the pen boots: at least 60 s less the pen time since
        # power-on (a fast clock behind a lab's RFC 2217 link runs some seconds of it before
        # `info` gets there), at most 60 s.
        assert up_s < 55, "the pen ran %.1f s after power-on before info answered" % up_s
        assert 60 - up_s - 1 <= locked_s <= 60, (locked_s, up_s)
        assert refusal(clinical.set_ceiling, pen, 2.5, key).code == "AUTH_LOCKED"
        assert refusal(pen.request, "auth_nonce").code == "AUTH_LOCKED"
        wait_pen_seconds(pen, locked_s + 1)
        assert pen.info()["auth_locked_s"] == 0
        assert clinical.set_ceiling(pen, 2.5, key) == {"depth_ceiling_mm": 2.5}
        lock = clinical.read_audit(pen, kind="auth_lock")["entries"][-1]
        assert lock["seconds"] == 60 and lock["level"] == 1
        recorder.check("lock remaining after a power cut", locked_s, "s", int(60 - up_s - 1), 60)
    finally:
        pen.close()


# ---- S18: intervals and the wall clock ----

def test_s18_interval_range_refused(pen):
    exc = refusal(pen.request, "profile_put", profile={"name": "hil-range", "depth_um": 500, "stroke_hz": 100,
                                                        "max_session_s": 600, "min_interval_days": 91})
    assert exc.code == "INTERVAL_RANGE" and exc.field == "min_interval_days"
    with pytest.raises(UsageError):                                 # penctl refuses it before sending
        _push(pen, "hil-range", days=-1)
    assert "hil-range" not in {p["name"] for p in pen.profile_list()["profiles"]}
    _push(pen, "hil-range", days=90)


def test_s18_clock_unset_after_a_power_cut(target, pen, rig):
    need_rig(rig.measure)
    recover(pen, rig)
    name = "hil-iv-%06d" % _rng.randrange(10 ** 6)
    _push(pen, name, days=14)
    clinical.set_clock(pen)
    assert pen.info()["wall_clock_set"] is True
    pen = power_cycle(target, rig, pen)
    try:
        assert pen.info()["wall_clock_set"] is False
        make_ready(pen, rig)
        rig.cartridge(fresh_cartridge())
        exc = refusal(pen.session_start, name)
        assert exc.code == "CLOCK_UNSET" and "clock set" in exc.message
        assert rig.measure()["cartridge_used"] is False and pen.state() == "READY"
        clinical.set_clock(pen)
        pen.session_start(name)                                    # with the clock set it runs
        wait_motor(rig, True)
        pen.session_stop()
        wait_state(pen, ("LOCKED", "FAULT"))
    finally:
        pen.close()


def test_s18_too_soon_and_one_override(pen, rig, tmp_path):
    need_rig(rig.measure)
    key = _key(pen)
    recover(pen, rig)
    name = "hil-iv-%06d" % _rng.randrange(10 ** 6)
    _push(pen, name, days=14)
    set_utc = int(time.time())
    clinical.set_clock(pen, utc_s=set_utc)
    _session_once(pen, rig, name)
    before_s = calendar.timegm(time.strptime(pen.info()["utc"], "%Y-%m-%dT%H:%M:%SZ"))
    make_ready(pen, rig)
    rig.cartridge(fresh_cartridge())
    exc = refusal(pen.session_start, name)
    assert exc.code == "TOO_SOON"
    earliest = _utc_in(exc.message)                                # the message gives the earliest date
    assert set_utc + 14 * DAY_S <= earliest <= before_s + 14 * DAY_S, exc.message
    assert rig.measure()["cartridge_used"] is False and pen.state() == "READY"
    # the override needs the key, allows one early session, and both are logged
    assert refusal(clinical.interval_override, pen, name, _other_key(tmp_path)).code == "AUTH_FAILED"
    assert clinical.interval_override(pen, name, key) == {"profile": name, "override": True}
    pen.session_start(name)
    wait_motor(rig, True)
    pen.session_stop()
    wait_state(pen, ("LOCKED", "FAULT"))
    make_ready(pen, rig)
    rig.cartridge(fresh_cartridge())
    assert refusal(pen.session_start, name).code == "TOO_SOON"     # one session only
    audit = clinical.read_audit(pen)["entries"]
    assert [e["profile"] for e in audit if e["kind"] == "interval_override"][-1] == name
    used = [e for e in audit if e["kind"] == "interval_override_used"][-1]
    assert used["profile"] == name and used["early"] is True


# ---- S19: single use, marked on the cartridge ----

def test_s19_cartridge_marked_elsewhere_refused(pen, rig):
    need_rig(rig.measure)
    use_profile(pen, depth_mm=0.5)
    make_ready(pen, rig)
    before = pen.info()["counters"]["used_cartridges"]
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge, used=True)                            # used on another pen
    exc = refusal(pen.session_start)
    assert exc.code == "CARTRIDGE_USED" and cartridge in exc.message and "own memory" in exc.message
    assert pen.state() == "READY" and not rig.measure()["motor_on"]
    assert pen.info()["counters"]["used_cartridges"] == before     # the pen's list did not decide it


def test_s19_mark_written_before_the_motor_and_kept_across_a_power_cut(target, pen, rig):
    need_rig(rig.measure)
    use_profile(pen, depth_mm=0.5)
    make_ready(pen, rig)
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge)
    assert rig.measure()["cartridge_used"] is False
    pen.session_start()
    measured = rig.measure()
    assert measured["cartridge"] == cartridge and measured["cartridge_used"] is True   # marked at the start
    wait_motor(rig, True)
    pen.session_stop()
    wait_state(pen, ("LOCKED", "FAULT"))
    pen = power_cycle(target, rig, pen)
    try:
        assert rig.measure()["cartridge_used"] is True              # the cartridge keeps its mark
        make_ready(pen, rig)
        exc = refusal(pen.session_start)
        assert exc.code == "CARTRIDGE_USED" and "own memory" in exc.message, exc.message
        assert pen.state() == "READY"
    finally:
        pen.close()


def test_s19_cartridge_memory_failure_refused_with_nothing_written(pen, rig):
    need_rig(rig.measure)
    use_profile(pen, depth_mm=0.5)
    make_ready(pen, rig)
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge)
    log_before = pen.info()["counters"]["log_entries"]
    rig.inject("cartridge_memory_fail")
    try:
        exc = refusal(pen.session_start)
        assert exc.code == "CARTRIDGE_MEMORY" and cartridge in exc.message
        info = pen.info()
        assert info["state"] == "READY" and info["unlocked"] is True   # no needle moved: the unlock stays
        assert info["counters"]["log_entries"] == log_before
        assert not rig.measure()["motor_on"]
    finally:
        rig.clear_injections()
    pen.session_start()                                            # the memory answers again
    assert rig.measure()["cartridge_used"] is True
    pen.session_stop()
    wait_state(pen, ("LOCKED", "FAULT"))


# ---- S20: the audit trail through penctl log ----

def test_s20_log_kind_and_csv(target, pen, tmp_path):
    key = _key(pen)
    clinical.set_ceiling(pen, 2.0, key)
    clinical.set_ceiling(pen, 2.5, key)
    pen.close()
    out = tmp_path / "audit.csv"
    rc, result, _ = _penctl(target, "log", "--kind", "ceiling_set", "--csv", out)
    assert rc == 0, result
    audit = result["audit"]["entries"]
    assert audit and {e["kind"] for e in audit} == {"ceiling_set"}
    assert [(e["from_mm"], e["to_mm"]) for e in audit[-2:]] == [(2.5, 2.0), (2.0, 2.5)]
    assert result["entries"] == []                                 # no session-log entry is of that kind
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(audit)
    assert {r["kind"] for r in rows} == {"ceiling_set"} and {r["log"] for r in rows} == {"audit"}
    assert rows[-1]["to_mm"] == "2.5" and rows[-1]["utc"]
    rc, result, _ = _penctl(target, "log", "--kind", "session")
    assert rc == 0 and result["entries"] and {e["kind"] for e in result["entries"]} == {"session"}
    assert result["audit"]["entries"] == []
    rc, result, stderr = _penctl(target, "log", "--kind", "nonsense")
    assert rc == 2 and result["error"]["code"] == "USAGE" and "session" in stderr


# ---- a factory-fresh pen: 0.5 mm, no key (NO_KEY) ----

@pytest.fixture(scope="module")
def factory_pen(target, tmp_path_factory):
    if target.kind != "virtual":
        pytest.skip("needs a factory-fresh pen: runs on a second virtual pen")
    from pensim.supervisor import VirtualPen

    base = tmp_path_factory.mktemp("factory")
    with VirtualPen(state_dir=base / "flash", clock=target.vpen.clock) as vpen:
        yield vpen


def test_s16_s17_factory_fresh_pen_no_key(factory_pen, tmp_path):
    from penctl.client import Pen

    with Pen(factory_pen.port, timeout=10) as pen:
        info = pen.info()
        assert info["depth_ceiling_mm"] == 0.5 and info["key_provisioned"] is False
        exc = refusal(pen.profile_push, [{"name": "deep", "depth_mm": 0.55, "stroke_hz": 100, "max_session_s": 600}])
        assert exc.code == "DEPTH_CEILING"
        assert refusal(pen.request, "auth_nonce").code == "NO_KEY"
    key_file = tmp_path / ("%s.penkey" % info["serial"])
    proc = subprocess.run(PENCTL + ["key", "new", "--key-file", key_file, "--pen-serial", info["serial"]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    args = ["--port", factory_pen.port, "--json"]
    proc = subprocess.run(PENCTL + args + ["ceiling", "set", "1.0", "--key-file", key_file],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "NO_KEY", proc
    proc = subprocess.run(PENCTL + args + ["key", "provision", "--key-file", key_file],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc
    with Pen(factory_pen.port, timeout=10) as pen:
        key = clinical.load_key_file(key_file)
        # a pen that has a key never takes one in clear
        exc = refusal(pen.request, "key_provision", key=os.urandom(32).hex(), key_id=os.urandom(8).hex())
        assert exc.code == "AUTH_REQUIRED"
        assert clinical.set_ceiling(pen, 1.0, key) == {"depth_ceiling_mm": 1.0}
        assert pen.info()["depth_ceiling_mm"] == 1.0
        kinds = [e["kind"] for e in clinical.read_audit(pen)["entries"]]
        assert kinds == ["key_provision", "ceiling_set"]
