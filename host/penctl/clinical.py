"""Clinical safety on the host (docs/clinical.md, docs/design.md §3.5): clinician key files, the
pen's challenge-response, and the library calls behind `penctl key new|provision`, `ceiling set`,
`clock set`, `interval override` and the audit half of `penctl log`.

    from penctl import Pen
    from penctl import clinical

    key = clinical.new_key_file("clinic/E6614C311B6F5A2C.penkey", pen_serial="E6614C311B6F5A2C")
    with Pen("/dev/ttyACM0") as pen:
        clinical.provision_key(pen, key)                 # once per pen
        clinical.set_ceiling(pen, 1.0, key)              # mm
        clinical.set_clock(pen)                          # the laptop's UTC
        clinical.interval_override(pen, "scalp-crown", key)

The key never goes on the wire except once, at first provisioning (the pen has no key to
protect it with yet); every later use is an HMAC-SHA256 answer to a single-use pen nonce, and a
replacement key travels wrapped with the current one. The HMAC here is CPython's `hmac`; the
pen's own implementation (firmware/pen/auth.py) is checked against it in tests.

Errors: UsageError (exit 2: bad key file, bad argument; nothing privileged was sent), PenRefused
(exit 1: AUTH_FAILED, AUTH_LOCKED, AUTH_REQUIRED, NO_KEY, DEPTH_CEILING, TOO_SOON, CLOCK_UNSET,
CARTRIDGE_USED, CARTRIDGE_MEMORY ...), LinkError / ProtocolError (exit 3).
"""

import datetime
import hashlib
import hmac
import json
import os
import stat
import time

from penctl.errors import ProtocolError, UsageError
from penctl.firmware.pen import limits as lim
from penctl.firmware.pen import wire

#: the key file's "format" field and version (docs/clinical.md "Key files")
KEY_FILE_FORMAT = "penctl-clinician-key"
KEY_FILE_VERSION = 1
#: key files are named *.penkey (JSON inside), e.g. by pen serial: E6614C311B6F5A2C.penkey
KEY_FILE_SUFFIX = ".penkey"
#: a key file is a few hundred bytes; anything larger is not one (refused unread)
KEY_FILE_MAX_BYTES = 64 * 1024
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 16
#: label of the keystream that wraps a replacement key (same bytes as the pen's)
WRAP_LABEL = b"penctl key wrap\x00"
#: audit entry kinds (docs/clinical.md "Audit trail")
AUDIT_KINDS = ("key_provision", "ceiling_set", "clock_set", "interval_override", "interval_override_used",
               "auth_failed", "auth_lock", "auth_locked", "not_applied")
_AUDIT_PAGE = 4
_HEX = frozenset("0123456789abcdef")


class ClinicianKey:
    """A clinician key loaded from (or just written to) a key file. repr() never shows the key."""

    __slots__ = ("key", "key_id", "pen_serial", "path")

    def __init__(self, key, key_id, pen_serial=None, path=None):
        self.key = bytes(key)
        self.key_id = key_id
        self.pen_serial = pen_serial
        self.path = path

    def __repr__(self):
        return "ClinicianKey(key_id=%r, pen_serial=%r, path=%r)" % (self.key_id, self.pen_serial, self.path)


def _is_hex(text, nbytes):
    return isinstance(text, str) and len(text) == 2 * nbytes and set(text) <= _HEX


# ---- key files ----


def check_new_key_path(path):
    """Validate the output path of `key new` before anything is done (UsageError, exit 2)."""
    path = os.fspath(path)
    if not path.endswith(KEY_FILE_SUFFIX):
        raise UsageError("a clinician key file is named *%s (got %s)" % (KEY_FILE_SUFFIX, path), code="USAGE")
    if os.path.isdir(path):
        raise UsageError("%s is a folder: give a key file name" % path, code="FILE")
    if os.path.lexists(path):
        raise UsageError("%s exists: refusing to overwrite a clinician key (a pen may depend on it)" % path,
                         code="FILE")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("cannot write %s: folder %s does not exist" % (path, folder), code="FILE")
    if not os.access(folder, os.W_OK):
        raise UsageError("cannot write %s: permission denied" % path, code="FILE")
    return path


