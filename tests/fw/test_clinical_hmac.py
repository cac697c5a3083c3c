# S17: the pen's HMAC-SHA256 (built on hashlib.sha256: MicroPython has no hmac module), its
# constant-time compare, the mac's message layout and the lock lengths. Runs on CPython and
# MicroPython; the host side (CPython's hmac) is checked against this in
# tests/test_clinical_host.py.
from binascii import unhexlify

from pen.auth import equal_ct, hmac_sha256, lock_seconds, mac_message, parse_hex, request_args

# RFC 4231 test cases 1, 2, 3, 4, 6 and 7 (key, data, HMAC-SHA256).
RFC4231 = (
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. "
                    b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
)


def test_s17_hmac_sha256_rfc4231_vectors():
    for key, data, expected in RFC4231:
        assert hmac_sha256(key, data) == unhexlify(expected), expected


def test_s17_mac_message_layout():
    nonce = bytes(range(16))
    message = mac_message(nonce, "SER1", "ceiling_set", {"depth_um": 750})
    assert message == nonce + b"SER1\x00ceiling_set\x00{\"depth_um\": 750}"
    # canonical arguments: sorted keys, the wire's separators, op and auth left out
    body = {"op": "x", "auth": {"nonce": "n", "mac": "m"}, "b": 1, "a": "t"}
    assert request_args(body) == {"a": "t", "b": 1}
    assert mac_message(b"", "S", "x", request_args(body)) == b"S\x00x\x00{\"a\": \"t\", \"b\": 1}"


def test_s17_constant_time_compare_and_hex_parsing():
    assert equal_ct(b"abc", b"abc")
    assert not equal_ct(b"abc", b"abd")
    assert not equal_ct(b"abc", b"ab")
    assert not equal_ct(b"\x00" * 32, b"\x00" * 31 + b"\x01")
    assert parse_hex("00ff" * 4, 8) == b"\x00\xff" * 4
    for bad in ("00FF" * 4, "00ff" * 3, "00ff" * 4 + "0", "zz" * 8, None, 12, b"00ff00ff00ff00ff"):
        assert parse_hex(bad, 8) is None, bad


def test_s17_lock_lengths_double_from_60_s_up_to_a_day():
    assert [lock_seconds(level) for level in range(1, 13)] == [
        60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 30720, 61440, 86400]
    assert lock_seconds(40) == 86400
