"""Power cut at random moments (S7): never unlocked by the cut, records old or new."""
import random
import shutil
import threading
import time

import pytest

from hil_tests.conftest import need_rig
from hil_tests.helpers import fresh_cartridge, last_log, make_ready, start_session, use_profile, wait_for, wait_motor
from hil_tests.helpers import wait_state
from penctl.errors import PenctlError, PenRefused

SEED = 20261122
rng = random.Random(SEED)


def _cut_and_restore(target, rig, pen):
    pen.close()
    rig.power_cut()
    time.sleep(0.05)
    rig.power_on()
    return _reconnect(target)


def _reconnect(target, timeout_s=30):
    last = {}

    def attempt():
        try:
            return target.connect(timeout=2.0)
        except PenctlError as exc:
            last["error"] = exc
            return None

    handle = wait_for(attempt, timeout_s, "pen answering after power-on")
    return handle


def test_s7_power_cut_during_session(target, pen, rig, recorder):
    need_rig(rig.measure)
    cartridge = start_session(pen, rig)
    wait_motor(rig, True)
    time.sleep(rng.uniform(0.0, 0.3))
    pen = _cut_and_restore(target, rig, pen)
    try:
        assert wait_state(pen, ("LOCKED", "READY", "FAULT")) == "LOCKED"     # never unlocked by a cut
        entry = last_log(pen, "session")
        # S14: the next boot closes the cut session's entry (its duration is not known)
        assert entry["cartridge"] == cartridge and entry["end"] == "POWER_LOSS"
        make_ready(pen, rig)
        rig.cartridge(cartridge)
        with pytest.raises(PenRefused) as refused:                        # still recorded as used
            pen.session_start()
        assert refused.value.code == "CARTRIDGE_USED"
    finally:
        pen.close()


def test_s7_power_cut_during_cycle(target, pen, rig, recorder):
    need_rig(rig.measure)
    use_profile(pen)
    make_ready(pen, rig)
    rig.cartridge(fresh_cartridge())
    pen.session_start()                # consume the unlock: the pen is LOCKED again
    pen.session_stop()
    wait_state(pen, "LOCKED")
    for attempt in range(3):
        pen.sterilise(wait=False)
        wait_for(lambda: rig.measure()["uv_on"], 30, "UV on")
        time.sleep(rng.uniform(0.0, 0.5))
        pen = _cut_and_restore(target, rig, pen)
        state = wait_state(pen, ("LOCKED", "READY", "FAULT"))
        assert state == "LOCKED", "cut %d during a cycle left the pen %s" % (attempt, state)
        assert not rig.measure()["uv_on"]
    pen.close()


def test_s7_power_cut_during_profile_write(target, pen, rig, recorder):
    need_rig(rig.measure)
    old = {"name": "hil-power", "depth_mm": 0.5, "stroke_hz": 100, "max_session_s": 600}
    new = dict(old, depth_mm=1.5, stroke_hz=120)
    outcomes = {"old": 0, "new": 0}
    for attempt in range(5):
        pen.profile_push([old])
        worker = threading.Thread(target=lambda handle=pen: _quiet(handle.profile_push, [new]))
        worker.start()
        time.sleep(rng.uniform(0.0, 0.02))
        rig.power_cut()
        worker.join(30)
        pen.close()
        rig.power_on()
        pen = _reconnect(target)
        profiles = {p["name"]: p for p in pen.profile_list()["profiles"]}
        got = profiles["hil-power"]
        got = {k: got[k] for k in old}
        assert got in (old, new), "attempt %d: profile is neither old nor new: %r" % (attempt, got)
        outcomes["old" if got == old else "new"] += 1
        assert pen.info()["unlocked"] in (False, True)
        pen.log()                                          # every log record still reads
    recorder.check("profile writes cut: records old or new", outcomes["old"] + outcomes["new"], "of 5", 5, 5)
    pen.close()


def _quiet(func, *args):
    try:
        func(*args)
    except PenctlError:
        pass


def test_s7_power_cut_during_flash(target, pen, rig, recorder, tmp_path):
    need_rig(rig.measure)
    from penctl.flash import _firmware_dir, flash_firmware

    pen.close()
    source = tmp_path / "firmware"
    shutil.copytree(_firmware_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
    with open(source / "pen" / "limits.py", "a") as handle:
        handle.write("\nHIL_FLASH_BUILD = %d  # makes this build differ\n" % rng.getrandbits(30))
    cut = {}
    # A random moment before the switch to the new slot: after the staging
    # writes, or during the verification.
    cut_stage = rng.choice(("write", "verify"))

    def progress(stage, done, total):
        if stage == cut_stage and (done > 0 or stage == "verify") and not cut:
            cut["at"] = (stage, done, total)
            rig.power_cut()

    with pytest.raises(PenctlError):
        flash_firmware(target.port, source_dir=source, progress=progress)
    assert cut, "the flash never reached the %s stage" % cut_stage
    rig.power_on()
    handle = _reconnect(target)            # the previous firmware boots, never a half-written one
    assert handle.ping()["protocol"] == 2
    handle.close()
    report = flash_firmware(target.port, source_dir=source)       # flashing again completes
    assert report["changed"], "the second flash did not switch to the new build: %r" % report
    restored = flash_firmware(target.port)                         # back to the tree under test
    recorder.check("flash after a cut mid-flash", int(report["protocol"] == 2 and restored["protocol"] == 2),
                   "ok", 1, 1)
