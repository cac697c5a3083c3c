# The one frame codec of the pen protocol (docs/design.md §3), shared by the firmware
# (MicroPython) and the host (CPython): written in the common subset.
#
# Frame (one line, printable ASCII 0x20..0x7e only, then "\n"):
#     "@" VER "," KIND "," NUM "," BODY "*" CRC
# VER   protocol version (decimal)
# KIND  "Q" request (host->pen), "R" response, "E" event (pen->host)
# NUM   request id (Q/R, the response echoes it) or event sequence number (E),
#       decimal 0..65535
# BODY  JSON object, canonical: sorted keys, ", " / ": " separators, integers
#       only (no floats on the wire: integer units), non-ASCII escaped as \uXXXX
# CRC   CRC-32 (IEEE, binascii.crc32) of the bytes between "@" and "*", as
#       8 lower-case hex digits
# Control bytes never appear, so the MicroPython REPL and mpremote (Ctrl-A..E,
# Ctrl-X) keep working on the same channel.
import json

try:
    from collections import OrderedDict
except ImportError:  # pragma: no cover - MicroPython without the collections module
    from ucollections import OrderedDict  # type: ignore

try:
    from binascii import crc32
except ImportError:  # pragma: no cover - every supported interpreter has it
    from zlib import crc32  # type: ignore

try:
    from micropython import const
except ImportError:
    def const(value):
        return value

from .limits import FRAME_MAX, PROTOCOL_VERSION

KIND_REQUEST = "Q"
KIND_RESPONSE = "R"
KIND_EVENT = "E"
_KINDS = "QRE"
NUM_MODULO = const(65536)

# Pen states by index, as telemetry samples carry them (docs/design.md §2.2).
STATE_NAMES = ("BOOT", "LOCKED", "STERILISING", "READY", "RUNNING", "FAULT")

# Frame-level error codes (all codes are defined in pen.proto).
from .proto import E_FRAME_BODY, E_FRAME_CHARS, E_FRAME_CRC, E_FRAME_LONG, E_FRAME_SYNTAX, E_FRAME_VERSION  # noqa: E402,F401


