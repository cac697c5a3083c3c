# The clinician key and its challenge-response (S17, docs/design.md §3.5, docs/clinical.md).
#
# A privileged request carries {"auth": {"nonce": NONCE, "mac": HEX64}} with
#     mac = HMAC-SHA256(key, nonce_bytes | serial | 0x00 | op | 0x00 | canonical_args)
# canonical_args = pen.wire.dumps(body without "op" and "auth"). The pen holds one nonce at a
# time (a new auth_nonce replaces it); any answer consumes it, right or wrong. Failures are
# counted in the `auth` record, written before the reply, so a power cut cannot reset them.
#
# Runs on core 0 only (requests), never in the tick: it may allocate. Common subset of
# MicroPython and CPython. MicroPython has no hmac module, so HMAC (RFC 2104) is built here on
# hashlib.sha256; the host uses CPython's hmac, and the tests check the two against each other
# and against RFC 4231's vectors.
import hashlib
from binascii import hexlify, unhexlify

from . import limits as lim
from . import proto
from .store import StoreError
from .wire import dumps

REC_KEY = "key"
REC_AUTH = "auth"
KEY_BYTES = 32
KEY_ID_HEX = 16            # key id: 8 random bytes as hex, chosen by `penctl key new`
NONCE_BYTES = 16
_BLOCK = 64                # SHA-256 block size
WRAP_LABEL = b"penctl key wrap\x00"   # keystream label for a wrapped key (key_provision)