def new_key_file(path, pen_serial=None, now=None):
    """Write a new random key to `path` (created with O_EXCL, mode 0600; never overwrites).
    Returns the ClinicianKey."""
    path = check_new_key_path(path)
    if pen_serial is not None and (not isinstance(pen_serial, str) or not pen_serial.isalnum()):
        raise UsageError("pen serial must be letters and digits (got %r)" % (pen_serial,), code="USAGE")
    key = os.urandom(KEY_BYTES)
    key_id = os.urandom(KEY_ID_BYTES).hex()
    created = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"format": KEY_FILE_FORMAT, "version": KEY_FILE_VERSION, "key_id": key_id, "key": key.hex(),
            "pen_serial": pen_serial, "created_utc": created}
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise UsageError("%s exists: refusing to overwrite a clinician key" % path, code="FILE") from None
    except OSError as exc:
        raise UsageError("cannot write %s: %s" % (path, exc.strerror or exc), code="FILE") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        try:
            os.unlink(path)      # never leave a half-written key file behind
        except OSError:
            pass
        raise UsageError("cannot write %s: %s" % (path, exc.strerror or exc), code="FILE") from None
    return ClinicianKey(key, key_id, pen_serial, path)


def load_key_file(path):
    """Read and validate a key file (UsageError, exit 2, naming the problem)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UsageError("%s: no such key file" % path, code="FILE") from None
    except OSError as exc:
        raise UsageError("%s: cannot read: %s" % (path, exc.strerror or exc), code="FILE") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError("%s is not a key file" % path, code="FILE")
    if info.st_size > KEY_FILE_MAX_BYTES:
        raise UsageError("%s is %d bytes: too large for a key file" % (path, info.st_size), code="FILE")
    if os.name == "posix" and info.st_mode & 0o077:
        raise UsageError("%s can be read by other users (mode %03o): run chmod 600 %s"
                         % (path, info.st_mode & 0o777, path), code="FILE")
    try:
        with open(path, "rb") as handle:
            body = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError("%s: not a clinician key file: %s" % (path, exc), code="FILE") from None
    if not isinstance(body, dict) or body.get("format") != KEY_FILE_FORMAT:
        raise UsageError("%s: not a clinician key file (format %r)" % (path, KEY_FILE_FORMAT), code="FILE")
    if body.get("version") != KEY_FILE_VERSION:
        raise UsageError("%s: key file version %r; this penctl reads version %d"
                         % (path, body.get("version"), KEY_FILE_VERSION), code="FILE")
    if not _is_hex(body.get("key"), KEY_BYTES):
        raise UsageError("%s: 'key' must be %d lower-case hex digits" % (path, 2 * KEY_BYTES), code="FILE")
    if not _is_hex(body.get("key_id"), KEY_ID_BYTES):
        raise UsageError("%s: 'key_id' must be %d lower-case hex digits" % (path, 2 * KEY_ID_BYTES), code="FILE")
    serial = body.get("pen_serial")
    if serial is not None and not (isinstance(serial, str) and serial.isalnum()):
        raise UsageError("%s: 'pen_serial' must be letters and digits or null" % path, code="FILE")
    return ClinicianKey(bytes.fromhex(body["key"]), body["key_id"], serial, path)


# ---- the answer ----


def canonical_args(args):
    """The request's arguments (without op and auth) as the pen encodes them: pen.wire.dumps."""
    return wire.dumps(args)


def compute_mac(key, nonce_hex, serial, op, args):
    """HMAC-SHA256(key, nonce | serial | 0x00 | op | 0x00 | canonical_args) as hex."""
    if not _is_hex(nonce_hex, NONCE_BYTES):
        raise ProtocolError("the pen's nonce %r is not %d hex digits" % (nonce_hex, 2 * NONCE_BYTES))
    message = (bytes.fromhex(nonce_hex) + serial.encode() + b"\x00" + op.encode() + b"\x00"
               + canonical_args(args).encode())
    return hmac.new(bytes(key), message, hashlib.sha256).hexdigest()


