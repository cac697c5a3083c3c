# S17: privileged operations need the clinician key through challenge-response: a single-use
# pen nonce that expires after 30 s of pen time; wrong, replayed, expired or mismatched answers
# are refused (AUTH_FAILED); 5 failures lock privileged operations for 60 s, doubling each time
# (AUTH_LOCKED), across power loss; the key is never read back. Runs on CPython and MicroPython.
from clinicalfix import KEY, KEY_ID, OTHER_KEY, TICKS_PERIOD, Rig, hexs


def _ceiling(rig, depth_um=750, **kw):
    return rig.privileged("ceiling_set", {"depth_um": depth_um}, **kw)


def test_s17_nonce_is_16_random_bytes_valid_30_s():
    rig = Rig()
    rig.provision()
    reply = rig.request("auth_nonce")
    assert reply["ok"] and reply["expires_ms"] == 30000
    nonce = reply["nonce"]
    assert len(nonce) == 32 and all(ch in "0123456789abcdef" for ch in nonce)
    others = set(rig.nonce() for _ in range(20))
    assert len(others) == 20 and nonce not in others


def test_s17_right_answer_accepted():
    rig = Rig()
    rig.provision()
    reply = _ceiling(rig)
    assert reply["ok"] and reply["depth_ceiling_um"] == 750
    assert rig.request("ceiling_set", depth_um=1000)["code"] == "AUTH_REQUIRED"


def test_s17_wrong_key_refused():
    rig = Rig()
    rig.provision()
    reply = _ceiling(rig, key=OTHER_KEY)
    assert reply["code"] == "AUTH_FAILED" and "wrong answer" in reply["msg"]
    assert rig.clin.ceiling_um == 500


def test_s17_replayed_answer_refused():
    rig = Rig()
    rig.provision()
    fields = rig.signed("ceiling_set", {"depth_um": 750})
    assert rig.request("ceiling_set", **fields)["ok"]
    replay = rig.request("ceiling_set", **fields)
    assert replay["code"] == "AUTH_FAILED" and "nonce" in replay["msg"]
    # also after a new nonce was issued: the old one stays dead
    rig.nonce()
    assert rig.request("ceiling_set", **fields)["code"] == "AUTH_FAILED"


def test_s17_nonce_consumed_by_a_failed_answer():
    rig = Rig()
    rig.provision()
    nonce = rig.nonce()
    assert _ceiling(rig, key=OTHER_KEY, nonce=nonce)["code"] == "AUTH_FAILED"
    assert _ceiling(rig, nonce=nonce)["code"] == "AUTH_FAILED"     # right key, but too late
    assert _ceiling(rig)["ok"]


def test_s17_new_nonce_replaces_the_outstanding_one():
    rig = Rig()
    rig.provision()
    first = rig.nonce()
    rig.nonce()
    assert _ceiling(rig, nonce=first)["code"] == "AUTH_FAILED"


def test_s17_nonce_expires_after_30_s_of_pen_time():
    rig = Rig()
    rig.provision()
    nonce = rig.nonce()
    rig.clock.advance_ms(29999)
    assert _ceiling(rig, nonce=nonce)["ok"]
    nonce = rig.nonce()
    rig.clock.advance_ms(30000)
    reply = _ceiling(rig, depth_um=1000, nonce=nonce)
    assert reply["code"] == "AUTH_FAILED" and "expired" in reply["msg"]
    assert rig.clin.ceiling_um == 750
    # dropped by service() too, without a request in between
    nonce = rig.nonce()
    rig.clock.advance_ms(30000)
    rig.clin.service()
    assert _ceiling(rig, depth_um=1000, nonce=nonce)["code"] == "AUTH_FAILED"


