# Golden vectors of the wire protocol (DESIGN 3), as frozen literals: data only,
# imported by tests/fw/test_wire_vectors.py on CPython and on MicroPython.
#
# The frame bytes were taken once from the encoder (CPython; MicroPython and the
# previous hand-written encoder gave the same bytes), reviewed by hand (sorted keys,
# ", " / ": " separators, \uXXXX escapes, CRC-32 as 8 lower-case hex digits) and
# frozen here. Do not regenerate them from the encoder: they are the specification.

# (kind, num given to encode, body, frame). decode() gives back (kind, num % 65536, body).
GOLDEN = [
    ("Q", 1, {"op": "ping"},
     b'@1,Q,1,{"op": "ping"}*0757b4bb\n'),
    # max request id; nested dict with unsorted keys
    ("Q", 65535, {"op": "profile_put",
                  "profile": {"stroke_hz": 100, "name": "scalp", "max_session_s": 60, "depth_um": 500}},
     b'@1,Q,65535,{"op": "profile_put", "profile": {"depth_um": 500, "max_session_s": 60,'
     b' "name": "scalp", "stroke_hz": 100}}*39040d17\n'),
    # the id wraps at 65536
    ("Q", 65536, {"op": "ping"},
     b'@1,Q,0,{"op": "ping"}*a93f252a\n'),
    ("R", 42, {"ok": False, "code": "DEPTH_RANGE", "msg": "depth 0.20 mm", "field": "depth_um"},
     b'@1,R,42,{"code": "DEPTH_RANGE", "field": "depth_um", "msg": "depth 0.20 mm", "ok": false}*94c3c655\n'),
    # None/True/False, non-ASCII text escaped, a list of dicts
    ("R", 7, {"ok": True, "profiles": [{"name": "caf\u00e9", "depth_um": 250}], "active": None, "flag": True},
     b'@1,R,7,{"active": null, "flag": true, "ok": true,'
     b' "profiles": [{"depth_um": 250, "name": "caf\\u00e9"}]}*a5320967\n'),
    # telemetry: a list of ints, negative included
    ("E", 3, {"ev": "tm", "n": 12, "s": [4, 1000, -3, 0, 65535, 2500]},
     b'@1,E,3,{"ev": "tm", "n": 12, "s": [4, 1000, -3, 0, 65535, 2500]}*e74f6e8b\n'),
    # DEL and a BMP symbol escaped; event sequence number at its maximum
    ("E", 65535, {"ev": "fault", "code": "OVERCURRENT", "msg": "del\x7fhere \u2603"},
     b'@1,E,65535,{"code": "OVERCURRENT", "ev": "fault", "msg": "del\\u007fhere \\u2603"}*81e12ff5\n'),
    ("R", 0, {},
     b'@1,R,0,{}*422c5e02\n'),
    # quotes and backslash inside a string (control characters are refused: CONTROL below)
    ("Q", 9, {"op": "x", "ctl": "a b\"q\"\\ /"},
     b'@1,Q,9,{"ctl": "a b\\"q\\"\\\\ /", "op": "x"}*5283e2fc\n'),
    # deep nesting, mixed lists, key order by code point ("A" < "a" < "z" < U+00E9)
    ("R", 10, {"z": {"y": {"x": [1, "a", None, [2, 3], {"b": 2, "a": 1}]}}, "\u00e9": 1, "A": 0, "a": -1},
     b'@1,R,10,{"A": 0, "a": -1, "z": {"y": {"x": [1, "a", null, [2, 3], {"a": 1, "b": 2}]}},'
     b' "\\u00e9": 1}*81cfe571\n'),
    # "*" and "," inside the body: the CRC is found after the last "*"
    ("Q", 3, {"op": "echo", "m": "a*b,c"},
     b'@1,Q,3,{"m": "a*b,c", "op": "echo"}*c40de5a8\n'),
]

# Text outside the Basic Multilingual Plane travels as a UTF-16 surrogate pair.
# Control characters in text: the two json modules escape them differently, so
# the wire carries none (encode refuses, decode answers FRAME_BODY).
CONTROL = [
    ("Q", 9, {"op": "x", "ctl": "a\tb\nc\x01"},
     b'@1,Q,9,{"ctl": "a\\tb\\nc\\u0001", "op": "x"}*d390081e\n'),
]

ASTRAL = [
    ("E", 65535, {"ev": "fault", "code": "OVERCURRENT", "msg": "del\x7fhere \u2603 \U0001f600"},
     b'@1,E,65535,{"code": "OVERCURRENT", "ev": "fault", "msg": "del\\u007fhere \\u2603 \\ud83d\\ude00"}'
     b'*cab4ff22\n'),
]

# The longest frame: exactly FRAME_MAX = 2048 bytes before the newline.
MAX_PAD = 2010
MAX_BODY = {"op": "pad", "p": "x" * MAX_PAD}
MAX_FRAME = b'@1,Q,2,{"op": "pad", "p": "' + b"x" * MAX_PAD + b'"}*1f907bab\n'
# One byte more, with a correct CRC: too long.
OVER_FRAME = b'@1,Q,2,{"op": "pad", "p": "' + b"x" * (MAX_PAD + 1) + b'"}*e1a5e2ea\n'

