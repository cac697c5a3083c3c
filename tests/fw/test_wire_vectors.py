# Golden vectors of the one frame codec (DESIGN 3), checked on CPython (pytest) and
# again on MicroPython (tests/test_on_micropython.py): exact frame bytes for encode
# and decode, stable error codes for malformed frames, and the App answering every
# malformed line with an error response while nothing on the pen changes.
# Common subset only. The vectors are frozen literals in wire_vectors.py.
import os
from binascii import crc32

import fwtest
import wire_vectors as v
from pen import wire

_HEX = "0123456789abcdef"


def _code_of(line):
    """The WireError code decode() raises for `line`, or "OK" (another exception
    propagates and fails the test)."""
    try:
        wire.decode(line)
    except wire.WireError as exc:
        return exc.code
    return "OK"


def _check_codes(cases):
    wrong = []
    for line, code in cases:
        got = _code_of(line)
        if got != code:
            wrong.append((line[:80], code, got))
    assert not wrong, wrong


# ---- golden frames ----


def test_golden_encode_exact_bytes():
    for kind, num, body, frame in v.GOLDEN:
        assert wire.encode(kind, num, body) == frame, (kind, num, frame)


def test_golden_decode_exact_values():
    for kind, num, body, frame in v.GOLDEN:
        expected = (kind, num % 65536, body)
        assert wire.decode(frame) == expected, frame
        assert wire.decode(frame[:-1]) == expected, frame                 # no line ending
        assert wire.decode(frame[:-1] + b"\r\n") == expected, frame       # CR LF
        assert wire.decode(bytearray(frame)) == expected, frame


def test_golden_frames_are_canonical():
    # Independent of the encoder: the frame layout, the CRC and the canonical body text.
    for kind, num, body, frame in v.GOLDEN:
        assert frame[-1:] == b"\n"
        line = frame[:-1]
        for byte in line:
            assert 0x20 <= byte <= 0x7E, frame
        star = line.rfind(b"*")
        crc = line[star + 1:].decode()
        assert len(crc) == 8 and all([ch in _HEX for ch in crc]), frame
        inner = line[1:star]
        assert "%08x" % (crc32(inner) & 0xFFFFFFFF) == crc, frame
        head = "%d,%s,%d," % (2, kind, num % 65536)
        assert inner.decode().startswith(head), frame
        assert wire.dumps(body) == inner.decode()[len(head):], frame


def test_golden_numbers_wrap_at_65536():
    assert wire.encode("Q", 65535, {})[:12] == b'@2,Q,65535,{'
    assert wire.encode("Q", 65536, {})[:8] == b'@2,Q,0,{'
    assert wire.encode("E", 65537, {})[:8] == b'@2,E,1,{'
    assert wire.NUM_MODULO == 65536


def _refused_both_ways(vectors, what):
    for kind, num, body, frame in vectors:
        assert _code_of(frame) == "FRAME_BODY", frame
        try:
            wire.encode(kind, num, body)
        except ValueError:
            pass
        else:
            raise AssertionError("encoded %s: %r" % (what, body))


def test_control_characters_are_refused():
    # The json modules escape them differently (\\b vs \\u0008): none on the wire.
    _refused_both_ways(v.CONTROL, "control characters")


def test_astral_plane_text_is_refused():
    # The interpreters decode surrogate pairs to different strings (1 vs 2
    # characters), so text outside the Basic Multilingual Plane is not on the wire.
    _refused_both_ways(v.ASTRAL, "text outside the BMP")


def test_longest_frame_is_frame_max_bytes():
    assert len(v.MAX_FRAME) - 1 == 2048
    assert wire.encode("Q", 2, v.MAX_BODY) == v.MAX_FRAME
    assert wire.decode(v.MAX_FRAME) == ("Q", 2, v.MAX_BODY)
    longer = {"op": "pad", "p": "x" * (v.MAX_PAD + 1)}
    try:
        wire.encode("Q", 2, longer)
    except ValueError:
        pass
    else:
        raise AssertionError("encode made a frame longer than FRAME_MAX")
    assert _code_of(v.OVER_FRAME) == "FRAME_LONG"


# ---- malformed frames: WireError with a stable code ----


def test_malformed_frames_raise_stable_codes():
    _check_codes(v.MALFORMED)


def test_non_json_bodies_raise_frame_body():
    _check_codes(v.LENIENT_JSON)


def test_non_bytes_input_raises_frame_syntax():
    for value in ('@2,Q,1,{"op": "ping"}*a8fef971', None, 1, [64, 49], ["@"]):
        assert _code_of(value) == "FRAME_SYNTAX", value


def test_wire_error_carries_code_and_message():
    try:
        wire.decode(v.PING[:-1] + b"c")
    except wire.WireError as exc:
        assert exc.code == wire.E_FRAME_CRC == "FRAME_CRC"
        assert isinstance(exc.message, str) and exc.message
    else:
        raise AssertionError("bad CRC accepted")


