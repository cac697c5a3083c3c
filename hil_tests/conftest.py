"""HIL harness: one suite for a real pen (`--pen-port`) or, by default, a fresh blank
virtual pen that is flashed with `penctl flash` at the start of every run.

Options: --pen-port PORT (device path or pyserial URL), --rig-socket SOCK (a rig
for a real pen), --hil-report DIR (JUnit XML + Markdown/HTML report + plots),
--hil-clock fast|real (virtual pen only; fast by default).
"""
import collections
import os
import tempfile
import time

import pytest

from hil_tests.report import Recorder
from hil_tests.rig import NoRig, RigUnavailable, SimRig

LOG_TAIL = 25


def pytest_addoption(parser):
    group = parser.getgroup("hil", "hardware-in-the-loop")
    group.addoption("--pen-port", default=None,
                    help="serial port or pyserial URL of a real pen (default: a virtual pen)")
    group.addoption("--rig-socket", default=None,
                    help="rig socket (JSON lines, docs/design.md §5) for a real pen's bench fixture")
    group.addoption("--hil-report", default=None, help="write the HIL report into this folder")
    group.addoption("--hil-clock", default="fast", choices=("fast", "real"),
                    help="virtual pen's clock (default fast: the same tests, in less wall time)")


def pytest_configure(config):
    out = config.getoption("--hil-report")
    if out and not config.option.xmlpath:
        os.makedirs(out, exist_ok=True)
        config.option.xmlpath = os.path.join(out, "junit.xml")


class Target:
    """The pen under test: its port, its rig and the traffic log."""

    def __init__(self, port, rig, kind, log_path, vpen=None, flash_report=None):
        self.port = port
        self.rig = rig
        self.kind = kind
        self.log_path = log_path
        self.vpen = vpen
        self.flash_report = flash_report
        self.recent = collections.deque(maxlen=LOG_TAIL)
        self._log = open(log_path, "a", buffering=1)

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

    def close(self):
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
    rec = Recorder(report_dir, "%s pen on %s (rig: %s)" % (target.kind, target.port, target.rig.name))
    pytestconfig._hil_recorder = rec
    return rec


@pytest.fixture(scope="session")
def target(pytestconfig, report_dir, tmp_path_factory):
    log_path = os.path.join(report_dir, "pen.log")
    port = pytestconfig.getoption("--pen-port")
    if port:
        sock = pytestconfig.getoption("--rig-socket")
        rig = SimRig(sock) if sock else NoRig()
        tgt = Target(port, rig, "real", log_path)
        pytestconfig._hil_target = tgt
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
        yield tgt
        tgt.rig.close()
        tgt.close()
    finally:
        vpen.stop()


@pytest.fixture
def rig(target):
    return target.rig


@pytest.fixture(autouse=True)
def _measurements_named_after_the_test(recorder, request):
    recorder.current_test = request.node.name


@pytest.fixture
def pen(target):
    handle = target.connect()
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
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if rec is not None:
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2]
            rec.outcomes[item.nodeid] = (report.outcome, reason)
    if report.failed and tgt is not None:
        report.sections.append(("last frames received (%s)" % tgt.port, "\n".join(tgt.recent)))
        report.sections.append(("full log", tgt.log_path))


def pytest_sessionfinish(session, exitstatus):
    rec = getattr(session.config, "_hil_recorder", None)
    if rec is not None:
        rec.write()