def wrap_key(current_key, nonce_hex, new_key):
    """A replacement key XOR HMAC-SHA256(current key, label | nonce): readable only by the pen."""
    stream = hmac.new(bytes(current_key), WRAP_LABEL + bytes.fromhex(nonce_hex), hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(new_key, stream, strict=True)).hex()


def pen_serial(pen):
    serial = pen.request("info").get("serial")
    if not isinstance(serial, str) or not serial:
        raise ProtocolError("the pen's info has no serial: %r" % (serial,))
    return serial


def _check_key_for(key, serial):
    if key.pen_serial is not None and key.pen_serial != serial:
        raise UsageError("%s is the key of pen %s, this pen is %s: use that pen's key file"
                         % (key.path or "the key file", key.pen_serial, serial), code="KEY_PEN")


def nonce(pen):
    reply = pen.request("auth_nonce")
    value = reply.get("nonce")
    if not _is_hex(value, NONCE_BYTES):
        raise ProtocolError("auth_nonce reply without a nonce: %r" % (reply,))
    return value


def authorize(pen, op, args, key, serial=None):
    """Run one privileged op: fetch a nonce, answer it for (op, args), send. Returns the reply."""
    serial = serial or pen_serial(pen)
    _check_key_for(key, serial)
    value = nonce(pen)
    mac = compute_mac(key.key, value, serial, op, args)
    return pen.request(op, auth={"nonce": value, "mac": mac}, **args)


# ---- operations ----


def provision_key(pen, key, current=None):
    """Give the pen its clinician key. A pen that has one needs `current` (the key it holds):
    the new key then travels wrapped; it is never sent in clear to a pen that has a key."""
    info = pen.request("info")
    serial = info.get("serial")
    if not isinstance(serial, str) or "key_provisioned" not in info:
        raise ProtocolError("this pen's firmware has no clinician key support (update it with penctl flash)")
    _check_key_for(key, serial)
    if not info["key_provisioned"]:
        return pen.request("key_provision", key=key.key.hex(), key_id=key.key_id)
    if current is None:
        raise UsageError("this pen already has a clinician key: pass the current one with --current-key-file "
                         "(the new key was not sent)", code="KEY_PRESENT")
    _check_key_for(current, serial)
    value = nonce(pen)
    args = {"key_wrapped": wrap_key(current.key, value, key.key), "key_id": key.key_id}
    mac = compute_mac(current.key, value, serial, "key_provision", args)
    return pen.request("key_provision", auth={"nonce": value, "mac": mac}, **args)


def ceiling_um(depth_mm):
    """A ceiling in mm (number or its text) -> integer um, exactly (no float rounding); UsageError
    unless it is 0.25-2.5 mm on the 0.05 mm grid."""
    from penctl.profiles import depth_mm_to_um

    try:
        um = depth_mm_to_um(depth_mm)
    except ValueError:
        raise UsageError("ceiling %r is not a depth in millimetres" % (depth_mm,), code="DEPTH") from None
    if um < lim.DEPTH_MIN_UM or um > lim.DEPTH_MAX_UM:
        raise UsageError("ceiling %s mm is outside %g-%g mm" % (depth_mm, lim.DEPTH_MIN_UM / 1000,
                                                                  lim.DEPTH_MAX_UM / 1000), code="DEPTH")
    if um % lim.DEPTH_STEP_UM:
        raise UsageError("ceiling %s mm is not on the %g mm grid" % (depth_mm, lim.DEPTH_STEP_UM / 1000),
                         code="DEPTH")
    return um


def set_ceiling(pen, depth_mm, key):
    um = ceiling_um(depth_mm)
    reply = authorize(pen, "ceiling_set", {"depth_um": um}, key)
    return {"depth_ceiling_mm": reply.get("depth_ceiling_um", um) / 1000}


