# S18: sessions with a profile that has min_interval_days > 0 are refused (TOO_SOON, the
# message gives the earliest allowed date) while the last session with that profile that drove
# the motor is younger than the interval, and refused (CLOCK_UNSET) while the pen's wall clock is
# unset. Setting the clock back by more than one hour needs the clinician key. One early session
# may be allowed with the key (interval override), and is logged. Runs on CPython and
# MicroPython.
from clinicalfix import DAY_S, OTHER_KEY, T0, Rig

CART = "2D0000000000%04X"


def _carts():
    n = [0]

    def next_cart():
        n[0] += 1
        return CART % n[0]
    return next_cart


def test_s18_min_interval_days_validation():
    from pen.clinical import check_min_interval_days
    from pen.profiles import ProfileError
    for days in (0, 1, 14, 90):
        assert check_min_interval_days(days) == days
    for days in (-1, 91, 1000, "14", 14.0, True, None):
        try:
            check_min_interval_days(days)
        except ProfileError as exc:
            assert exc.code == "INTERVAL_RANGE" and exc.field == "min_interval_days"
        else:
            raise AssertionError("accepted %r" % (days,))


def test_s18_utc_dates_in_messages():
    from pen.clinical import utc_text
    assert utc_text(0) == "1970-01-01 00:00:00 UTC"
    assert utc_text(951782400) == "2000-02-29 00:00:00 UTC"
    assert utc_text(T0 + 14 * DAY_S + 3661) == "2026-01-15 01:01:01 UTC"
    assert utc_text(4102444799) == "2099-12-31 23:59:59 UTC"


def test_s18_clock_unset_refuses_interval_profiles_only():
    rig = Rig()
    cart = _carts()
    assert rig.clin.info()["wall_clock_set"] is False and "utc_s" not in rig.clin.info()
    weekly = rig.profile("weekly", days=7)
    assert rig.refusal(rig.start_session, weekly, cart()) == "CLOCK_UNSET"
    assert rig.refusal(rig.start_session, rig.profile("plain", days=0), cart()) is None
    assert rig.request("clock_set", utc_s=T0)["ok"]
    assert rig.clin.info()["wall_clock_set"] is True and rig.clin.info()["utc_s"] == T0
    assert rig.refusal(rig.start_session, weekly, cart()) is None


def test_s18_clock_lost_at_power_cut():
    rig = Rig()
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.clock.advance_s(100)
    assert rig.clin.utc_now() == T0 + 100
    rig.power_cut()
    assert rig.clin.utc_now() is None
    assert rig.refusal(rig.start_session, rig.profile("w", days=7), CART % 1) == "CLOCK_UNSET"


def test_s18_too_soon_until_the_interval_has_passed():
    rig = Rig()
    cart = _carts()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, cart())
    rig.clock.advance_s(14 * DAY_S - 1)
    try:
        rig.start_session(profile, cart())
    except Exception as exc:
        assert exc.code == "TOO_SOON"
        assert "2026-01-15 00:00:00 UTC" in exc.message, exc.message
        assert "2026-01-01 00:00:00 UTC" in exc.message
    else:
        raise AssertionError("session inside the interval allowed")
    rig.clock.advance_s(1)
    assert rig.refusal(rig.start_session, profile, cart()) is None
    # another profile has its own history
    assert rig.refusal(rig.start_session, rig.profile("temples", days=14), cart()) is None


def test_s18_refusal_leaves_the_cartridge_unmarked():
    rig = Rig()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, CART % 1)
    rig.board.insert(CART % 2)
    assert rig.refusal(rig.clin.check_session, profile, CART % 2) == "TOO_SOON"
    assert CART % 2 not in rig.board.marks


def test_s18_session_without_motor_does_not_count_but_aborted_one_does():
    rig = Rig()
    cart = _carts()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, cart(), motor_ran=False)       # e.g. cartridge out while positioning
    rig.clock.advance_s(60)
    rig.session(profile, cart(), motor_ran=True)         # aborted after the motor ran: a treatment
    rig.clock.advance_s(60)
    assert rig.refusal(rig.start_session, profile, cart()) == "TOO_SOON"


def test_s18_power_cut_mid_session_counts_as_a_treatment():
    rig = Rig()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.start_session(profile, CART % 1)                 # motor starts; then the power goes
    rig.power_cut()
    assert rig.request("clock_set", utc_s=T0 + 3600)["ok"]
    assert rig.refusal(rig.start_session, profile, CART % 2) == "TOO_SOON"


def test_s18_override_allows_exactly_one_early_session():
    rig = Rig()
    rig.provision()
    cart = _carts()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, cart())
    rig.clock.advance_s(DAY_S)
    assert rig.request("interval_override", profile="crown")["code"] == "AUTH_REQUIRED"
    assert rig.privileged("interval_override", {"profile": "crown"}, key=OTHER_KEY)["code"] == "AUTH_FAILED"
    assert rig.refusal(rig.start_session, profile, cart()) == "TOO_SOON"
    assert rig.privileged("interval_override", {"profile": "crown"})["ok"]
    rig.power_cut()                                      # the override is in flash
    assert rig.request("clock_set", utc_s=T0 + DAY_S)["ok"]
    assert rig.refusal(rig.start_session, profile, cart()) is None
    rig.clin.session_ended("crown", True)
    rig.clock.advance_s(60)
    assert rig.refusal(rig.start_session, profile, cart()) == "TOO_SOON"
    used = [e for e in rig.audit() if e["kind"] == "interval_override_used"]
    assert len(used) == 1 and used[0]["profile"] == "crown" and used[0]["early"] is True