PING = b'@1,Q,1,{"op": "ping"}*0757b4bb'

# (line, stable error code). Frames marked "crc ok" carry a correct CRC, so the decoder
# gets past the CRC check to the part under test.
MALFORMED = [
    # truncated
    (b"", "FRAME_SYNTAX"),
    (b"\n", "FRAME_SYNTAX"),
    (b"@", "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "pi', "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "ping"}', "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "ping"}*', "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "ping"}*0757b4b', "FRAME_SYNTAX"),
    (b'1,Q,1,{"op": "ping"}*0757b4bb', "FRAME_SYNTAX"),           # no "@"
    (b' @1,Q,1,{"op": "ping"}*0757b4bb', "FRAME_SYNTAX"),         # leading space
    # CRC
    (b'@1,Q,1,{"op": "ping"}*0757b4bc', "FRAME_CRC"),
    (b'@1,Q,1,{"op": "ping"}*00000000', "FRAME_CRC"),
    (b'@1,Q,2,{"op": "ping"}*0757b4bb', "FRAME_CRC"),             # body changed, CRC not
    (b'@1,Q,1,{"op": "pinG"}*0757b4bb', "FRAME_CRC"),
    (b'@1,Q,1,{"op": "ping"}*0757b4bb0', "FRAME_SYNTAX"),         # 9 hex digits
    (b'@1,Q,1,{"op": "ping"}*0757B4BB', "FRAME_SYNTAX"),          # upper-case hex
    (b'@1,Q,1,{"op": "ping"}*0757b4bB', "FRAME_SYNTAX"),          # mixed case
    (b'@1,Q,1,{"op": "ping"}*0x57b4bb', "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "ping"}*0757b4bb ', "FRAME_SYNTAX"),         # trailing space
    # missing "*"
    (b'@1,Q,1,{"op": "ping"}0757b4bb', "FRAME_SYNTAX"),
    (b'@1,Q,1,{"op": "ping"}#0757b4bb', "FRAME_SYNTAX"),
    # version (crc ok)
    (b'@2,Q,1,{"op": "ping"}*a8fef971', "FRAME_VERSION"),
    (b'@0,Q,1,{"op": "ping"}*62308ffd', "FRAME_VERSION"),
    (b'@,Q,1,{"op": "ping"}*4dd72631', "FRAME_VERSION"),
    (b'@x,Q,1,{"op": "ping"}*ca13f959', "FRAME_VERSION"),
    (b'@-1,Q,1,{"op": "ping"}*769f4136', "FRAME_VERSION"),
    # kind (crc ok)
    (b'@1,X,1,{"op": "ping"}*ff54ac56', "FRAME_SYNTAX"),
    (b'@1,q,1,{"op": "ping"}*5a110c8b', "FRAME_SYNTAX"),
    (b'@1,QQ,1,{"op": "ping"}*1302c296', "FRAME_SYNTAX"),
    (b'@1,,1,{"op": "ping"}*537dd6a7', "FRAME_SYNTAX"),
    # number (crc ok)
    (b'@1,Q,65536,{"op": "ping"}*918587c7', "FRAME_SYNTAX"),
    (b'@1,Q,99999,{"op": "ping"}*adec26e8', "FRAME_SYNTAX"),
    (b'@1,Q,100000,{"op": "ping"}*ea366c78', "FRAME_SYNTAX"),
    (b'@1,Q,000001,{"op": "ping"}*db847e77', "FRAME_SYNTAX"),     # six digits
    (b'@1,Q,-1,{"op": "ping"}*ae675276', "FRAME_SYNTAX"),
    (b'@1,Q,,{"op": "ping"}*ca1ac701', "FRAME_SYNTAX"),
    (b'@1,Q,1a,{"op": "ping"}*e4776b3e', "FRAME_SYNTAX"),
    (b'@1,Q, 1,{"op": "ping"}*bcd9f164', "FRAME_SYNTAX"),
    # missing fields (crc ok)
    (b'@1,Q,1*b51659be', "FRAME_SYNTAX"),
    # body not JSON (crc ok)
    (b'@1,Q,1,*ccb60bbc', "FRAME_BODY"),
    (b'@1,Q,1,{"op": *423aaab0', "FRAME_BODY"),
    (b'@1,Q,1,ping*5e69a49b', "FRAME_BODY"),
    (b"@1,Q,1,{'op': 'ping'}*d31e170e", "FRAME_BODY"),
    (b'@1,Q,1,{"op": "ping"} x*41bec8e2', "FRAME_BODY"),
    (b'@1,Q,1,{"op": "ping"}{}*689bb8f2', "FRAME_BODY"),
    # body not an object (crc ok)
    (b'@1,Q,1,[1, 2]*dbbd7b82', "FRAME_BODY"),
    (b'@1,Q,1,"ping"*43bb9b0b', "FRAME_BODY"),
    (b'@1,Q,1,1*41c7a61b', "FRAME_BODY"),
    (b'@1,Q,1,null*5e776529', "FRAME_BODY"),
    (b'@1,Q,1,true*8640d5eb', "FRAME_BODY"),
    # control and non-ASCII bytes (the CRC would be right without them)
    (b'@1,Q,1,{"op":\x01"ping"}*0757b4bb', "FRAME_CHARS"),
    (b'\x03@1,Q,1,{"op": "ping"}*0757b4bb', "FRAME_CHARS"),        # Ctrl-C
    (b'@1,Q,1,{"op": "ping"}\x18*0757b4bb', "FRAME_CHARS"),        # Ctrl-X
    (b'@1,Q,1,{"op": "ping"}*0757b4bb\x04', "FRAME_CHARS"),        # Ctrl-D
    (b'@1,Q,1,{"op": "p\x00ing"}*0757b4bb', "FRAME_CHARS"),
    (b'@1,Q,1,{"op":\t"ping"}*0757b4bb', "FRAME_CHARS"),
    (b'@1,Q,1,{"op": "ping"}\r*0757b4bb', "FRAME_CHARS"),          # CR inside the line
    (b'@1,Q,1,{"op": "p\x7fing"}*0757b4bb', "FRAME_CHARS"),        # DEL
    (b'@1,Q,1,{"op": "p\xc3\xa9"}*00000000', "FRAME_CHARS"),       # raw UTF-8
    (b'@1,Q,1,{"op": "ping"}*0757b4bb\xff', "FRAME_CHARS"),
    # oversized
    (OVER_FRAME, "FRAME_LONG"),
    (b"@" + b"x" * 2048 + b"*00000000", "FRAME_LONG"),
    (b"\x01" * 2049, "FRAME_LONG"),                                 # length is checked first
]

# Bodies that are not JSON (RFC 8259) but that a lenient parser may accept; each
# carries a correct CRC, so only the JSON check can refuse them.
LENIENT_JSON = [
    (b'@1,Q,1,{"op": "ping",}*03a2b3a9', "FRAME_BODY"),           # trailing comma
    (b'@1,Q,1,{"op" "ping"}*87944689', "FRAME_BODY"),             # no colon
    (b'@1,Q,1,{"a": [1 2]}*6ac52798', "FRAME_BODY"),              # no comma in a list
    (b'@1,Q,1,{"a": 01}*199da4d1', "FRAME_BODY"),                 # leading zero
    (b'@1,Q,1,{"a": "\\x41"}*9e741d28', "FRAME_BODY"),            # invalid escape
    (b'@1,Q,1,{"a": true false}*448df306', "FRAME_BODY"),         # two values
]

# Requests that would change the pen's flash if they were accepted (for the App tests);
# the pen holds a profile named "keep".
RM_KEEP = b'@1,Q,5,{"name": "keep", "op": "profile_rm"}*1a9e63bc'
PUT_EVIL = (b'@1,Q,6,{"op": "profile_put", "profile": {"depth_um": 2500, "max_session_s": 60,'
            b' "name": "evil", "stroke_hz": 100}}*7789ee98')
APP_MALFORMED = [
    (RM_KEEP[:-1] + b"d", "FRAME_CRC"),
    (RM_KEEP[:-3], "FRAME_SYNTAX"),
    (RM_KEEP[:20], "FRAME_SYNTAX"),
    (RM_KEEP[:-8] + b"1A9E63BC", "FRAME_SYNTAX"),
    (RM_KEEP.replace(b"*", b"|"), "FRAME_SYNTAX"),
    (RM_KEEP.replace(b": ", b":\x01"), "FRAME_CHARS"),
    (b'@2,Q,5,{"name": "keep", "op": "profile_rm"}*22a5e8cf', "FRAME_VERSION"),
    (b'@1,Q,65536,{"name": "keep", "op": "profile_rm"}*8856b0bf', "FRAME_SYNTAX"),
    (PUT_EVIL[:-1] + b"9", "FRAME_CRC"),
    (PUT_EVIL[:-40], "FRAME_SYNTAX"),
    (b"@1,Q,6," + b"x" * 2050, "FRAME_LONG"),
]
# Well-formed frames of the wrong kind: the pen only accepts requests; the answer
# echoes the frame's number.
APP_WRONG_KIND = [
    (b'@1,R,5,{"name": "keep", "op": "profile_rm"}*3022d334', 5),
    (b'@1,E,5,{"name": "keep", "op": "profile_rm"}*3ef8239d', 5),
]
# Not JSON (a trailing comma; no colons), correct CRC: to be refused as FRAME_BODY.
APP_LENIENT = [
    b'@1,Q,5,{"op": "profile_rm", "name": "keep",}*eac59829',
    b'@1,Q,5,{"op" "profile_rm", "name" "keep"}*3e8c0b57',
]