def set_clock(pen, utc_s=None, key=None):
    """Set the pen's wall clock (default: this computer's UTC, whole seconds). Without `key` a
    step back of more than an hour is refused by the pen (PenRefused AUTH_REQUIRED)."""
    if utc_s is None:
        utc_s = int(time.time())
    if isinstance(utc_s, bool) or not isinstance(utc_s, int) or not lim.UTC_MIN_S <= utc_s <= lim.UTC_MAX_S:
        raise UsageError("this computer's clock reads %r: not a time between 2020 and 2100" % (utc_s,),
                         code="CLOCK")
    if key is not None:
        reply = authorize(pen, "clock_set", {"utc_s": utc_s}, key)
    else:
        reply = pen.request("clock_set", utc_s=utc_s)
    return {"utc_s": reply.get("utc_s", utc_s), "utc": utc_iso(utc_s), "auth": key is not None}


def interval_override(pen, profile, key):
    from penctl.client import check_profile_name

    check_profile_name(profile)
    reply = authorize(pen, "interval_override", {"profile": profile}, key)
    return {"profile": reply.get("profile", profile), "override": True}


# ---- audit trail ----


def utc_iso(utc_s):
    if isinstance(utc_s, bool) or not isinstance(utc_s, int):
        return "unset"
    return datetime.datetime.fromtimestamp(utc_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit_entry_to_host(entry):
    """Audit entry in host units: t_ms -> t_s, utc_s -> utc (ISO 8601 or "unset"), *_um -> *_mm."""
    out = {"source": "audit"}
    for name, value in entry.items():
        if name.endswith("_um") and isinstance(value, int):
            out[name[:-3] + "_mm"] = value / 1000
        elif name in ("t_ms", "last_t_ms") and isinstance(value, int):
            out[name[:-3] + "_s"] = value / 1000
        elif name in ("utc_s", "last_utc_s", "from_s", "to_s"):
            out[name[:-2] if name.endswith("_s") else name] = utc_iso(value)
        else:
            out[name] = value
    return out


def read_audit(pen, kind=None):
    """Every audit entry the pen still holds, oldest first, in host units, and what the pen says
    about the ones it no longer holds: {"entries", "oldest", "end", "lost", "totals"}."""
    if kind is not None and kind not in AUDIT_KINDS:
        raise UsageError("unknown audit kind %r (one of %s)" % (kind, ", ".join(AUDIT_KINDS)), code="USAGE")
    entries = []
    start = 0
    while True:
        page = pen.request("audit_read", **{"from": start, "count": _AUDIT_PAGE})
        got = page.get("entries")
        following = page.get("next")
        end = page.get("end")
        if not isinstance(got, list) or not isinstance(following, int) or not isinstance(end, int):
            raise ProtocolError("bad audit_read reply: %r" % (page,))
        entries.extend(got)
        if following >= end:
            break
        if following <= start:
            raise ProtocolError("audit_read did not advance (from %d, next %d)" % (start, following))
        start = following
    rows = [audit_entry_to_host(e) for e in entries if kind is None or e.get("kind") == kind]
    return {"entries": rows, "oldest": page.get("oldest"), "end": end, "lost": page.get("lost"),
            "totals": page.get("totals") or {}}


def clinical_info_to_host(raw):
    """The clinical fields of `info` in host units (never the key: the pen does not send it)."""
    ceiling = raw.get("depth_ceiling_um")
    return {
        "depth_ceiling_mm": ceiling / 1000 if isinstance(ceiling, int) else None,
        "key_provisioned": raw.get("key_provisioned"),
        "wall_clock_set": raw.get("wall_clock_set"),
        "utc": utc_iso(raw.get("utc_s")),
        "auth_locked_s": raw.get("auth_locked_s"),
        "audit_entries": raw.get("audit_next"),
        "audit_lost": raw.get("audit_lost"),
        "audit_corrupt_pages": raw.get("audit_corrupt_pages"),
    }

