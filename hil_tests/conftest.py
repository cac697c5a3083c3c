"""HIL harness: one suite for a real pen (`--pen-port`), a pen in a labgrid lab (`--lab`) or, by
default, a fresh blank virtual pen that is flashed with `penctl flash` at the start of every run.

The tests see a `target` (its port URL, its rig, its traffic log) and never know which of the
three it is. Options:

- `--pen-port PORT` (device path or pyserial URL) and `--rig-socket SOCK` (a real pen's bench rig);
- `--lab HOST:PORT|auto` (a labgrid coordinator; `auto`: the one `make lab` started), with
  `--lab-tags k=v,...` (default `board=sim,clock=<--hil-clock>`), `--lab-python` (the lab's venv)
  and `--lab-timeout S`: the session reserves a place by tags, acquires it, flashes its pen, runs
  and releases it in a `finally` (docs/lab.md). With pytest-xdist (`-n N`), each worker holds one
  place; the controller merges the workers' reports;
- `--hil-report DIR` (JUnit XML + Markdown/HTML report + plots; every test names its place and pen
  serial), `--hil-clock fast|real|target` (virtual and lab pens; target by default: the pen's CPU speed).
"""
import collections
import json
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest

from hil_tests.report import Recorder, write_report
from hil_tests.rig import NoRig, RigUnavailable, SimRig, UrlRig

LOG_TAIL = 25
ROOT = Path(__file__).resolve().parent.parent
LAB_STATE = ROOT / ".lab"                          # where `make lab` keeps its lab (lab.json)
LAB_PYTHON = ROOT / ".venv-lab" / "bin" / "python"
RUN_ENV = "PEN_HIL_RUN"                            # one id per run, shared by the xdist workers
REENUMERATE_WAIT_S = 15.0                          # a vanished pen may come back within this


class LabNotice(UserWarning):
    """Something the lab did for this run that its user should know (a stale lock reclaimed)."""


def pytest_addoption(parser):
    group = parser.getgroup("hil", "hardware-in-the-loop")
    group.addoption("--pen-port", default=None,
                    help="serial port or pyserial URL of a real pen (default: a virtual pen)")
    group.addoption("--rig-socket", default=None,
                    help="rig socket (JSON lines, docs/design.md §5) for a real pen's bench fixture")
    group.addoption("--hil-report", default=None, help="write the HIL report into this folder")
    group.addoption("--hil-clock", default="target", choices=("fast", "real", "target"),
                    help="virtual and lab pens' clock (default target: the pen's real CPU speed)")
    group.addoption("--lab", default=None, metavar="HOST:PORT|auto",
                    help="run on a place of this labgrid coordinator (auto: the lab of `make lab`)")
    group.addoption("--lab-tags", default=None, metavar="K=V,...",
                    help="tags of the place to reserve (default board=sim,clock=<--hil-clock>)")
    group.addoption("--lab-python", default=os.environ.get("PEN_LAB_PYTHON", str(LAB_PYTHON)),
                    help="interpreter of the lab's venv, with labgrid (default .venv-lab)")
    group.addoption("--lab-timeout", default=120.0, type=float,
                    help="seconds to wait for a free place (default 120)")


