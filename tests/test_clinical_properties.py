"""S16-S18 as properties: a hypothesis state machine drives the pen's clinical module
(firmware/pen/clinical.py on a real pen.store.Store) through random sequences of nonce requests,
right / wrong / replayed / expired / mismatched answers, pen time passing, power cuts (the module
is rebuilt from its flash), clock changes (forward, back by up to an hour, back by more with and
without the key), interval overrides and session starts. A model written from the requirements
(not from the code) says what each step must answer. It checks that the pen

- never authorises a wrong, replayed, expired or mismatched answer (S17),
- never changes the ceiling without the key (S16),
- never allows a session inside a profile's interval, except one per override (S18),
- never loses the failure count, the lock or its doubling across a power cut (S17).
"""

from binascii import unhexlify

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import clinicalfix
from clinicalfix import KEY, OTHER_KEY, Rig

T0 = 1767225600
DAY_S = 86400
# The requirements' numbers, written here (docs/design.md §2.1 S16-S18, §3.5).
NONCE_MS = 30000
FAILURES_TO_LOCK = 5
FIRST_LOCK_S = 60
LOCK_CAP_S = 86400
CLOCK_BACK_FREE_S = 3600
FACTORY_CEILING_UM = 500
PROFILES = {"daily": 1, "weekly": 7, "free": 0}


def lock_s(level):
    return min(FIRST_LOCK_S * 2 ** (level - 1), LOCK_CAP_S)


class ClinicalMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.rig = Rig("prop")
        self.rig.provision()
        for name, days in PROFILES.items():
            self.rig.profile(name, depth_um=500, days=days)
        self.carts = 0
        # the model
        self.t_ms = 0                  # pen time since the last power-up
        self.ceiling_um = FACTORY_CEILING_UM
        self.failures = 0
        self.level = 0
        self.lock_start = None         # pen ms when the lock in force began
        self.expiry_unsaved = False    # a lock ended in RAM, not yet in flash
        self.saved = (0, 0, False)     # failures, level, locked as the auth record holds them
        self.nonce = None              # (hex, issued_ms) of the one outstanding nonce
        self.spent = []                # nonces answered before: replays
        self.wall = None               # (utc at base, base ms)
        self.newest = 0
        self.last = {}                 # profile -> utc of the last session that drove the motor
        self.overrides = set()

    # ---- model helpers ----

    def locked(self, in_op=False):
        """The lock as specified; `in_op`: asked by a clinical request, which also writes the
        end of an expired lock to flash (an info request does not write)."""
        if self.lock_start is not None and self.t_ms - self.lock_start >= lock_s(self.level) * 1000:
            self.lock_start = None
            self.failures = 0
            self.expiry_unsaved = True
        if in_op and self.expiry_unsaved:
            self.saved = (0, self.level, False)
            self.expiry_unsaved = False
        return self.lock_start is not None

    def utc(self):
        if self.wall is None:
            return None
        return self.wall[0] + (self.t_ms - self.wall[1]) // 1000

    def fail(self):
        self.failures += 1
        if self.failures >= FAILURES_TO_LOCK:
            self.level += 1
            self.lock_start = self.t_ms
        self.saved = (self.failures, self.level, self.lock_start is not None)
        self.expiry_unsaved = False

    def succeed(self):
        self.failures = 0
        self.level = 0
        self.saved = (0, 0, False)
        self.expiry_unsaved = False

    def fresh_nonce(self):
        """A nonce from the pen (None while locked: then AUTH_LOCKED is checked)."""
        reply = self.rig.request("auth_nonce")
        if self.locked(in_op=True):
            assert reply["code"] == "AUTH_LOCKED", reply
            self.nonce = None
            return None
        assert reply["ok"], reply
        self.nonce = (reply["nonce"], self.t_ms)
        return reply["nonce"]

    def privileged(self, op, args, how="right", nonce=None):
        """Send op with an answer of the kind `how`; check the reply against the model;
        return True if the pen accepted it."""
        if nonce is None:
            nonce = self.fresh_nonce() or "00" * 16
        key, sign_op, sign_args, serial = KEY, op, args, clinicalfix.SERIAL
        if how == "wrong_key":
            key = OTHER_KEY
        elif how == "wrong_op":
            sign_op = "interval_override" if op != "interval_override" else "ceiling_set"
        elif how == "wrong_args":
            sign_args = dict(args, tampered=1)
        elif how == "wrong_serial":
            serial = "SOMEOTHERPEN"
        reply = self.rig.privileged(op, args, key=key, nonce=nonce, sign_op=sign_op, sign_args=sign_args,
                                    serial=serial)
        outstanding = self.nonce
        self.nonce = None              # any answer consumes the outstanding nonce
        if self.locked(in_op=True):
            assert reply["code"] == "AUTH_LOCKED", reply
            return False
        valid = (outstanding is not None and outstanding[0] == nonce
                 and self.t_ms - outstanding[1] < NONCE_MS and nonce not in self.spent)
        self.spent.append(nonce)
        if how == "right" and valid:
            assert reply["ok"], (how, reply)
            self.succeed()
            return True
        assert reply["code"] == "AUTH_FAILED", (how, valid, reply)
        self.fail()
        return False

    # ---- rules ----

    @initialize(clock=st.booleans())
    def start(self, clock):
        if clock:
            self.set_clock("forward", 0)

    @rule(ms=st.one_of(st.integers(0, 40000), st.integers(0, 400000), st.sampled_from([29999, 30000, 60000])),
          serviced=st.booleans())
    def time_passes(self, ms, serviced=True):
        # the app calls service() every loop pass, but a request may come before it has run
        self.rig.clock.advance_ms(ms)
        self.t_ms += ms
        if serviced:
            self.rig.clin.service()

    @rule(days=st.integers(1, 20))
    def days_pass(self, days):
        self.time_passes(days * DAY_S * 1000)

    @rule()
    def power_cut(self):
        self.rig.power_cut()
        self.t_ms = 0
        self.nonce = None
        self.wall = None
        # what the auth record holds comes back; a lock in it starts again, in full
        self.failures, self.level, locked = self.saved
        self.lock_start = 0 if locked else None
        self.expiry_unsaved = False

    @rule()
    def request_nonce(self):
        self.fresh_nonce()

    @rule(depth=st.sampled_from([250, 500, 750, 1000, 2500]),
          how=st.sampled_from(["right", "right", "wrong_key", "wrong_op", "wrong_args", "wrong_serial"]))
    def set_ceiling(self, depth, how):
        if self.privileged("ceiling_set", {"depth_um": depth}, how):
            self.ceiling_um = depth

    @rule(depth=st.sampled_from([750, 1000]), serviced=st.booleans())
    def replay_or_expired_answer(self, depth, serviced):
        # an answer with a nonce the pen no longer holds: replayed, or stale after 30 s
        if self.spent:
            self.privileged("ceiling_set", {"depth_um": depth}, "right", nonce=self.spent[-1])
        nonce = self.fresh_nonce()
        if nonce is not None:
            self.time_passes(NONCE_MS, serviced)
            self.privileged("ceiling_set", {"depth_um": depth}, "right", nonce=nonce)

    @rule(step=st.sampled_from(["forward", "back_free", "back_far", "back_far_key"]),
          amount=st.integers(0, 10 * DAY_S))
    def set_clock(self, step, amount):
        reference = max(self.newest, self.utc() or 0)
        base = reference if reference else T0
        if step == "forward":
            target = base + amount
        elif step == "back_free":
            target = base - amount % (CLOCK_BACK_FREE_S + 1)
        else:
            target = base - CLOCK_BACK_FREE_S - 1 - amount
        needs_key = reference - target > CLOCK_BACK_FREE_S
        if step == "back_far_key":
            if self.privileged("clock_set", {"utc_s": target}):
                self.wall = (target, self.t_ms)
                self.newest = target
            return
        reply = self.rig.request("clock_set", utc_s=target)
        if needs_key:
            assert reply["code"] == "AUTH_REQUIRED", reply
            assert step == "back_far"
            return
        assert reply["ok"], reply
        self.wall = (target, self.t_ms)
        self.newest = max(reference, target)

    @rule(name=st.sampled_from(sorted(PROFILES)), how=st.sampled_from(["right", "wrong_key"]))
    def override(self, name, how):
        if self.privileged("interval_override", {"profile": name}, how):
            self.overrides.add(name)

    @rule(name=st.sampled_from(sorted(PROFILES)), motor_ran=st.booleans())
    def session(self, name, motor_ran):
        days = PROFILES[name]
        self.carts += 1
        cart = "2D%014X" % self.carts
        profile = self.rig.profiles[name]
        code = self.rig.refusal(self.rig.start_session, profile, cart)
        now = self.utc()
        if profile["depth_um"] > self.ceiling_um:
            assert code == "DEPTH_CEILING", code
            return
        if days and now is None:
            assert code == "CLOCK_UNSET", code
            return
        last = self.last.get(name)
        if days and last is not None and now < last + days * DAY_S and name not in self.overrides:
            assert code == "TOO_SOON", (name, now, last, code)
            return
        assert code is None, (name, now, last, code)
        if now is not None:
            previous, had_override = last, name in self.overrides
            self.last[name] = now
            self.newest = max(self.newest, now)
            self.overrides.discard(name)
        self.rig.clin.session_ended(name, motor_ran)
        if now is not None and not motor_ran:
            # not a treatment: its time and its override are given back
            if previous is None:
                del self.last[name]
            else:
                self.last[name] = previous
            if had_override:
                self.overrides.add(name)

    # ---- invariants ----

    @invariant()
    def ceiling_only_moves_with_the_key(self):
        assert self.rig.clin.info()["depth_ceiling_um"] == self.ceiling_um

    @invariant()
    def failure_count_and_lock_as_specified(self):
        locked = self.locked()
        auth = self.rig.clin.auth
        info = self.rig.clin.info()
        assert (info["auth_locked_s"] > 0) == locked, (info, self.failures, self.level, self.lock_start)
        if locked:
            left_ms = lock_s(self.level) * 1000 - (self.t_ms - self.lock_start)
            assert info["auth_locked_s"] == (left_ms + 999) // 1000
        else:
            assert auth.failures == self.failures
        assert auth.level == self.level

    @invariant()
    def wall_clock_as_set(self):
        assert self.rig.clin.utc_now() == self.utc()


def test_clinical_state_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PEN_TEST_TMP", str(tmp_path))
    run_state_machine_as_test(ClinicalMachine, settings=settings(
        max_examples=100, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_nonce_hex_is_what_the_machine_signs():
    # the machine signs with clinicalfix's helper; check it against CPython's own hmac once
    import hashlib
    import hmac

    from pen.auth import mac_message
    nonce = "0f" * 16
    fields = Rig("sig").signed("ceiling_set", {"depth_um": 750}, nonce=nonce)
    expected = hmac.new(KEY, mac_message(unhexlify(nonce), clinicalfix.SERIAL, "ceiling_set", {"depth_um": 750}),
                        hashlib.sha256).hexdigest()
    assert fields["auth"] == {"nonce": nonce, "mac": expected}
