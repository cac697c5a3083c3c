# Golden vectors of the wire protocol (DESIGN 3), as frozen literals: data only,
# imported by tests/fw/test_wire_vectors.py on CPython and on MicroPython.
#
# Protocol version 2 (telemetry subscriptions, docs/design.md §3.4): the version field and the
# CRC-32 of every vector were updated with zlib.crc32 on the frame text, not with the encoder.
# The frame bytes were taken once from the encoder (CPython; MicroPython and the
# previous hand-written encoder gave the same bytes), reviewed by hand (sorted keys,
# ", " / ": " separators, \uXXXX escapes, CRC-32 as 8 lower-case hex digits) and
# frozen here. Do not regenerate them from the encoder: they are the specification.

# (kind, num given to encode, body, frame). decode() gives back (kind, num % 65536, body).
GOLDEN = [
    ("Q", 1, {"op": "ping"},
     b'@2,Q,1,{"op": "ping"}*a8fef971\n'),
    # max request id; nested dict with unsorted keys
    ("Q", 65535, {"op": "profile_put",
                  "profile": {"stroke_hz": 100, "name": "scalp", "max_session_s": 60, "depth_um": 500}},
     b'@2,Q,65535,{"op": "profile_put", "profile": {"depth_um": 500, "max_session_s": 60,'
     b' "name": "scalp", "stroke_hz": 100}}*11041d22\n'),
    # the id wraps at 65536
    ("Q", 65536, {"op": "ping"},
     b'@2,Q,0,{"op": "ping"}*069668e0\n'),
    ("R", 42, {"ok": False, "code": "DEPTH_RANGE", "msg": "depth 0.20 mm", "field": "depth_um"},
     b'@2,R,42,{"code": "DEPTH_RANGE", "field": "depth_um", "msg": "depth 0.20 mm", "ok": false}*6c8c1e7e\n'),
    # None/True/False, non-ASCII text escaped, a list of dicts
    ("R", 7, {"ok": True, "profiles": [{"name": "caf\u00e9", "depth_um": 250}], "active": None, "flag": True},
     b'@2,R,7,{"active": null, "flag": true, "ok": true,'
     b' "profiles": [{"depth_um": 250, "name": "caf\\u00e9"}]}*a57a25f1\n'),
    # telemetry: a list of ints, negative included
    ("E", 3, {"ev": "tm", "n": 12, "s": [4, 1000, -3, 0, 65535, 2500]},
     b'@2,E,3,{"ev": "tm", "n": 12, "s": [4, 1000, -3, 0, 65535, 2500]}*169ad1ef\n'),
    # DEL and a BMP symbol escaped; event sequence number at its maximum
    ("E", 65535, {"ev": "fault", "code": "OVERCURRENT", "msg": "del\x7fhere \u2603"},
     b'@2,E,65535,{"code": "OVERCURRENT", "ev": "fault", "msg": "del\\u007fhere \\u2603"}*5deab606\n'),
    ("R", 0, {},
     b'@2,R,0,{}*cca359e1\n'),
    # quotes and backslash inside a string (control characters are refused: CONTROL below)
    ("Q", 9, {"op": "x", "ctl": "a b\"q\"\\ /"},
     b'@2,Q,9,{"ctl": "a b\\"q\\"\\\\ /", "op": "x"}*783f5274\n'),
    # deep nesting, mixed lists, key order by code point ("A" < "a" < "z" < U+00E9)
    ("R", 10, {"z": {"y": {"x": [1, "a", None, [2, 3], {"b": 2, "a": 1}]}}, "\u00e9": 1, "A": 0, "a": -1},
     b'@2,R,10,{"A": 0, "a": -1, "z": {"y": {"x": [1, "a", null, [2, 3], {"a": 1, "b": 2}]}},'
     b' "\\u00e9": 1}*3e815a88\n'),
    # "*" and "," inside the body: the CRC is found after the last "*"
    ("Q", 3, {"op": "echo", "m": "a*b,c"},
     b'@2,Q,3,{"m": "a*b,c", "op": "echo"}*a98b16f2\n'),
]

# Text outside the Basic Multilingual Plane travels as a UTF-16 surrogate pair.
# Control characters in text: the two json modules escape them differently, so
# the wire carries none (encode refuses, decode answers FRAME_BODY).
CONTROL = [
    ("Q", 9, {"op": "x", "ctl": "a\tb\nc\x01"},
     b'@2,Q,9,{"ctl": "a\\tb\\nc\\u0001", "op": "x"}*30d9bfbc\n'),
]

ASTRAL = [
    ("E", 65535, {"ev": "fault", "code": "OVERCURRENT", "msg": "del\x7fhere \u2603 \U0001f600"},
     b'@2,E,65535,{"code": "OVERCURRENT", "ev": "fault", "msg": "del\\u007fhere \\u2603 \\ud83d\\ude00"}'
     b'*fa9a9a71\n'),
]