def _lab_settings(config):
    """(coordinator, tags) of a --lab run, validated before anything is reserved."""
    lab = config.getoption("--lab")
    if config.getoption("--pen-port") or config.getoption("--rig-socket"):
        raise pytest.UsageError("--lab and --pen-port/--rig-socket exclude each other")
    if lab == "auto":
        try:
            summary = json.loads((LAB_STATE / "lab.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("state") != "ready" or not summary.get("coordinator"):
            raise pytest.UsageError("--lab auto: no lab is running in %s (start one with `make lab`)" % LAB_STATE)
        lab = summary["coordinator"]
    host, sep, port = lab.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise pytest.UsageError("--lab %r: expected HOST:PORT or auto" % lab)
    text = config.getoption("--lab-tags") or "board=sim,clock=%s" % config.getoption("--hil-clock")
    tags = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise pytest.UsageError("--lab-tags: %r is not key=value" % pair)
        tags[key] = value
    if "online" in tags:
        raise pytest.UsageError("--lab-tags: the harness adds online=yes itself")
    if not os.access(config.getoption("--lab-python"), os.X_OK):
        raise pytest.UsageError("--lab-python %s: not found (make lab-setup builds .venv-lab)"
                                % config.getoption("--lab-python"))
    if config.getoption("--lab-timeout") <= 0:
        raise pytest.UsageError("--lab-timeout must be positive")
    return lab, tags


def pytest_configure(config):
    out = config.getoption("--hil-report")
    if out and not config.option.xmlpath:
        os.makedirs(out, exist_ok=True)
        config.option.xmlpath = os.path.join(out, "junit.xml")
    # pyserial's RFC 2217 client (lab pens) sets up its reader thread the old way, at every connection.
    for old_api in ("setName", "setDaemon"):
        config.addinivalue_line("filterwarnings", "ignore:%s\\(\\) is deprecated:DeprecationWarning:serial" % old_api)
    if config.getoption("--lab"):
        config._hil_lab = _lab_settings(config)
        os.environ.setdefault(RUN_ENV, uuid.uuid4().hex[:12])    # before xdist starts its workers
    config._hil_parts = []


def _worker(config):
    return getattr(config, "workerinput", {}).get("workerid")


class Target:
    """The pen under test: its port, its rig and the traffic log; for a lab pen, its place."""

    def __init__(self, port, rig, kind, log_path, vpen=None, flash_report=None, place=None):
        self.port = port
        self.rig = rig
        self.kind = kind
        self.log_path = log_path
        self.vpen = vpen
        self.flash_report = flash_report
        self.place = place               # lab.place.LabPlace, or None off the lab
        self.serial = None
        self.generation = None
        self.vanished = None             # why the pen is gone, while it is
        self.closed = False
        self.recent = collections.deque(maxlen=LOG_TAIL)
        self._log = open(log_path, "a", buffering=1)

    @property
    def place_name(self):
        return self.place.name if self.place is not None else self.kind

    def describe(self):
        where = "lab place %s" % self.place.name if self.place is not None else "%s pen" % self.kind
        return "%s: pen serial %s on %s (rig: %s)" % (where, self.serial, self.port, self.rig.name)

    def log(self, direction, text):
        line = "%.3f %s %s" % (time.monotonic(), direction, text)
        self.recent.append(line)
        self._log.write(line + "\n")

    def connect(self, timeout=None):
        """A `penctl.Pen` whose traffic is logged for failure reports."""
        from penctl.client import Pen

        pen = Pen(self.port, timeout=timeout or 5.0, connect=False)
        link = pen.link
        original_line = link._line
        original_write = link._write

        def traced_line(line):
            self.log("<", bytes(line).decode("ascii", "replace").rstrip())
            return original_line(line)

        def traced_write(data):
            self.log(">", bytes(data).decode("ascii", "replace").rstrip())
            return original_write(data)

        link._line = traced_line
        link._write = traced_write
        pen.connect()
        return pen

    def identify(self):
        """The pen's serial number, as it answers it; a lab pen must be the one its place publishes."""
        pen = self.connect()
        try:
            self.serial = pen.info()["serial"]
        finally:
            pen.close()
        if self.place is not None:
            published = self.place.published_serial
            if published and published != self.serial:
                raise RuntimeError("place %s publishes pen serial %s, but the pen answering on %s is %s: "
                                   "wrong cable or exporter configuration; not testing it"
                                   % (self.place.name, published, self.port, self.serial))

    def follow_place(self, wait_s):
        """For a lab pen: where is it served now? Retargets to a new port when it re-enumerated.
        Returns a message when the pen went away (and where it is now), None when nothing moved."""
        from lab.place import LabError

        old_port = self.port
        deadline = time.monotonic() + wait_s
        while True:
            try:
                described = self.place.resolve()
            except LabError as exc:
                return "the lab could not say where place %s's pen is: %s" % (self.place.name, exc)
            pen = described["pen"] or {}
            if described["offline"] is None and pen.get("port"):
                break
            if time.monotonic() > deadline:
                self.vanished = ("the pen of place %s (serial %s) disappeared: its port %s is gone and the "
                                 "place is still offline after %.0f s (%s)" % (
                                     self.place.name, self.serial, old_port, wait_s,
                                     described["offline"] or "its port is not served"))
                return self.vanished
            time.sleep(0.5)
        moved = pen.get("generation") != self.generation or self.place.pen_url != old_port
        self.vanished = None
        if not moved:
            return None
        self.port = self.place.pen_url
        self.generation = pen.get("generation")
        self.rig.close()
        self.rig = UrlRig(self.place.rig_url) if self.place.rig_url else NoRig()
        return ("the pen of place %s (serial %s) disappeared during this test: its port %s went away and "
                "the exporter now serves it on %s (it re-enumerated); the following tests use the new port"
                % (self.place.name, self.serial, old_port, self.port))

    def close(self):
        self.closed = True
        self.rig.close()
        self._log.close()


@pytest.fixture(scope="session")
def report_dir(pytestconfig):
    out = pytestconfig.getoption("--hil-report")
    if out:
        os.makedirs(out, exist_ok=True)
        return out
    return tempfile.mkdtemp(prefix="hil-report-")


@pytest.fixture(scope="session")
def recorder(pytestconfig, report_dir, target):
    rec = Recorder(report_dir, target.describe())
    if target.place is not None:
        rec.notes += ["%s (worker %s)" % (note, _worker(pytestconfig) or "main") for note in target.place.reclaimed]
    pytestconfig._hil_recorder = rec
    return rec


@pytest.fixture(scope="session")
def target(pytestconfig, report_dir, tmp_path_factory):
    port = pytestconfig.getoption("--pen-port")
    lab = getattr(pytestconfig, "_hil_lab", None)
    if lab:
        yield from _lab_target(pytestconfig, report_dir, *lab)
        return
    log_path = os.path.join(report_dir, "pen.log")
    if port:
        sock = pytestconfig.getoption("--rig-socket")
        rig = SimRig(sock) if sock else NoRig()
        tgt = Target(port, rig, "real", log_path)
        pytestconfig._hil_target = tgt
        tgt.identify()
        yield tgt
        tgt.close()
        return
    from penctl.flash import flash_firmware
    from pensim.supervisor import VirtualPen

    base = tmp_path_factory.mktemp("vpen")
    sock = str(base / "rig.sock")
    vpen = VirtualPen(state_dir=base / "flash", clock=pytestconfig.getoption("--hil-clock"),
                      blank=True, control=sock)
    vpen.start()
    try:
        # Every run exercises flashing: the virtual pen starts blank.
        flash_report = flash_firmware(vpen.port)
        tgt = Target(vpen.port, SimRig(sock), "virtual", log_path, vpen=vpen, flash_report=flash_report)
        pytestconfig._hil_target = tgt
        tgt.identify()
        yield tgt
        tgt.close()
    finally:
        vpen.stop()


def _lab_target(config, report_dir, coordinator, tags):
    """Reserve a place by tags, acquire it, flash its pen; release it whatever happens."""
    from lab.place import LabError, LabPlace
    from penctl.flash import flash_firmware

    worker = _worker(config) or "main"
    place = LabPlace(coordinator, config.getoption("--lab-python"), tags, os.environ[RUN_ENV], worker,
                     config.getoption("--lab-timeout"))
    try:
        place.claim()
        problem = None
    except LabError as exc:
        problem = str(exc)
    if problem:
        pytest.fail("no lab place for this run (worker %s): %s" % (worker, problem), pytrace=False)
    tgt = None
    try:
        for note in place.reclaimed:
            # A warning reaches the summary of the run, from pytest-xdist workers too.
            warnings.warn_explicit(note, LabNotice, "lab place %s" % place.name, 0)
        rig = UrlRig(place.rig_url) if place.rig_url else NoRig()
        tgt = Target(place.pen_url, rig, "lab", os.path.join(report_dir, "pen-%s.log" % place.name), place=place)
        tgt.generation = (place.described.get("pen") or {}).get("generation")
        config._hil_target = tgt
        # A lab pen runs the firmware under test: flash it, as the local virtual pen is.
        problem = None
        try:
            tgt.flash_report = flash_firmware(tgt.port)
        except Exception as exc:   # noqa: BLE001 - any failure here means: not this pen
            problem = "flashing its pen on %s failed: %s" % (tgt.port, exc)
        if problem is None:
            try:
                tgt.identify()
            except Exception as exc:   # noqa: BLE001 - the pen of this place cannot be tested
                problem = "its pen on %s did not answer after flashing: %s" % (tgt.port, exc)
        if problem:
            pytest.fail("place %s: %s" % (place.name, problem), pytrace=False)
        yield tgt
    finally:
        if tgt is not None:
            tgt.close()
        try:
            place.release()
            unreleased = None
        except LabError as exc:
            # The next run reclaims it (its holder, this process, is gone by then).
            unreleased = "place %s was not released (the next run reclaims it): %s" % (place.name, exc)
            warnings.warn_explicit(unreleased, LabNotice, "lab place %s" % place.name, 0)
    if unreleased:
        raise RuntimeError(unreleased)


@pytest.fixture
def rig(target):
    return target.rig


@pytest.fixture(autouse=True)
def _test_context(recorder, target, request):
    """Every test names its place and pen (JUnit properties, report); a vanished pen fails fast."""
    recorder.current_test = request.node.name
    recorder.current_place = target.place_name
    request.node.user_properties.append(("place", target.place_name))
    request.node.user_properties.append(("pen_serial", target.serial))
    request.node.user_properties.append(("pen_port", target.port))
    if target.vanished:
        note = target.follow_place(0)
        if target.vanished:
            pytest.fail(target.vanished, pytrace=False)
        if note:
            recorder.notes.append(note)


@pytest.fixture
def pen(target):
    from hil_tests.helpers import full_range

    handle = target.connect()
    full_range(handle)         # the suite's baseline: the clinician allowed the whole depth range (S16)
    yield handle
    handle.close()


def need_rig(call, *args):
    """Run a rig operation; skip the test (naming what is needed) when there is no rig."""
    try:
        return call(*args)
    except RigUnavailable as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    config = item.config
    rec = getattr(config, "_hil_recorder", None)
    tgt = getattr(config, "_hil_target", None)
    port = tgt.port if tgt is not None else None       # the one this test used
    if report.failed and report.when in ("setup", "call") and tgt is not None and tgt.place is not None \
            and not tgt.vanished and not tgt.closed:
        # A lab pen that vanished (re-enumerated, unplugged) fails this test with the reason.
        note = tgt.follow_place(REENUMERATE_WAIT_S)
        if note:
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None:
                crash.message = "%s [%s]" % (note, crash.message)
            report.sections.append(("lab", note))
            if rec is not None:
                rec.notes.append("%s: %s" % (item.nodeid, note))
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if rec is not None:
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2]
            elif report.failed:
                crash = getattr(report.longrepr, "reprcrash", None)
                reason = crash.message.splitlines()[0][:300] if crash is not None else ""
            rec.record_outcome(item.nodeid, report.outcome, reason, tgt.place_name if tgt else None,
                               tgt.serial if tgt else None)
    if report.failed and tgt is not None:
        report.sections.append(("last frames received (%s)" % port, "\n".join(tgt.recent)))
        report.sections.append(("full log", tgt.log_path))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist (controller): keep each worker's share of the report."""
    part = getattr(node, "workeroutput", {}).get("hil_report")
    if part:
        node.config._hil_parts.append(part)


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    rec = getattr(config, "_hil_recorder", None)
    out = config.getoption("--hil-report")
    if _worker(config):
        if rec is not None:
            config.workeroutput["hil_report"] = rec.part()
        return
    parts = list(config._hil_parts) + ([rec.part()] if rec is not None else [])
    if out and parts:
        write_report(out, parts)