def test_error_code_names_are_stable():
    assert (wire.E_FRAME_LONG, wire.E_FRAME_SYNTAX, wire.E_FRAME_CRC, wire.E_FRAME_VERSION,
            wire.E_FRAME_CHARS, wire.E_FRAME_BODY) == (
        "FRAME_LONG", "FRAME_SYNTAX", "FRAME_CRC", "FRAME_VERSION", "FRAME_CHARS", "FRAME_BODY")


# ---- the App: an error answer for every malformed line, and no change ----


def _flash(pen):
    folder = pen.folder + "/data"
    found = []
    for name in sorted(os.listdir(folder)):
        with open(folder + "/" + name, "rb") as handle:
            found.append((name, handle.read()))
    return found


def _snapshot(pen):
    app = pen.app
    return (pen.state(), wire.dumps(app.rec.profiles), app.rec.active, app.rec.unlocked, app.rec.cycles,
            wire.dumps(app.rec.used), app.event_seq, _flash(pen))


def _pen():
    pen = fwtest.Pen()
    pen.boot()
    pen.push_profile(name="keep", depth_um=1000, stroke_hz=100, max_session_s=60)
    return pen


def _answer(pen, line):
    """Feed one line; the single frame it produced, decoded."""
    before = len(pen.out.frames)
    pen.app._handle_line(line)
    frames = pen.out.frames[before:]
    assert len(frames) == 1, (line[:80], frames)
    return wire.decode(frames[0])


def _check_refused(pen, line, num, code):
    before = _snapshot(pen)
    errors = pen.app.rx_errors
    kind, got_num, body = _answer(pen, line)
    assert kind == "R" and got_num == num, (line[:80], kind, got_num)
    assert body["ok"] is False and body["code"] == code, (line[:80], body)
    assert isinstance(body["msg"], str) and body["msg"], body
    assert pen.app.rx_errors == errors + 1, line[:80]
    assert _snapshot(pen) == before, line[:80]


def test_app_answers_malformed_lines_with_error_and_changes_nothing():
    pen = _pen()
    for line, code in v.APP_MALFORMED + v.MALFORMED:
        _check_refused(pen, line, 0, code)
    assert pen.request("profile_list")["profiles"][0]["name"] == "keep"
    assert pen.request("profile_list")["active"] == "keep"


def test_app_refuses_responses_and_events():
    pen = _pen()
    for line, num in v.APP_WRONG_KIND:
        _check_refused(pen, line, num, "FRAME_SYNTAX")


def test_app_refuses_non_json_bodies_and_changes_nothing():
    pen = _pen()
    for line in v.APP_LENIENT:
        _check_refused(pen, line, 0, "FRAME_BODY")


def test_app_accepts_the_unbroken_frames():
    # The control: the same requests, well formed, do change the pen (so the checks
    # above would see a change).
    pen = _pen()
    errors = pen.app.rx_errors
    kind, num, body = _answer(pen, v.PUT_EVIL)
    assert (kind, num, body["ok"]) == ("R", 6, True), body
    kind, num, body = _answer(pen, v.RM_KEEP)
    assert (kind, num, body["ok"]) == ("R", 5, True), body
    names = [p["name"] for p in pen.request("profile_list")["profiles"]]
    assert names == ["evil"], names
    assert pen.app.rx_errors == errors


class _Bytes:
    """Serial input that yields the given bytes (a stream that is its own poll object)."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, n):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def register(self, obj, mask):
        pass

    def poll(self, timeout):
        return [1] if self.pos < len(self.data) else []

    def ipoll(self, timeout):
        return iter(self.poll(timeout))


def test_app_receive_oversized_line_is_answered_and_dropped():
    # Through the byte-by-byte receive path: an overlong line is discarded up to its
    # newline, answered with FRAME_LONG, and the next frame is handled normally.
    pen = _pen()
    before = _snapshot(pen)
    errors = pen.app.rx_errors
    feed = _Bytes(b'@2,Q,5,' + b"x" * 3000 + b"\n" + v.RM_KEEP[:-1] + b"d\n" + v.PING + b"\n")
    pen.board._in_stream = feed           # the host's bytes on the pen's USB link
    pen.board._in_poll = feed
    start = len(pen.out.frames)
    for _ in range(200):
        pen.app._receive()
    answers = [wire.decode(frame) for frame in pen.out.frames[start:]]
    answers = [a for a in answers if a[0] == "R"]
    assert [(a[1], a[2]["ok"], a[2].get("code")) for a in answers] == [
        (0, False, "FRAME_LONG"), (0, False, "FRAME_CRC"), (1, True, None)], answers
    assert pen.app.rx_errors == errors + 2
    assert _snapshot(pen) == before