class WireError(Exception):
    """A frame could not be decoded. `code` is a stable error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# CPython: leave non-ASCII raw, as MicroPython's json.dumps does (it has no
# ensure_ascii), so the one escaping step in dumps() serves both.
_json_dumps = getattr(json, "dumps")
try:
    _json_dumps("", ensure_ascii=False)
    _DUMPS_OPTIONS = {"ensure_ascii": False}
except TypeError:
    _DUMPS_OPTIONS = {}


# How the json modules escape control characters (CPython: \\b \\f ..., MicroPython:
# \\u0008 ...): they differ, so the wire carries no control characters at all.
_CONTROL_ESCAPES = ("\\u00", "\\b", "\\f", "\\n", "\\r", "\\t")


def _canonical(value, _type=type, _str=str, _int=int, _bool=bool, _dict=dict, _list=list, _tuple=tuple):
    """`value` with every dict replaced by an OrderedDict in sorted key order, so one
    json.dumps call (C code on MicroPython) gives the canonical text. The sort and the
    OrderedDict are built in C from the items; Python only checks each value's type. The
    builtins are bound as defaults (locals): looked up in the module's globals for each
    value they cost as much as the rest (the pen's CPU answers `info` within its budget
    because of it)."""
    kind = _type(value)
    if kind is _dict:
        items = sorted(value.items())     # keys are unique: only the keys get compared
        for index in range(len(items)):
            key, item = items[index]
            if _type(key) is not _str:
                raise TypeError("frame keys must be str")
            item_kind = _type(item)
            if item_kind is _dict or item_kind is _list or item_kind is _tuple:
                items[index] = (key, _canonical(item))
            elif not (item_kind is _int or item_kind is _str or item_kind is _bool or item is None):
                raise TypeError("not encodable on the wire: %s" % item_kind.__name__)
        return OrderedDict(items)
    if kind is _list or kind is _tuple:
        for item in value:
            if _type(item) is not _int:
                return [_canonical(item) for item in value]
        return value                      # a list of ints (telemetry) as it is
    if value is None or kind is _int or kind is _str or kind is _bool:
        return value
    raise TypeError("not encodable on the wire: %s" % kind.__name__)


def dumps(value) -> str:
    """Canonical JSON text of `value` (dict/list/tuple/str/int/bool/None): sorted keys,
    ", " / ": " separators, printable ASCII (non-ASCII and DEL as \\uXXXX)."""
    out = _json_dumps(_canonical(value), **_DUMPS_OPTIONS)
    if "\\" in out:
        # Drop escaped backslashes; any escape left that is a control character's
        # is refused (non-ASCII stays raw from both json modules, so "\\u00" is one).
        unescaped = out.replace("\\\\", "")
        for escape in _CONTROL_ESCAPES:
            if escape in unescaped:
                raise ValueError("control characters cannot go on the wire")
    # Both json modules leave non-ASCII (and DEL) raw: escape it here, the same way
    # on both, so the wire stays printable ASCII. The check runs in C: the common
    # (ASCII) case costs nothing more.
    if len(out.encode()) == len(out) and "\x7f" not in out:
        return out
    parts = []
    for ch in out:
        code = ord(ch)
        if code < 0x7F:
            parts.append(ch)
        elif code < 0x10000 and not 0xD800 <= code < 0xE000:
            parts.append("\\u%04x" % code)
        else:
            # Outside the Basic Multilingual Plane (or a lone surrogate): the two
            # interpreters would decode it differently, so the protocol has none.
            raise ValueError("text outside the Basic Multilingual Plane cannot go on the wire")
    return "".join(parts)


def encode(kind, num, body):
    """Frame bytes (with trailing newline) for `body` (a dict)."""
    if kind not in _KINDS or len(kind) != 1:
        raise ValueError("bad frame kind")
    inner = "%d,%s,%d,%s" % (PROTOCOL_VERSION, kind, num % NUM_MODULO, dumps(body))
    data = inner.encode()
    if len(data) + 10 > FRAME_MAX:
        raise ValueError("frame too long")
    return b"@" + data + b"*" + ("%08x" % (crc32(data) & 0xFFFFFFFF)).encode() + b"\n"


def _is_hex8(text):
    return len(text) == 8 and not text.strip("0123456789abcdef")


def decode(line):
    """Decode one frame (bytes, with or without the line ending).

    Returns (kind, num, body). Raises WireError for anything malformed; never
    raises anything else, whatever the input.
    """
    if not isinstance(line, (bytes, bytearray)):
        raise WireError(E_FRAME_SYNTAX, "frame must be bytes")
    end = len(line)
    while end and line[end - 1] in (10, 13):
        end -= 1
    if end > FRAME_MAX:
        raise WireError(E_FRAME_LONG, "frame longer than %d bytes" % FRAME_MAX)
    body = bytes(line[:end])
    if end and (min(body) < 0x20 or max(body) > 0x7E):   # C loops; the index only on error
        for index in range(end):
            byte = body[index]
            if byte < 0x20 or byte > 0x7E:
                raise WireError(E_FRAME_CHARS, "non-printable byte 0x%02x at %d" % (byte, index))
    text = body.decode()
    if not text.startswith("@"):
        raise WireError(E_FRAME_SYNTAX, "frame must start with '@'")
    star = text.rfind("*")
    if star < 0 or not _is_hex8(text[star + 1:]):
        raise WireError(E_FRAME_SYNTAX, "frame must end with '*' and 8 hex digits")
    inner = text[1:star]
    if ("%08x" % (crc32(inner.encode()) & 0xFFFFFFFF)) != text[star + 1:]:
        raise WireError(E_FRAME_CRC, "CRC mismatch")
    parts = inner.split(",", 3)
    if len(parts) != 4:
        raise WireError(E_FRAME_SYNTAX, "frame needs version, kind, number and body")
    version, kind, num_text, body_text = parts
    if not version.isdigit() or str(int(version)) != version or int(version) != PROTOCOL_VERSION:
        raise WireError(E_FRAME_VERSION, "protocol version %s not supported (pen speaks %d)"
                        % (version[:8], PROTOCOL_VERSION))
    if len(kind) != 1 or kind not in _KINDS:
        raise WireError(E_FRAME_SYNTAX, "unknown frame kind")
    if (not num_text.isdigit() or len(num_text) > 5 or str(int(num_text)) != num_text
            or int(num_text) >= NUM_MODULO):
        raise WireError(E_FRAME_SYNTAX, "bad frame number")
    try:
        body = json.loads(body_text)
        # Only the canonical text is a valid body. MicroPython's json.loads is
        # lenient (trailing commas, missing colons, leading zeros ...) where
        # CPython's is not; requiring the encoder's exact output makes both
        # decoders accept the same frames, and refuses floats (integer units).
        # Text outside the Basic Multilingual Plane fails here too (dumps refuses it):
        # the interpreters decode surrogate pairs to different strings.
        canonical = dumps(body) == body_text
    except Exception:  # ValueError, TypeError, RecursionError: be total whatever happens
        raise WireError(E_FRAME_BODY, "body is not valid canonical JSON")
    if not isinstance(body, dict):
        raise WireError(E_FRAME_BODY, "body must be a JSON object")
    if not canonical:
        raise WireError(E_FRAME_BODY, "body is not canonical JSON (sorted keys, ', ' and ': ', integers)")
    return kind, int(num_text), body