class ClinicalError(Exception):
    """A refused clinical request: `code` is the stable wire error code (pen.proto)."""

    def __init__(self, code, message, field=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def hmac_sha256(key, message):
    """HMAC-SHA256 (RFC 2104) of bytes `message` under bytes `key`."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    inner_pad = bytearray(_BLOCK)
    outer_pad = bytearray(_BLOCK)
    for index in range(_BLOCK):
        byte = key[index] if index < len(key) else 0
        inner_pad[index] = byte ^ 0x36
        outer_pad[index] = byte ^ 0x5C
    inner = hashlib.sha256(bytes(inner_pad))
    inner.update(message)
    outer = hashlib.sha256(bytes(outer_pad))
    outer.update(inner.digest())
    return outer.digest()


def equal_ct(left, right):
    """Byte strings equal, in a time that does not depend on where they differ."""
    if len(left) != len(right):
        return False
    diff = 0
    for index in range(len(left)):
        diff |= left[index] ^ right[index]
    return diff == 0


def mac_message(nonce, serial, op, args):
    """The bytes the mac covers: nonce | serial | 0x00 | op | 0x00 | canonical args."""
    return bytes(nonce) + serial.encode() + b"\x00" + op.encode() + b"\x00" + dumps(args).encode()


def request_args(body):
    """A request body without "op" and "auth": what the mac binds."""
    args = {}
    for name in body:
        if name != "op" and name != "auth":
            args[name] = body[name]
    return args


def parse_hex(text, nbytes):
    """bytes of `text` if it is exactly 2*nbytes lower-case hex digits, else None."""
    if type(text) is not str or len(text) != 2 * nbytes:
        return None
    for ch in text:
        if ch not in "0123456789abcdef":
            return None
    return unhexlify(text)


def wrap_keystream(current_key, nonce):
    """32 bytes that hide a new key in transit (key_provision with a key already on the pen)."""
    return hmac_sha256(current_key, WRAP_LABEL + bytes(nonce))


def lock_seconds(level):
    """Length of the `level`-th lock in a row (1-based): 60 s doubling, at most AUTH_LOCK_MAX_S."""
    seconds = lim.AUTH_LOCK_S
    while level > 1 and seconds < lim.AUTH_LOCK_MAX_S:
        seconds *= 2
        level -= 1
    return seconds if seconds < lim.AUTH_LOCK_MAX_S else lim.AUTH_LOCK_MAX_S


class Auth:
    """Key, nonce and failure/lock state. Times are elapsed pen ms (never an absolute counter)."""

    def __init__(self, store, serial, urandom):
        self.store = store
        self.serial = serial
        self.urandom = urandom
        self.store_errors = 0
        self.nonce = None          # the one outstanding nonce (bytes) ...
        self.nonce_ms = 0          # ... and when it was issued
        self.lock_ms = 0           # when the current lock began (elapsed pen ms)
        self.expiry_unsaved = False
        self._load()

    # ---- records ----

    def _load(self):
        self.key = None
        self.key_id = None
        self.key_corrupt = False
        record = self.store.read(REC_KEY)
        if record is not None:
            key = parse_hex(record.get("key"), KEY_BYTES)
            key_id = record.get("key_id")
            if key is None or type(key_id) is not str:
                record = None
            else:
                self.key = key
                self.key_id = key_id
        if record is None and self.store.exists(REC_KEY):
            # A key record that does not read back: the key is unknown, and first-time
            # provisioning (no auth) must not become possible again. Fail closed.
            self.key_corrupt = True
        self.failures = 0
        self.level = 0             # locks in a row since the last success
        self.locked = False
        record = self.store.read(REC_AUTH)
        if record is not None:
            failures = record.get("failures")
            level = record.get("level")
            locked = record.get("locked")
            if type(failures) is not int or type(level) is not int or type(locked) is not bool \
                    or failures < 0 or level < 0:
                record = None
            else:
                self.failures = failures
                self.level = level
                self.locked = locked
        if record is None and self.store.exists(REC_AUTH):
            # Unreadable failure record: it might have held a lock. Lock for the longest time.
            self.locked = True
            self.level = 32
            self.failures = lim.AUTH_FAILURES_MAX
        # A lock in force at power-off starts again in full: pen time does not run while off,
        # and a power cycle must never shorten a lock.
        self.lock_ms = 0

    def _write_auth(self):
        self.store.write(REC_AUTH, {"failures": self.failures, "level": self.level, "locked": self.locked})
        self.expiry_unsaved = False

    def provisioned(self):
        return self.key is not None or self.key_corrupt

    def store_key(self, key, key_id):
        self.store.write(REC_KEY, {"key": hexlify(key).decode(), "key_id": key_id})
        self.key = bytes(key)
        self.key_id = key_id
        self.key_corrupt = False

    # ---- nonce and lock ----

    def issue_nonce(self, now_ms):
        self.nonce = bytes(self.urandom(NONCE_BYTES))
        self.nonce_ms = now_ms
        return hexlify(self.nonce).decode()

    def expire(self, now_ms):
        """Drop an outstanding nonce once it is too old (called often: bounded clock gaps)."""
        if self.nonce is not None and now_ms - self.nonce_ms >= lim.AUTH_NONCE_MS:
            self.nonce = None

    def locked_ms(self, now_ms):
        """Remaining lock in ms (0: not locked). An expired lock ends here, in RAM; the record
        says locked until save_expiry() (a power cut before then locks again: fail closed)."""
        if not self.locked:
            return 0
        left = lock_seconds(self.level) * 1000 - (now_ms - self.lock_ms)
        if left > 0:
            return left
        self.locked = False
        self.failures = 0
        self.expiry_unsaved = True
        return 0

    def save_expiry(self):
        """Record the end of an expired lock (from a request, never while the motor runs)."""
        if self.expiry_unsaved:
            try:
                self._write_auth()
                self.expiry_unsaved = False
            except StoreError:
                self.store_errors += 1

    def boot_lock(self, now_ms):
        """Start a lock found in the record at boot, at the pen time the clinical module starts."""
        if self.locked:
            self.lock_ms = now_ms

    # ---- answers ----

    def check(self, op, body, now_ms):
        """(None, nonce) if body["auth"] answers the outstanding nonce for `op` and these
        arguments, else (reason, None). Consumes the nonce either way."""
        nonce = self.nonce
        issued = self.nonce_ms
        self.nonce = None
        token = body.get("auth")
        if type(token) is not dict or len(token) != 2:
            return "malformed", None
        given_nonce = parse_hex(token.get("nonce"), NONCE_BYTES)
        given_mac = parse_hex(token.get("mac"), 32)
        if given_nonce is None or given_mac is None:
            return "malformed", None
        if nonce is None or not equal_ct(given_nonce, nonce):
            return "unknown or used nonce", None
        if now_ms - issued >= lim.AUTH_NONCE_MS:
            return "expired nonce", None
        expected = hmac_sha256(self.key, mac_message(nonce, self.serial, op, request_args(body)))
        if not equal_ct(expected, given_mac):
            return "wrong answer", None
        return None, nonce

    def record_failure(self, now_ms):
        """Count a failed answer; written before the reply. Returns the lock length in s if this
        failure started a lock, else 0. A failure that cannot be written locks at once."""
        self.failures += 1
        started = 0
        if self.failures >= lim.AUTH_FAILURES_MAX:
            self.level += 1
            self.locked = True
            self.lock_ms = now_ms
            started = lock_seconds(self.level)
        try:
            self._write_auth()
        except StoreError:
            self.store_errors += 1
            if not self.locked:
                # The count would not survive a power cut: lock now instead (fail closed).
                self.level += 1
                self.locked = True
                self.lock_ms = now_ms
                started = lock_seconds(self.level)
        return started

    def record_success(self):
        if self.failures or self.level or self.locked:
            self.failures = 0
            self.level = 0
            self.locked = False
            self._write_auth()

    def refuse_locked(self, left_ms):
        seconds = (left_ms + 999) // 1000
        raise ClinicalError(proto.E_AUTH_LOCKED, "privileged operations are locked for another %d s after "
                            "%d failed answers" % (seconds, lim.AUTH_FAILURES_MAX))
