"""Steps the HIL tests share: bring the pen to a known state, run a session."""
import random
import time

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


def use_profile(pen, depth_mm=1.0, stroke_hz=100, max_session_s=600):
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
