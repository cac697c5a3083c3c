"""The labgrid lab end to end (docs/lab.md): a real coordinator, exporter, ser2net and virtual pens
on loopback, real HIL runs through RFC 2217, and what labgrid users trip over.

One lab of two pens serves the module; every test leaves both places free, and the module checks
at the end that stopping the lab leaves none of its processes running.
"""
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_PYTHON = ROOT / ".venv-lab" / "bin" / "python"
LABCTL = ROOT / "lab" / "labctl.py"
CLIENT = ROOT / "lab" / "client.py"
PENCTL = Path(sys.executable).parent / "penctl"
PENS = 2
CLOCK = "fast"
HIL_TIMEOUT_S = 150        # one HIL subprocess, generous: a hang shows as a failure, not a stuck run


def _run(cmd, timeout=60, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


class Lab:
    def __init__(self, state):
        self.state = state
        self.coordinator = json.loads((state / "lab.json").read_text())["coordinator"]

    def places(self, tags=""):
        out = _run([str(LAB_PYTHON), str(CLIENT), "-x", self.coordinator, "places", "--tags", tags])
        assert out.returncode == 0, out.stdout + out.stderr
        return {p["name"]: p for p in json.loads(out.stdout)["places"]}

    def client(self, *args, timeout=60):
        out = _run([str(LAB_PYTHON), str(CLIENT), "-x", self.coordinator] + list(args), timeout=timeout)
        return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr

    def ctl(self, *args):
        out = _run([str(LAB_PYTHON), str(LABCTL)] + list(args) + ["--state", str(self.state)], timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def wait_places(self, predicate, what, timeout_s=30):
        deadline = time.monotonic() + timeout_s
        while True:
            places = self.places()
            if predicate(places):
                return places
            assert time.monotonic() < deadline, "%s not reached within %d s: %s" % (what, timeout_s, places)
            time.sleep(0.2)

    def all_free_and_online(self):
        return self.wait_places(lambda ps: all(not p["acquired"] and p["tags"].get("online") == "yes"
                                               for p in ps.values()), "every place free and online")

    def hil(self, report, *args, timeout=HIL_TIMEOUT_S, tags="board=sim,clock=%s" % CLOCK):
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--lab", self.coordinator,
               "--lab-python", str(LAB_PYTHON), "--lab-tags", tags, "--hil-report", str(report)] + list(args)
        return _run(cmd, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.access(LAB_PYTHON, os.X_OK):
        pytest.fail("the lab's venv is missing: run `make lab-setup` (make test does)")
    state = tmp_path_factory.mktemp("lab")
    start = _run([str(LAB_PYTHON), str(LABCTL), "start", "--state", str(state), "--pens", str(PENS),
                  "--clock", CLOCK, "--penctl", str(PENCTL)], timeout=120)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield Lab(state)
    finally:
        stop = _run([str(LAB_PYTHON), str(LABCTL), "stop", "--state", str(state)], timeout=120)
        left = _run([str(LAB_PYTHON), str(LABCTL), "processes", "--state", str(state)])
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert left.stdout.strip() == "", "lab processes left running:\n" + left.stdout


def _junit(report):
    cases = {}
    for case in ET.parse(report / "junit.xml").iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        failure = case.find("failure")
        cases[case.get("name")] = (failure.get("message") if failure is not None else None, props)
    return cases


def test_hil_test_end_to_end_through_labgrid(lab, tmp_path):
    # Reservation by tags, acquisition, flash and a real HIL test through RFC 2217, release.
    lab.all_free_and_online()
    report = tmp_path / "report"
    run = lab.hil(report, "hil_tests/test_01_basics.py::test_handshake_and_protocol_version",
                  "hil_tests/test_01_basics.py::test_flash_wrote_the_firmware")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
    cases = _junit(report)
    places = lab.places()
    for name in ("test_handshake_and_protocol_version", "test_flash_wrote_the_firmware"):
        failure, props = cases[name]
        assert failure is None
        assert props["place"] in places                              # pen-1 or pen-2
        assert len(props["pen_serial"]) == 16                         # the pen's own serial (hex)
        assert props["pen_port"].startswith("rfc2217://127.0.0.1:")   # through the exporter's ser2net
    md = (report / "report.md").read_text()
    assert "| hil_tests/test_01_basics.py::test_handshake_and_protocol_version | passed | %s | %s |" % (
        props["place"], props["pen_serial"]) in md
    # Released in the `finally`, and the pen comes back blank for the next holder.
    lab.all_free_and_online()


def test_killed_run_leaves_no_stale_lock(lab, tmp_path):
    lab.all_free_and_online()
    victim = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lab", lab.coordinator, "--lab-python",
         str(LAB_PYTHON), "--lab-tags", "board=sim,clock=%s,name=pen-1" % CLOCK,
         "hil_tests/test_06_telemetry.py::test_telemetry_60s_at_50hz_no_gaps"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lab.wait_places(lambda ps: "holder=" in ps["pen-1"]["comment"] and str(victim.pid) in ps["pen-1"]["comment"],
                        "pen-1 acquired by the first run")
    finally:
        victim.send_signal(signal.SIGKILL)       # no finally, no release: a stale lock
        victim.wait()
    held = lab.places()["pen-1"]
    assert held["acquired"], "the killed run's place should still be acquired (the stale lock under test)"

    report = tmp_path / "report"
    run = lab.hil(report, "hil_tests/test_01_basics.py::test_handshake_and_protocol_version",
                  tags="board=sim,clock=%s,name=pen-1" % CLOCK)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # The next run reclaimed the place and said from whom.
    assert "reclaimed pen-1: it was held for HIL run" in run.stdout
    assert "pid %d" % victim.pid in run.stdout and "which no longer runs" in run.stdout
    assert "reclaimed pen-1" in (report / "report.md").read_text()
    lab.all_free_and_online()


def test_place_held_by_someone_else_is_named_with_its_holder(lab, tmp_path):
    lab.all_free_and_online()
    env = dict(os.environ, LG_COORDINATOR=lab.coordinator, LG_USERNAME="alice")
    labgrid_client = str(LAB_PYTHON.parent / "labgrid-client")
    grab = _run([labgrid_client, "-p", "pen-2", "acquire"], env=env)
    assert grab.returncode == 0, grab.stdout + grab.stderr
    try:
        started = time.monotonic()
        run = lab.hil(tmp_path / "report", "hil_tests/test_01_basics.py::test_handshake_and_protocol_version",
                      "--lab-timeout", "3", tags="board=sim,clock=%s,name=pen-2" % CLOCK)
        assert time.monotonic() - started < 60
        assert run.returncode != 0
        assert "no place with tags board=sim clock=%s name=pen-2 online=yes became free within 3 s" % CLOCK \
            in run.stdout
        assert "pen-2: acquired by %s/alice" % os.uname().nodename in run.stdout
        assert "not by the HIL harness" in run.stdout and "labgrid-client -p pen-2 release" in run.stdout
        assert lab.places()["pen-2"]["acquired"].endswith("/alice")      # nobody else's place was touched
    finally:
        _run([labgrid_client, "-p", "pen-2", "release"], env=env)
    lab.all_free_and_online()


def test_reservation_is_never_handed_an_offline_pen(lab, tmp_path):
    lab.all_free_and_online()
    lab.ctl("unplug", "pen-2")
    try:
        lab.wait_places(lambda ps: ps["pen-2"]["tags"].get("online") == "no", "pen-2 tagged offline")
        me = os.getpid()
        for attempt in range(3):
            rc, claim, _ = lab.client("claim", "--tags", "board=sim,clock=%s" % CLOCK, "--holder", str(me),
                                      "--run", "offline%d" % attempt, "--worker", "t", "--timeout", "20")
            assert rc == 0, claim
            assert claim["place"] == "pen-1", "a reservation was handed %s, whose pen is unplugged" % claim["place"]
            rc, released, _ = lab.client("release", "--place", "pen-1", "--token", claim["token"],
                                         "--run", "offline%d" % attempt)
            assert rc == 0 and released["released"], released
            lab.wait_places(lambda ps: not ps["pen-1"]["acquired"] and ps["pen-1"]["tags"].get("online") == "yes",
                            "pen-1 free and online again")
        rc, claim, _ = lab.client("claim", "--tags", "board=sim,clock=%s,name=pen-2" % CLOCK, "--holder", str(me),
                                  "--run", "offline", "--worker", "t", "--timeout", "3")
        assert rc == 1
        assert "pen-2: offline (resources pen, rig unavailable)" in claim["error"]
    finally:
        lab.ctl("plug", "pen-2")
    lab.all_free_and_online()


def test_offline_pen_with_a_stale_online_tag_is_not_acquired(lab):
    # The second barrier: a place tagged online=yes whose resources are not available (the moment
    # between a pen going away and the lab's tag) is given back, never acquired.
    lab.all_free_and_online()
    labgrid_client = str(LAB_PYTHON.parent / "labgrid-client")
    env = dict(os.environ, LG_COORDINATOR=lab.coordinator)
    for args in (["-p", "ghost", "create"], ["-p", "ghost", "add-match", "lab-sim/ghost/*"],
                 ["-p", "ghost", "set-tags", "board=ghost", "online=yes"]):
        out = _run([labgrid_client] + args, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
    try:
        rc, claim, err = lab.client("claim", "--tags", "board=ghost", "--holder", str(os.getpid()), "--run", "ghost",
                                    "--worker", "t", "--timeout", "4")
        assert rc == 1, claim
        assert "ghost was allocated but its pen is offline (no resource matches the place" in err
        assert not lab.places("board=ghost")["ghost"]["acquired"]
    finally:
        _run([labgrid_client, "-p", "ghost", "delete"], env=env)


def test_pen_that_vanishes_mid_test_fails_that_test_clearly(lab, tmp_path):
    lab.all_free_and_online()
    report = tmp_path / "report"
    cmd = [sys.executable, "-u", "-m", "pytest", "-p", "no:cacheprovider", "-v", "--lab", lab.coordinator,
           "--lab-python", str(LAB_PYTHON), "--lab-tags", "board=sim,clock=%s,name=pen-1" % CLOCK,
           "--hil-report", str(report),
           "hil_tests/test_02_lockout.py::test_s8_session_stops_at_max_session_s",
           "hil_tests/test_01_basics.py::test_handshake_and_protocol_version"]
    started = time.monotonic()
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The test sterilises (60 s of pen time), then runs a 10 s session: once the harness's
        # traffic log shows the sterilisation request, the pen vanishes and comes back elsewhere.
        traffic = report / "pen-pen-1.log"
        deadline = time.monotonic() + 60
        while not (traffic.exists() and '"op": "sterilise_start"' in traffic.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
            time.sleep(0.02)
        replug = lab.ctl("replug", "pen-1", "--down", "1")
        text = run.communicate(timeout=HIL_TIMEOUT_S)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert time.monotonic() - started < HIL_TIMEOUT_S
    assert "re-enumerated" in replug
    cases = _junit(report)
    failure, props = cases["test_s8_session_stops_at_max_session_s"]
    assert failure is not None and failure.startswith("the pen of place pen-1 (serial %s) disappeared during this "
                                                      "test" % props["pen_serial"]), failure
    assert "the exporter now serves it on rfc2217://127.0.0.1:" in failure
    # The next test runs on the pen's new port.
    failure, after = cases["test_handshake_and_protocol_version"]
    assert failure is None, text[-3000:]
    assert after["pen_port"] != props["pen_port"] and after["pen_serial"] == props["pen_serial"]
    assert "1 failed, 1 passed" in text
    lab.all_free_and_online()


def test_watch_keeps_the_online_tag_of_a_rack_place(lab):
    # lab/watch.py on its own, as a rack of real pens runs it beside its coordinator.
    labgrid_client = str(LAB_PYTHON.parent / "labgrid-client")
    env = dict(os.environ, LG_COORDINATOR=lab.coordinator)
    for args in (["-p", "rack-1", "create"], ["-p", "rack-1", "set-tags", "board=rack", "online=yes"]):
        out = _run([labgrid_client] + args, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
    watch = subprocess.Popen([str(LAB_PYTHON), str(ROOT / "lab" / "watch.py"), "-x", lab.coordinator,
                              "--place", "rack-1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # No resource matches it: offline.
        lab.wait_places(lambda ps: ps["rack-1"]["tags"].get("online") == "no",
                        "rack-1 tagged offline", timeout_s=15)
        # Its pen's port and rig appear (here: pen-2's, published by the lab's exporter): online.
        out = _run([labgrid_client, "-p", "rack-1", "add-match", "lab-sim/pen-2/*"], env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        lab.wait_places(lambda ps: ps["rack-1"]["tags"].get("online") == "yes",
                        "rack-1 tagged online", timeout_s=15)
    finally:
        watch.terminate()
        log = watch.communicate(timeout=30)[0]
        _run([labgrid_client, "-p", "rack-1", "delete"], env=env)
    assert watch.returncode == 0, log
    assert "rack-1: online=no" in log and "rack-1: online=yes" in log