def test_s17_expiry_holds_across_counter_wraps():
    # pen time crossing 2**30 ms, 2**31 ms and the ticks counter's own wrap
    for start_us in ((1 << 30) * 1000 - 10000000, (1 << 31) * 1000 - 10000000, TICKS_PERIOD - 10000000):
        rig = Rig(start_us=start_us)
        rig.provision()
        nonce = rig.nonce()
        rig.clock.advance_ms(20000)                 # crosses the boundary
        assert _ceiling(rig, nonce=nonce)["ok"], start_us
        nonce = rig.nonce()
        rig.clock.advance_ms(30000)
        assert _ceiling(rig, depth_um=1000, nonce=nonce)["code"] == "AUTH_FAILED", start_us
        # a nonce untouched for exactly one ticks period is not fresh again
        nonce = rig.nonce()
        for _ in range(64):
            rig.clock.advance_ms(TICKS_PERIOD // 64 // 1000)
            rig.clin.service()
        assert _ceiling(rig, depth_um=1000, nonce=nonce)["code"] == "AUTH_FAILED", start_us


def test_s17_mismatched_op_args_or_serial_refused():
    rig = Rig()
    rig.provision()
    rig.profile("crown")
    # signed for another op, other arguments, another pen
    assert _ceiling(rig, sign_op="interval_override")["code"] == "AUTH_FAILED"
    assert _ceiling(rig, sign_args={"depth_um": 500})["code"] == "AUTH_FAILED"
    assert _ceiling(rig, serial="OTHERPEN")["code"] == "AUTH_FAILED"
    assert rig.clin.ceiling_um == 500


def test_s17_malformed_answers_refused_and_counted():
    rig = Rig()
    rig.provision()
    for auth in ({"nonce": rig.nonce()}, {"nonce": rig.nonce(), "mac": "00" * 31},
                 {"nonce": rig.nonce().upper(), "mac": "00" * 32}, "x"):
        reply = rig.request("ceiling_set", depth_um=750, auth=auth)
        assert reply["code"] == "AUTH_FAILED", auth
    assert rig.clin.auth.failures == 4


def _fail(rig, times):
    for _ in range(times):
        assert _ceiling(rig, key=OTHER_KEY)["code"] == "AUTH_FAILED"


def test_s17_five_failures_lock_60_s_then_doubling():
    rig = Rig()
    rig.provision()
    _fail(rig, 4)
    reply = _ceiling(rig, key=OTHER_KEY)
    assert reply["code"] == "AUTH_FAILED" and "locked for 60 s" in reply["msg"]
    for request in (lambda: _ceiling(rig, nonce="00" * 16), lambda: rig.request("auth_nonce")):
        reply = request()
        assert reply["code"] == "AUTH_LOCKED", reply
    assert rig.clin.info()["auth_locked_s"] == 60
    rig.clock.advance_ms(59999)
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    rig.clock.advance_ms(1)
    assert rig.clin.info()["auth_locked_s"] == 0
    # the right key works again; 5 failures now lock for 120 s
    _fail(rig, 5)
    assert rig.clin.info()["auth_locked_s"] == 120
    rig.clock.advance_ms(119999)
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    rig.clock.advance_ms(1)
    _fail(rig, 5)
    assert rig.clin.info()["auth_locked_s"] == 240
    rig.clock.advance_s(240)
    # a success resets the count and the doubling
    assert _ceiling(rig)["ok"]
    _fail(rig, 5)
    assert rig.clin.info()["auth_locked_s"] == 60


def test_s17_lock_refuses_even_the_right_key():
    rig = Rig()
    rig.provision()
    _fail(rig, 5)
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    assert _ceiling(rig, nonce="ab" * 16)["code"] == "AUTH_LOCKED"
    assert rig.clin.ceiling_um == 500


def test_s17_failure_count_survives_power_cut():
    rig = Rig()
    rig.provision()
    _fail(rig, 4)
    rig.power_cut()
    assert rig.clin.auth.failures == 4
    reply = _ceiling(rig, key=OTHER_KEY)
    assert reply["code"] == "AUTH_FAILED" and "locked" in reply["msg"]
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"


def test_s17_lock_survives_power_cut_and_restarts_in_full():
    rig = Rig()
    rig.provision()
    _fail(rig, 5)
    rig.clock.advance_s(50)
    rig.power_cut()
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    assert rig.clin.info()["auth_locked_s"] == 60        # not the 10 s that were left
    rig.clock.advance_s(60)
    assert rig.request("auth_nonce")["ok"]
    # the level survives too: the next lock lasts 120 s
    _fail(rig, 5)
    rig.power_cut()
    assert rig.clin.info()["auth_locked_s"] == 120


def test_s17_unwritable_failure_locks_at_once():
    rig = Rig()
    rig.provision()
    rig.store.fail = True
    reply = _ceiling(rig, key=OTHER_KEY)
    assert reply["code"] == "AUTH_FAILED" and "locked" in reply["msg"]
    rig.store.fail = False
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"


def test_s17_corrupt_auth_record_reads_as_locked():
    rig = Rig()
    rig.provision()
    _fail(rig, 1)
    path = rig.folder + "/data/auth.rec"
    with open(path, "rb") as handle:
        raw = bytearray(handle.read())
    raw[-2] ^= 0x01
    with open(path, "wb") as handle:
        handle.write(raw)
    rig.power_cut()
    assert rig.request("auth_nonce")["code"] == "AUTH_LOCKED"
    assert rig.clin.info()["auth_locked_s"] == 86400


def test_s17_first_provisioning_without_key_then_only_with_it():
    rig = Rig()
    assert rig.clin.info()["key_provisioned"] is False
    assert rig.request("auth_nonce")["code"] == "NO_KEY"
    assert rig.request("ceiling_set", depth_um=750)["code"] == "NO_KEY"
    rig.provision()
    assert rig.clin.info()["key_provisioned"] is True
    # a second provisioning in clear is refused: it needs the current key
    reply = rig.request("key_provision", key=hexs(OTHER_KEY), key_id="fedcba9876543210")
    assert reply["code"] == "AUTH_REQUIRED"
    assert _ceiling(rig)["ok"]                              # still the first key


def _wrapped(rig, new_key, current_key=KEY, key_id="fedcba9876543210"):
    from binascii import unhexlify

    from pen.auth import wrap_keystream
    nonce = rig.nonce()
    stream = wrap_keystream(current_key, unhexlify(nonce))
    wrapped = hexs(bytes([new_key[i] ^ stream[i] for i in range(32)]))
    return rig.signed("key_provision", {"key_wrapped": wrapped, "key_id": key_id}, key=current_key, nonce=nonce)


def test_s17_reprovisioning_with_current_key_wraps_the_new_one():
    rig = Rig()
    rig.provision()
    fields = _wrapped(rig, OTHER_KEY)
    assert hexs(OTHER_KEY) not in repr(fields)              # the new key never travels in clear
    reply = rig.request("key_provision", **fields)
    assert reply["ok"] and reply["key_id"] == "fedcba9876543210"
    assert _ceiling(rig, key=KEY)["code"] == "AUTH_FAILED"
    assert _ceiling(rig, key=OTHER_KEY)["ok"]
    rig.power_cut()
    assert _ceiling(rig, depth_um=1000, key=OTHER_KEY)["ok"]
    # wrapped with the wrong current key: refused, key unchanged
    fields = _wrapped(rig, KEY, current_key=KEY)
    assert rig.request("key_provision", **fields)["code"] == "AUTH_FAILED"
    assert _ceiling(rig, depth_um=1500, key=OTHER_KEY)["ok"]


def test_s17_provisioning_rejects_bad_keys():
    rig = Rig()
    for key in ("00" * 31, "0G" * 32, "AB" * 32, None, 5):
        assert rig.request("key_provision", key=key, key_id=KEY_ID)["code"] == "BAD_REQUEST", key
    assert rig.request("key_provision", key="11" * 32, key_id=KEY_ID)["code"] == "BAD_REQUEST"   # all one byte
    assert rig.request("key_provision", key=hexs(KEY), key_id="xyz")["code"] == "BAD_REQUEST"
    assert rig.clin.info()["key_provisioned"] is False


def test_s17_key_never_read_back():
    rig = Rig()
    rig.provision()
    key_hex = hexs(KEY)
    replies = [rig.request("auth_nonce"), rig.clin.info(), _ceiling(rig), rig.request("audit_read")]
    for op in ("key_read", "key_get", "key"):
        replies.append(rig.request(op))          # no such op: nothing reads the key
    for reply in replies:
        text = repr(reply)
        assert key_hex not in text and key_hex.upper() not in text, text
    info = rig.clin.info()
    assert info["key_provisioned"] is True and "key" not in info and "key_id" not in info


def test_s17_corrupt_key_record_never_reopens_first_provisioning():
    rig = Rig()
    rig.provision()
    path = rig.folder + "/data/key.rec"
    with open(path, "rb") as handle:
        raw = bytearray(handle.read())
    raw[-3] ^= 0x02
    with open(path, "wb") as handle:
        handle.write(raw)
    rig.power_cut()
    assert rig.clin.info()["key_provisioned"] is True
    assert rig.request("key_provision", key=hexs(OTHER_KEY), key_id=KEY_ID)["code"] == "STORE_CORRUPT"
    assert rig.request("auth_nonce")["code"] == "STORE_CORRUPT"
    assert _ceiling(rig, nonce="00" * 16)["code"] == "STORE_CORRUPT"


def test_s17_privileged_ops_refused_while_motor_runs():
    rig = Rig()
    rig.provision()
    rig.running = True
    assert rig.request("auth_nonce")["code"] == "BUSY"
    assert rig.request("clock_set", utc_s=1767225600)["code"] == "BUSY"
    rig.running = False
    assert _ceiling(rig)["ok"]


