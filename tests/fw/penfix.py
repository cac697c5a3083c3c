# Shared pen states for the firmware requirement tests (tests/fw/test_s*.py),
# common subset of CPython and MicroPython.
#
# A sterilisation cycle is ~62 000 ticks of the fast clock, so it is run once
# per test run (a real cycle, on the simulated dock, unchanged limits) and its
# flash folder is copied into each test that needs an unlocked pen: the flash
# is what a power cycle preserves; nothing is shortened or faked.
import os

import fwtest
from pen import control as c

_template = {}


def copy_folder(src, dst):
    try:
        os.mkdir(dst)
    except OSError:
        pass
    for name in os.listdir(src):
        with open(src + "/" + name, "rb") as handle:
            data = handle.read()
        with open(dst + "/" + name, "wb") as handle:
            handle.write(data)


def _template_dir():
    return (os.getenv("PEN_TEST_TMP") or "/tmp") + "/pen-sterilised-template"


def sterilised_template():
    """Flash folder of a pen that completed one real sterilisation cycle, and the
    cycle's numbers. Built once per test temp folder (the MicroPython runner
    shares one temp folder between its interpreter processes)."""
    if "folder" in _template:
        try:
            os.stat(_template["folder"] + "/stats")
            return _template
        except OSError:
            pass   # removed with its temp folder
    folder = _template_dir()
    try:
        stats = read_file(folder + "/stats").decode().split()
        _template["cycle_ms"] = int(stats[0])
        _template["steril_ms"] = int(stats[1])
        _template["lamp_pm"] = int(stats[2])
        _template["folder"] = folder
        return _template
    except (OSError, IndexError, ValueError):
        pass
    pen = fwtest.Pen(fwtest.fresh_dir("template"))
    assert pen.boot() == "LOCKED"
    lamp_pm = 960 - pen.board.lamp_on_ms // 36000
    assert pen.request("sterilise_start")["ok"]
    started_ms = pen.ctl.now_ms
    pen.run_until(lambda: pen.ctl.state != c.STERILISING, 100000)
    assert pen.state() == "READY", pen.state()
    fwtest._rmtree(folder)
    os.mkdir(folder)
    copy_folder(pen.folder + "/data", folder + "/data")
    cycle_ms = pen.ctl.now_ms - started_ms
    write_file(folder + "/stats", ("%d %d %d" % (cycle_ms, pen.ctl.steril_ms, lamp_pm)).encode())
    _template["cycle_ms"] = cycle_ms
    _template["steril_ms"] = pen.ctl.steril_ms
    _template["lamp_pm"] = lamp_pm
    _template["folder"] = folder
    return _template


def unlocked_pen(tag="u", seed=12345, time_start_s=0):
    """A new pen (own flash folder) whose flash holds one completed cycle; booted. Its
    clock starts at `time_start_s` seconds of pen time."""
    folder = fwtest.fresh_dir(tag)
    copy_folder(sterilised_template()["folder"] + "/data", folder + "/data")
    pen = fwtest.Pen(folder, seed=seed, time_start_s=time_start_s)
    assert pen.boot() == "READY", pen.state()
    return pen


def ready_pen(depth_um=500, stroke_hz=100, max_session_s=60, cartridge="CA00010000000000", tag="r",
              time_start_s=0):
    """An unlocked, READY pen with an active profile and a fresh cartridge."""
    pen = unlocked_pen(tag, time_start_s=time_start_s)
    pen.push_profile(name="p", depth_um=depth_um, stroke_hz=stroke_hz, max_session_s=max_session_s)
    if cartridge is not None:
        pen.insert(cartridge)
    return pen


def start_session(pen):
    reply = pen.request("session_start")
    assert reply["ok"], reply
    return reply


def wait_motor_start(pen, limit_ms=3000):
    """Run until the stroke motor is driven; returns ms waited."""
    return pen.run_until(lambda: pen.board.duty_bp > 0, limit_ms)


def running_pen(depth_um=500, stroke_hz=100, max_session_s=60, cartridge="CA00010000000000", settle_ms=600):
    """A pen in a session, motor driven and settled for settle_ms."""
    pen = ready_pen(depth_um, stroke_hz, max_session_s, cartridge)
    start_session(pen)
    wait_motor_start(pen)
    pen.run_ms(settle_ms)
    assert pen.state() == "RUNNING" and pen.board.duty_bp > 0
    return pen


def ticks_until(pen, predicate, limit):
    """Steps one tick at a time; returns how many ticks until predicate() held."""
    for n in range(1, limit + 1):
        pen.run_ms(1)
        if predicate():
            return n
    raise AssertionError("not within %d ticks (state %s)" % (limit, pen.state()))


def log_entries(pen):
    return fwtest.read_pages(pen.request, "log_read")


def read_file(path):
    with open(path, "rb") as handle:
        return handle.read()


def write_file(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
