"""Steps the HIL tests share: bring the pen to a known state, run a session, act as the clinician."""
import os
import random
import tempfile
import time

import pytest

from penctl import clinical
from penctl.errors import PenRefused

# Wall-clock bounds for waits. Generous: on the real clock a sterilisation
# cycle alone takes 60 s.
WAIT_STATE_S = 120.0
POLL_S = 0.05

_rng = random.Random()


def fresh_cartridge():
    """A cartridge ID the pen has never seen (random 64-bit, as on the 1-Wire chip)."""
    return "%016X" % _rng.getrandbits(64)


def wait_for(predicate, timeout_s=WAIT_STATE_S, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %.0f s" % (what, timeout_s))
        time.sleep(POLL_S)


def wait_state(pen, states, timeout_s=WAIT_STATE_S):
    if isinstance(states, str):
        states = (states,)
    return wait_for(lambda: pen.state() in states and pen.state(), timeout_s,
                    "pen state %s" % "/".join(states))


def recover(pen, rig):
    """Whatever the last test left: no injections, no fault, no session."""
    rig.clear_injections()
    state = pen.state()
    if state == "RUNNING":
        try:
            pen.session_stop()
        except PenRefused:
            pass
        state = wait_state(pen, ("LOCKED", "FAULT"))
    if state == "STERILISING":
        try:
            pen.sterilise_cancel()
        except PenRefused:
            pass
        state = wait_state(pen, ("LOCKED", "FAULT"))
    if state == "FAULT":
        pen.fault_clear("HIL recover")
    wait_state(pen, ("LOCKED", "READY"))


# ---- the clinician (S16-S18) ----

#: a real pen's clinician key file for the HIL run (a virtual pen gets one made for the run)
KEY_FILE_ENV = "PEN_HIL_KEY_FILE"
#: the suite's baseline: a pen whose clinician allowed the whole depth range (S1: 2.5 mm)
FULL_RANGE_MM = 2.5
_keys = {}        # pen serial -> the ClinicianKey this run uses


def clinician_key(pen, info=None):
    """The clinician key of this pen for the run, or None if the run has none. $PEN_HIL_KEY_FILE
    names a real pen's key; a virtual pen (board "sim", a fresh flash every run) without a key
    gets a new one, written to a temporary folder and provisioned. A real pen is never given a
    key the run would then lose."""
    info = info or pen.info()
    serial = info["serial"]
    if serial in _keys:
        return _keys[serial]
    key = None
    if os.environ.get(KEY_FILE_ENV):
        key = clinical.load_key_file(os.environ[KEY_FILE_ENV])
    elif info["board"] == "sim" and not info["key_provisioned"]:
        folder = tempfile.mkdtemp(prefix="hil-key-")
        key = clinical.new_key_file(os.path.join(folder, serial + clinical.KEY_FILE_SUFFIX), pen_serial=serial)
        clinical.provision_key(pen, key)
    if key is not None:
        _keys[serial] = key
    return key


def ensure_ceiling(pen, depth_mm, required=True):
    """Raise the pen's depth ceiling to the full range if `depth_mm` is above it (with the run's
    clinician key). Without a key: skip the test (`required`) or leave the pen as it is."""
    info = pen.info()
    if info["depth_ceiling_mm"] is not None and info["depth_ceiling_mm"] >= depth_mm:
        return
    key = clinician_key(pen, info)
    if key is None:
        if required:
            pytest.skip("needs a depth ceiling of %g mm: give the pen's clinician key in $%s"
                        % (depth_mm, KEY_FILE_ENV))
        return
    clinical.set_ceiling(pen, FULL_RANGE_MM, key)


def full_range(pen):
    """The suite's baseline for every test (conftest's `pen`): the whole depth range allowed."""
    ensure_ceiling(pen, FULL_RANGE_MM, required=False)


def use_profile(pen, depth_mm=1.0, stroke_hz=100, max_session_s=600):
    ensure_ceiling(pen, depth_mm)
    name = "hil-%d-%d-%d" % (round(depth_mm * 1000), stroke_hz, max_session_s)
    pen.profile_push([{"name": name, "depth_mm": depth_mm, "stroke_hz": stroke_hz,
                       "max_session_s": max_session_s}])
    pen.profile_use(name)
    return name


def make_ready(pen, rig):
    recover(pen, rig)
    if pen.state() != "READY":
        pen.sterilise(wait=True)
    assert pen.state() == "READY"


def start_session(pen, rig, depth_mm=1.0, stroke_hz=100, max_session_s=600):
    """A running session with a fresh cartridge; returns the cartridge ID."""
    use_profile(pen, depth_mm, stroke_hz, max_session_s)
    make_ready(pen, rig)
    cartridge = fresh_cartridge()
    rig.cartridge(cartridge)
    pen.session_start()
    return cartridge


def wait_motor(rig, on=True, timeout_s=30.0):
    return wait_for(lambda: rig.measure()["motor_on"] == on, timeout_s, "motor %s" % ("on" if on else "off"))


def pen_seconds(pen):
    return pen.info()["counters"]["uptime_s"]


def wait_pen_seconds(pen, seconds):
    """Let `seconds` of pen time pass (fast on a fast-clock virtual pen)."""
    end = pen_seconds(pen) + seconds
    wait_for(lambda: pen_seconds(pen) >= end, seconds * 5 + 30, "%.1f s of pen time" % seconds)


def last_log(pen, kind):
    entries = [e for e in pen.log() if e.get("kind") == kind]
    return entries[-1] if entries else None


def reconnect(target, timeout_s=30):
    """A new handle to the pen once it answers again (after a power cut or a reset)."""
    from penctl.errors import PenctlError

    def attempt():
        try:
            return target.connect(timeout=2.0)
        except PenctlError:
            return None

    return wait_for(attempt, timeout_s, "pen answering after power-on")


def power_cycle(target, rig, pen):
    """Cut the supply and restore it (rig); returns a new handle (the old one is closed)."""
    pen.close()
    rig.power_cut()
    time.sleep(0.05)
    rig.power_on()
    return reconnect(target)


def refusal(call, *args, **kwargs):
    """The PenRefused that `call` raises (fails the test if it does not refuse)."""
    try:
        call(*args, **kwargs)
    except PenRefused as exc:
        return exc
    raise AssertionError("%s was not refused" % getattr(call, "__name__", call))
