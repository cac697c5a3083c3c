# Power-loss helper for tests/test_power_loss.py, run on the MicroPython unix
# port (the virtual pen's interpreter). The test SIGKILLs it at random moments
# and then runs it again in "read" mode in a fresh interpreter.
#
#   micropython tests/power_loss_writer.py store DIR   write versioned records forever
#   micropython tests/power_loss_writer.py app DIR     run real sterilise/session cycles forever
#   micropython tests/power_loss_writer.py read DIR    print what a restarted pen reads (one JSON line)
#
# Writers print "READY" once set up, then "B <record> <version>" before and
# "D <record> <version>" after each write, each line with one write() call
# (stdout is unbuffered; print() would write a line in pieces).
import json
import os
import sys

sys.path.insert(0, "tests/fw")
sys.path.insert(0, "firmware")

from pen.store import Store  # noqa: E402


def say(line):
    sys.stdout.write(line + "\n")

LOG_SLOTS = 50
RECORDS = ("lockout", "profiles", "cartridges", "log")


# ---- store mode: every record's content is a function of its version ----

def record_name(kind, version):
    return "log-%d" % (version % LOG_SLOTS) if kind == "log" else kind


def content(kind, version):
    if kind == "lockout":
        return {"unlocked": version % 2 == 1, "cycles": version}
    if kind == "profiles":
        items = []
        for i in range(1 + version % 16):
            items.append({"name": "p%d-%d" % (version, i), "depth_um": 250 + 50 * ((version + i) % 46),
                          "stroke_hz": 50 + (version + i) % 101, "max_session_s": 10 + (version * 7 + i) % 1791})
        return {"profiles": items, "active": "p%d-0" % version, "v": version}
    if kind == "cartridges":
        used = []
        for i in range(version % 200):
            used.append("%016X" % (version * 1000 + i))
        return {"used": used, "v": version}
    return {"id": version, "kind": "session", "end": "STOPPED", "strokes": version * 37,
            "note": "x" * (version % 300)}


def version_of(kind, value):
    if kind == "lockout":
        return value.get("cycles")
    if kind == "log":
        return value.get("id")
    return value.get("v")


def read_store(folder):
    """{record name: version | None (missing or unreadable) | "MIXED"}."""
    store = Store(folder)
    out = {}
    for kind in RECORDS:
        names = [record_name(kind, slot) for slot in range(LOG_SLOTS)] if kind == "log" else [kind]
        for name in names:
            value = store.read(name)
            if value is None:
                out[name] = None
                continue
            version = version_of(kind, value)
            if not isinstance(version, int) or value != content(kind, version) \
                    or record_name(kind, version) != name:
                out[name] = "MIXED"
            else:
                out[name] = version
    return out


def run_store(folder):
    current = read_store(folder)
    version = 0
    for value in current.values():
        if isinstance(value, int) and value > version:
            version = value
    store = Store(folder)
    say("READY %d" % version)
    while True:
        version += 1
        for kind in RECORDS:
            name = record_name(kind, version)
            say("B %s %d" % (name, version))
            store.write(name, content(kind, version))
            say("D %s %d" % (name, version))


# ---- app mode: the real App on the sim board ----

def make_app(folder):
    import fwtest
    from boards.sim import Board
    from pen.app import App
    board = Board(clock="fast", serial="PL-1", seed=7, out=fwtest._NullOut(), inp=fwtest._NoInput(), world=False)
    board.store_dir = folder
    app = App(board)
    return board, app


def run_app(folder):
    from pen import control as c
    board, app = make_app(folder)
    ctl = app.ctl

    # A dock lamp at 600x nominal: the unchanged dose in 0.1 s of pen time, so
    # that most of the time goes to the record writes the kills should hit. Such a
    # reading is above the sensor's plausibility bound (S12), which is not what this
    # test is about: the bound is lifted for this process only.
    from pen import phases
    phases.UV_MAX_PM = 1000000

    def bright_lamp():
        return 600000 if (board.uv_led and board.lid) else 0
    board.uv_intensity_pm = bright_lamp

    def run_until(predicate, limit):
        n = 0
        while not predicate():
            app.step()
            board._out.frames = []
            n += 1
            if n > limit:
                raise RuntimeError("stuck in state %s" % c.STATE_NAMES[ctl.state])

    run_until(lambda: ctl.state != c.BOOT, 2000)
    if not any(p["name"] == "pl" for p in app.rec.profiles):
        assert app.handle_request({"op": "profile_put", "profile": {
            "name": "pl", "depth_um": 300, "stroke_hz": 100, "max_session_s": 60}})["ok"]
        assert app.handle_request({"op": "profile_use", "name": "pl"})["ok"]
    say("READY %d" % app.rec.cycles)
    while True:
        if not app.rec.unlocked:
            say("B unlock %d" % (app.rec.cycles + 1))
            assert app.handle_request({"op": "sterilise_start"})["ok"]
            run_until(lambda: ctl.state != c.STERILISING, 5000)
            assert ctl.state == c.READY and app.rec.unlocked
            say("D unlock %d" % app.rec.cycles)
        cart = "9D%014d" % app.rec.cycles
        board.cartridge = cart
        say("B start %d" % app.rec.cycles)
        reply = app.handle_request({"op": "session_start"})
        assert reply["ok"], reply
        say("D start %d" % app.rec.cycles)
        run_until(lambda: board.duty_bp > 0, 2000)
        assert app.handle_request({"op": "session_stop"})["ok"]
        run_until(lambda: ctl.state == c.LOCKED, 2000)
        say("D end %d" % app.rec.cycles)


# ---- read mode ----

def read_all(folder):
    board, app = make_app(folder)
    store = Store(folder)
    lockout = store.read("lockout")
    carts = store.read("cartridges")
    sessions = []
    for slot in range(LOG_SLOTS):
        entry = store.read("log-%d" % slot)
        if entry is not None and entry.get("kind") == "session" and "cartridge" in entry:
            sessions.append(entry["cartridge"])
    # the same flash with the lockout record torn: must read as LOCKED
    torn = folder + "-torn"
    try:
        os.mkdir(torn)
    except OSError:
        pass
    torn_unlocked = None
    try:
        with open(folder + "/lockout.rec", "rb") as handle:
            raw = handle.read()
        with open(torn + "/lockout.rec", "wb") as handle:
            handle.write(raw[:len(raw) // 2])
        torn_unlocked = make_app(torn)[1].rec.unlocked
    except OSError:
        pass
    tmp = [name for name in os.listdir(folder) if name.endswith(".tmp")]
    return {
        "records": read_store(folder),
        "lockout": lockout,
        "used": carts["used"] if carts else None,
        "session_carts": sessions,
        "app_unlocked": app.rec.unlocked,
        "app_cycles": app.rec.cycles,
        "torn_unlocked": torn_unlocked,
        "tmp": tmp,
    }


def main():
    mode, folder = sys.argv[1], sys.argv[2]
    if mode == "store":
        run_store(folder)
    elif mode == "app":
        run_app(folder)
    elif mode == "read":
        print(json.dumps(read_all(folder)))
    else:
        raise SystemExit("unknown mode " + mode)


main()
