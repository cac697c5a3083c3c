# Fixtures for the clinical-safety tests (tests/fw/test_clinical_*.py), common subset of
# CPython and MicroPython. The module under test (pen.clinical) runs unchanged on a real
# pen.store.Store in a fresh folder; only the board and the clock are stand-ins, because the
# application that owns them is being rebuilt (issue 8): the board keeps the per-cartridge used
# marks the way the cartridge memory does, and the clock is the board's ticks_us().
import os

import fwtest
from pen import wire
from pen.auth import hmac_sha256, mac_message
from pen.clinical import Clinical
from pen.store import Store, StoreError

# time.ticks_* period on the unix port (64-bit) and in pen.compat on CPython.
TICKS_PERIOD = 1 << 62
_TICKS_MASK = TICKS_PERIOD - 1   # a small int on MicroPython: masking allocates nothing
SERIAL = "E6614C311B6F5A2C"
KEY = bytes(range(1, 33))
OTHER_KEY = bytes(range(101, 133))
KEY_ID = "0123456789abcdef"
DAY_S = 86400
T0 = 1767225600          # 2026-01-01 00:00:00 UTC


def hexs(data):
    from binascii import hexlify
    return hexlify(data).decode()


def clinician_sets_ceiling(request, serial, depth_um, key=KEY, key_id=KEY_ID):
    """What a clinician does before pushing a profile deeper than the factory ceiling (S16), as
    penctl does it: provision the key if the pen has none, then `ceiling_set` with the HMAC
    answer to a fresh nonce. `request(op, **fields)` -> reply dict (the app's or a test pen's)."""
    from binascii import unhexlify
    if not request("info")["key_provisioned"]:
        reply = request("key_provision", key=hexs(key), key_id=key_id)
        assert reply["ok"], reply
    nonce = request("auth_nonce")["nonce"]
    mac = hmac_sha256(key, mac_message(unhexlify(nonce), serial, "ceiling_set", {"depth_um": depth_um}))
    reply = request("ceiling_set", depth_um=depth_um, auth={"nonce": nonce, "mac": hexs(mac)})
    assert reply["ok"], reply
    return reply


class Clock:
    """Pen time in us; ticks_us() wraps like time.ticks_us()."""

    def __init__(self, start_us=0):
        self.us = start_us

    def ticks_us(self):
        return self.us & _TICKS_MASK

    def advance_ms(self, ms):
        self.us += ms * 1000

    def advance_s(self, seconds):
        self.us += seconds * 1000000


class Board:
    """The parts of the board the clinical module uses: serial and the cartridge memory."""

    def __init__(self, clock):
        self.serial = SERIAL
        self.ticks_us = clock.ticks_us
        self.marks = {}            # cartridge id -> used mark (the cartridge's own memory)
        self.cartridge = None
        self.fail_read = False
        self.fail_mark = False
        self.marks_written = 0

    def insert(self, cartridge, used=False):
        self.cartridge = cartridge
        if used:
            self.marks[cartridge] = True

    def cartridge_used(self):
        if self.fail_read or self.cartridge is None:
            raise OSError("1-Wire: no presence pulse")
        return self.marks.get(self.cartridge, False)

    def cartridge_mark_used(self):
        if self.fail_mark or self.cartridge is None:
            raise OSError("1-Wire: copy scratchpad not confirmed")
        self.marks[self.cartridge] = True
        self.marks_written += 1


class FlakyStore(Store):
    """A real Store whose writes can be made to fail (a full or worn-out flash)."""

    def __init__(self, folder):
        super().__init__(folder)
        self.fail = False
        self.writes = 0

    def write(self, name, value):
        if self.fail:
            raise StoreError("cannot write %s: injected" % name)
        self.writes += 1
        super().write(name, value)


class Rig:
    """One pen's clinical module on its own flash folder; power_cut() rebuilds it from flash."""

    def __init__(self, tag="c", start_us=0):
        self.folder = fwtest.fresh_dir(tag)
        self.clock = Clock(start_us)
        self.board = Board(self.clock)
        self.profiles = {}
        self.running = False
        self.power_on()

    def power_on(self):
        self.store = FlakyStore(self.folder + "/data")
        self.clin = Clinical(self.store, self.board, busy=lambda: self.running,
                             find_profile=lambda name: self.profiles.get(name))

    def power_cut(self):
        # RAM is gone; pen time restarts somewhere else; the flash stays.
        self.clock.us += 123456789
        self.power_on()

    def request(self, op, **fields):
        """The reply a request gets, shaped like the app's (ok + fields, or ok false + code)."""
        body = {"op": op}
        for name in fields:
            body[name] = fields[name]
        # Through the wire codec, as on the pen: only canonical JSON reaches the handler.
        kind, num, body = wire.decode(wire.encode("Q", 1, body))
        try:
            reply = self.clin.handle(op, body)
        except StoreError as exc:
            return {"ok": False, "code": "STORE", "msg": str(exc)}
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            return {"ok": False, "code": code, "msg": exc.message}
        reply["ok"] = True
        return reply

    def nonce(self):
        reply = self.request("auth_nonce")
        assert reply["ok"], reply
        return reply["nonce"]

    def signed(self, op, args, key=KEY, nonce=None, serial=SERIAL, sign_op=None, sign_args=None):
        """Request fields with the answer a key holder computes (optionally for another op,
        other args or another serial: mismatched answers)."""
        if nonce is None:
            nonce = self.nonce()
        from binascii import unhexlify
        mac = hmac_sha256(key, mac_message(unhexlify(nonce), serial, sign_op or op,
                                           sign_args if sign_args is not None else args))
        fields = dict(args)
        fields["auth"] = {"nonce": nonce, "mac": hexs(mac)}
        return fields

    def privileged(self, op, args, key=KEY, **kw):
        return self.request(op, **self.signed(op, args, key=key, **kw))

    def provision(self, key=KEY, key_id=KEY_ID):
        reply = self.request("key_provision", key=hexs(key), key_id=key_id)
        assert reply["ok"], reply
        return reply

    def profile(self, name="crown", depth_um=500, days=0):
        profile = {"name": name, "depth_um": depth_um, "stroke_hz": 100, "max_session_s": 60,
                   "min_interval_days": days}
        self.profiles[name] = profile
        return profile

    def start_session(self, profile, cartridge):
        """What the app does at session start: check, then (its own records), then mark."""
        self.board.insert(cartridge)
        self.clin.check_session(profile, cartridge)
        self.clin.session_starting(profile, cartridge)

    def session(self, profile, cartridge, motor_ran=True):
        self.start_session(profile, cartridge)
        self.clin.session_ended(profile["name"], motor_ran)

    def refusal(self, call, *args):
        """The error code `call(*args)` raises (None if it does not)."""
        try:
            call(*args)
        except StoreError:
            return "STORE"
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            return code
        return None

    def audit(self):
        return fwtest.read_pages(self.request, "audit_read")

    def flash_bytes(self):
        """Every byte the pen's flash folder holds (to look for the key in it)."""
        out = {}
        folder = self.folder + "/data"
        for name in os.listdir(folder):
            with open(folder + "/" + name, "rb") as handle:
                out[name] = handle.read()
        return out