def test_s18_override_given_back_when_the_motor_never_ran():
    rig = Rig()
    rig.provision()
    cart = _carts()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, cart())
    assert rig.privileged("interval_override", {"profile": "crown"})["ok"]
    rig.session(profile, cart(), motor_ran=False)
    assert rig.refusal(rig.start_session, profile, cart()) is None      # still one early session
    rig.clin.session_ended("crown", True)
    assert rig.refusal(rig.start_session, profile, cart()) == "TOO_SOON"


def test_s18_override_needs_a_known_profile():
    rig = Rig()
    rig.provision()
    assert rig.privileged("interval_override", {"profile": "nope"})["code"] == "UNKNOWN_PROFILE"
    assert rig.privileged("interval_override", {"profile": "Bad Name"})["code"] == "NAME_INVALID"


def test_s18_clock_back_within_an_hour_is_free_beyond_needs_the_key():
    rig = Rig()
    rig.provision()
    assert rig.request("clock_set", utc_s=T0)["ok"]
    assert rig.request("clock_set", utc_s=T0 - 3600)["ok"]          # back exactly one hour
    reply = rig.request("clock_set", utc_s=T0 - 3601)               # newest seen is still T0
    assert reply["code"] == "AUTH_REQUIRED" and "2026-01-01 00:00:00 UTC" in reply["msg"]
    assert rig.privileged("clock_set", {"utc_s": T0 - 3601}, key=OTHER_KEY)["code"] == "AUTH_FAILED"
    assert rig.clin.utc_now() == T0 - 3600
    assert rig.privileged("clock_set", {"utc_s": T0 - 7 * DAY_S})["ok"]
    assert rig.clin.utc_now() == T0 - 7 * DAY_S
    # forward is always free
    assert rig.request("clock_set", utc_s=T0 + 30 * DAY_S)["ok"]


def test_s18_small_steps_back_cannot_add_up():
    rig = Rig()
    assert rig.request("clock_set", utc_s=T0)["ok"]
    assert rig.request("clock_set", utc_s=T0 - 3000)["ok"]
    assert rig.request("clock_set", utc_s=T0 - 3600)["ok"]
    assert rig.request("clock_set", utc_s=T0 - 4000)["code"] == "AUTH_REQUIRED"


def test_s18_newest_time_survives_power_cut():
    rig = Rig()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.clock.advance_s(10 * DAY_S)
    rig.session(profile, CART % 1)                       # records T0 + 10 days
    rig.power_cut()
    assert rig.request("clock_set", utc_s=T0 + 10 * DAY_S - 3601)["code"] == "AUTH_REQUIRED"
    assert rig.request("clock_set", utc_s=T0 + 10 * DAY_S - 3600)["ok"]


def test_s18_clock_set_checks_its_argument():
    rig = Rig()
    # (floats never reach the pen: only integers are canonical on the wire)
    for utc in (None, "1767225600", 0, 1577836799, 4102444801, True, -T0):
        assert rig.request("clock_set", utc_s=utc)["code"] == "BAD_REQUEST", utc
    assert rig.request("clock_set", utc_s=T0, extra=1)["code"] == "BAD_REQUEST"
    assert rig.clin.utc_now() is None


def test_s18_unreadable_interval_record_fails_closed():
    rig = Rig()
    rig.provision()
    cart = _carts()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.session(profile, cart())
    path = rig.folder + "/data/interval.rec"
    with open(path, "rb") as handle:
        raw = bytearray(handle.read())
    raw[-4] ^= 0x01
    with open(path, "wb") as handle:
        handle.write(raw)
    rig.power_cut()
    assert rig.request("clock_set", utc_s=T0 + DAY_S)["code"] == "AUTH_REQUIRED"
    assert rig.refusal(rig.start_session, profile, cart()) == "STORE_CORRUPT"
    assert rig.refusal(rig.start_session, rig.profile("plain"), cart()) is None
    assert rig.privileged("interval_override", {"profile": "crown"})["code"] == "STORE_CORRUPT"
    # the clinician starts a new record with the key; that is logged
    assert rig.privileged("clock_set", {"utc_s": T0 + DAY_S})["ok"]
    entry = [e for e in rig.audit() if e["kind"] == "clock_set"][-1]
    assert entry["interval_reset"] is True and entry["auth"] is True
    assert rig.refusal(rig.start_session, profile, cart()) is None


def test_s18_interval_not_recorded_when_the_record_cannot_be_written():
    rig = Rig()
    profile = rig.profile("crown", days=14)
    assert rig.request("clock_set", utc_s=T0)["ok"]
    rig.store.fail = True
    assert rig.refusal(rig.start_session, profile, CART % 1) == "STORE"
    rig.store.fail = False
    assert rig.clin.intervals.record["last"] == {}