# The longest frame: exactly FRAME_MAX = 2048 bytes before the newline.
MAX_PAD = 2010
MAX_BODY = {"op": "pad", "p": "x" * MAX_PAD}
MAX_FRAME = b'@2,Q,2,{"op": "pad", "p": "' + b"x" * MAX_PAD + b'"}*e66e8a4a\n'
# One byte more, with a correct CRC: too long.
OVER_FRAME = b'@2,Q,2,{"op": "pad", "p": "' + b"x" * (MAX_PAD + 1) + b'"}*3651cef5\n'

PING = b'@2,Q,1,{"op": "ping"}*a8fef971'

# (line, stable error code). Frames marked "crc ok" carry a correct CRC, so the decoder
# gets past the CRC check to the part under test.
MALFORMED = [
    # truncated
    (b"", "FRAME_SYNTAX"),
    (b"\n", "FRAME_SYNTAX"),
    (b"@", "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "pi', "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "ping"}', "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "ping"}*', "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "ping"}*a8fef97', "FRAME_SYNTAX"),
    (b'1,Q,1,{"op": "ping"}*a8fef971', "FRAME_SYNTAX"),           # no "@"
    (b' @2,Q,1,{"op": "ping"}*a8fef971', "FRAME_SYNTAX"),         # leading space
    # CRC
    (b'@2,Q,1,{"op": "ping"}*a8fef970', "FRAME_CRC"),
    (b'@2,Q,1,{"op": "ping"}*00000000', "FRAME_CRC"),
    (b'@2,Q,2,{"op": "ping"}*a8fef971', "FRAME_CRC"),             # body changed, CRC not
    (b'@2,Q,1,{"op": "pinG"}*a8fef971', "FRAME_CRC"),
    (b'@2,Q,1,{"op": "ping"}*a8fef9710', "FRAME_SYNTAX"),         # 9 hex digits
    (b'@2,Q,1,{"op": "ping"}*A8FEF971', "FRAME_SYNTAX"),          # upper-case hex
    (b'@2,Q,1,{"op": "ping"}*a8fEf971', "FRAME_SYNTAX"),          # mixed case
    (b'@2,Q,1,{"op": "ping"}*0xfef971', "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "ping"}*a8fef971 ', "FRAME_SYNTAX"),         # trailing space
    # missing "*"
    (b'@2,Q,1,{"op": "ping"}a8fef971', "FRAME_SYNTAX"),
    (b'@2,Q,1,{"op": "ping"}#a8fef971', "FRAME_SYNTAX"),
    # version (crc ok)
    (b'@3,Q,1,{"op": "ping"}*cd99c237', "FRAME_VERSION"),
    (b'@0,Q,1,{"op": "ping"}*62308ffd', "FRAME_VERSION"),
    (b'@,Q,1,{"op": "ping"}*4dd72631', "FRAME_VERSION"),
    (b'@x,Q,1,{"op": "ping"}*ca13f959', "FRAME_VERSION"),
    (b'@-1,Q,1,{"op": "ping"}*769f4136', "FRAME_VERSION"),
    # kind (crc ok)
    (b'@2,X,1,{"op": "ping"}*50fde19c', "FRAME_SYNTAX"),
    (b'@2,q,1,{"op": "ping"}*f5b84141', "FRAME_SYNTAX"),
    (b'@2,QQ,1,{"op": "ping"}*681c4075', "FRAME_SYNTAX"),
    (b'@2,,1,{"op": "ping"}*f02b500e', "FRAME_SYNTAX"),
    # number (crc ok)
    (b'@2,Q,65536,{"op": "ping"}*c99b2eef', "FRAME_SYNTAX"),
    (b'@2,Q,99999,{"op": "ping"}*f5f28fc0', "FRAME_SYNTAX"),
    (b'@2,Q,100000,{"op": "ping"}*dfdbda2b', "FRAME_SYNTAX"),
    (b'@2,Q,000001,{"op": "ping"}*ee69c824', "FRAME_SYNTAX"),     # six digits
    (b'@2,Q,-1,{"op": "ping"}*d579d095', "FRAME_SYNTAX"),
    (b'@2,Q,,{"op": "ping"}*694c41a8', "FRAME_SYNTAX"),
    (b'@2,Q,1a,{"op": "ping"}*9f69e9dd', "FRAME_SYNTAX"),
    (b'@2,Q, 1,{"op": "ping"}*c7c77387', "FRAME_SYNTAX"),
    # missing fields (crc ok)
    (b'@2,Q,1*f2b6236e', "FRAME_SYNTAX"),
    # body not JSON (crc ok)
    (b'@2,Q,1,*4a227912', "FRAME_BODY"),
    (b'@2,Q,1,{"op": *fff0c67e', "FRAME_BODY"),
    (b'@2,Q,1,ping*b55e1f98', "FRAME_BODY"),
    (b"@2,Q,1,{'op': 'ping'}*7cb75ac4", "FRAME_BODY"),
    (b'@2,Q,1,{"op": "ping"} x*78c665a2', "FRAME_BODY"),
    (b'@2,Q,1,{"op": "ping"}{}*51e315b2', "FRAME_BODY"),
    # body not an object (crc ok)
    (b'@2,Q,1,[1, 2]*ac23a972', "FRAME_BODY"),
    (b'@2,Q,1,"ping"*342549fb', "FRAME_BODY"),
    (b'@2,Q,1,1*702fbc86', "FRAME_BODY"),
    (b'@2,Q,1,null*b540de2a', "FRAME_BODY"),
    (b'@2,Q,1,true*6d776ee8', "FRAME_BODY"),
    # control and non-ASCII bytes (the CRC would be right without them)
    (b'@2,Q,1,{"op":\x01"ping"}*a8fef971', "FRAME_CHARS"),
    (b'\x03@2,Q,1,{"op": "ping"}*a8fef971', "FRAME_CHARS"),        # Ctrl-C
    (b'@2,Q,1,{"op": "ping"}\x18*a8fef971', "FRAME_CHARS"),        # Ctrl-X
    (b'@2,Q,1,{"op": "ping"}*a8fef971\x04', "FRAME_CHARS"),        # Ctrl-D
    (b'@2,Q,1,{"op": "p\x00ing"}*a8fef971', "FRAME_CHARS"),
    (b'@2,Q,1,{"op":\t"ping"}*a8fef971', "FRAME_CHARS"),
    (b'@2,Q,1,{"op": "ping"}\r*a8fef971', "FRAME_CHARS"),          # CR inside the line
    (b'@2,Q,1,{"op": "p\x7fing"}*a8fef971', "FRAME_CHARS"),        # DEL
    (b'@2,Q,1,{"op": "p\xc3\xa9"}*00000000', "FRAME_CHARS"),       # raw UTF-8
    (b'@2,Q,1,{"op": "ping"}*a8fef971\xff', "FRAME_CHARS"),
    # oversized
    (OVER_FRAME, "FRAME_LONG"),
    (b"@" + b"x" * 2048 + b"*00000000", "FRAME_LONG"),
    (b"\x01" * 2049, "FRAME_LONG"),                                 # length is checked first
]

# Bodies that are not JSON (RFC 8259) but that a lenient parser may accept; each
# carries a correct CRC, so only the JSON check can refuse them.
LENIENT_JSON = [
    (b'@2,Q,1,{"op": "ping",}*78bc314a', "FRAME_BODY"),           # trailing comma
    (b'@2,Q,1,{"op" "ping"}*24c2c020', "FRAME_BODY"),             # no colon
    (b'@2,Q,1,{"a": [1 2]}*8043fafa', "FRAME_BODY"),              # no comma in a list
    (b'@2,Q,1,{"a": 01}*08e0cea8', "FRAME_BODY"),                 # leading zero
    (b'@2,Q,1,{"a": "\\x41"}*3d229b81', "FRAME_BODY"),            # invalid escape
    (b'@2,Q,1,{"a": true false}*3268ca3b', "FRAME_BODY"),         # two values
]

# Requests that would change the pen's flash if they were accepted (for the App tests);
# the pen holds a profile named "keep".
RM_KEEP = b'@2,Q,5,{"name": "keep", "op": "profile_rm"}*22a5e8cf'
PUT_EVIL = (b'@2,Q,6,{"op": "profile_put", "profile": {"depth_um": 2500, "max_session_s": 60,'
            b' "name": "evil", "stroke_hz": 100}}*760097ce')
APP_MALFORMED = [
    (RM_KEEP[:-1] + b"d", "FRAME_CRC"),
    (RM_KEEP[:-3], "FRAME_SYNTAX"),
    (RM_KEEP[:20], "FRAME_SYNTAX"),
    (RM_KEEP[:-8] + b"22A5E8CF", "FRAME_SYNTAX"),
    (RM_KEEP.replace(b"*", b"|"), "FRAME_SYNTAX"),
    (RM_KEEP.replace(b": ", b":\x01"), "FRAME_CHARS"),
    (b'@3,Q,5,{"name": "keep", "op": "profile_rm"}*839c6c21', "FRAME_VERSION"),
    (b'@2,Q,65536,{"name": "keep", "op": "profile_rm"}*080c1c0a', "FRAME_SYNTAX"),
    (PUT_EVIL[:-1] + b"9", "FRAME_CRC"),
    (PUT_EVIL[:-40], "FRAME_SYNTAX"),
    (b'@2,Q,6,' + b"x" * 2050, "FRAME_LONG"),
]
# Well-formed frames of the wrong kind: the pen only accepts requests; the answer
# echoes the frame's number.
APP_WRONG_KIND = [
    (b'@2,R,5,{"name": "keep", "op": "profile_rm"}*08195847', 5),
    (b'@2,E,5,{"name": "keep", "op": "profile_rm"}*06c3a8ee', 5),
]
# Not JSON (a trailing comma; no colons), correct CRC: to be refused as FRAME_BODY.
APP_LENIENT = [
    b'@2,Q,5,{"op": "profile_rm", "name": "keep",}*23f18324',
    b'@2,Q,5,{"op" "profile_rm", "name" "keep"}*1430bbdf',
]
