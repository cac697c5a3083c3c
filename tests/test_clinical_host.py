"""The host's clinical library (host/penctl/clinical.py) against the pen's own clinical module.

The pen end runs the real firmware module (penctl.firmware.pen.clinical on a real
penctl.firmware.pen.store.Store) in this process, behind a link that passes every request and
reply through the wire codec; the host end is the real `penctl.Pen` and `penctl.clinical`. So
the two HMAC implementations (CPython's hmac on the host, the firmware's own on hashlib), the
canonical arguments and the key wrapping are checked against each other.
"""

import hashlib
import hmac
import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penctl import Pen
from penctl import clinical
from penctl.errors import EXIT_REFUSED, EXIT_USAGE, PenRefused, UsageError
from penctl.firmware.pen import auth as pen_auth
from penctl.firmware.pen import wire
from penctl.firmware.pen.clinical import Clinical, ClinicalError
from penctl.firmware.pen.profiles import ProfileError
from penctl.firmware.pen.store import Store, StoreError

SERIAL = "E6614C311B6F5A2C"
T0 = 1767225600


class _Board:
    def __init__(self, side):
        self.serial = side.serial
        self.ticks_us = lambda: side.clock_us


class PenSide:
    """The pen end: `info` and the clinical ops of the firmware module, in this process."""

    def __init__(self, folder, serial=SERIAL):
        self.clock_us = 0
        self.serial = serial
        self.folder = folder
        self.profiles = {"crown": {"name": "crown", "depth_um": 500, "stroke_hz": 100, "max_session_s": 60,
                                   "min_interval_days": 14}}
        self.frames = []               # every request frame the host sent
        self.power_on()

    def power_on(self):
        self.clin = Clinical(Store(self.folder), _Board(self), find_profile=self.profiles.get)

    def handle(self, body):
        op = body.get("op")
        try:
            if op == "info":
                reply = {"serial": self.serial, "state": "LOCKED"}
                reply.update(self.clin.info())
            elif op in Clinical.OPS:
                reply = self.clin.handle(op, body)
            else:
                return {"ok": False, "code": "UNKNOWN_OP", "msg": "unknown op %r" % (op,)}
        except (ClinicalError, ProfileError) as exc:
            return {"ok": False, "code": exc.code, "msg": exc.message}
        except StoreError as exc:
            return {"ok": False, "code": "STORE", "msg": str(exc)}
        reply["ok"] = True
        return reply


class FakeLink:
    is_open = True

    def __init__(self, side):
        self.side = side

    def request(self, body, timeout=None, fresh_events=False):
        frame = wire.encode("Q", 7, body)
        self.side.frames.append(frame)
        _kind, _num, decoded = wire.decode(frame)
        _kind, _num, reply = wire.decode(wire.encode("R", 7, self.side.handle(decoded)))
        return reply

    def close(self):
        pass


@pytest.fixture
def side(tmp_path):
    return PenSide(str(tmp_path / "pen"))


@pytest.fixture
def pen(side):
    handle = Pen(port="fake://pen", connect=False)
    handle.link = FakeLink(side)
    return handle


@pytest.fixture
def key(tmp_path):
    return clinical.new_key_file(tmp_path / ("%s.penkey" % SERIAL), pen_serial=SERIAL)


def _sent(side):
    return b"".join(side.frames)


# ---- key files ----


def test_key_file_created_exclusive_private_and_readable_back(tmp_path):
    path = tmp_path / "clinic.penkey"
    made = clinical.new_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["format"] == "penctl-clinician-key" and body["version"] == 1
    assert len(body["key"]) == 64 and len(body["key_id"]) == 16 and body["pen_serial"] is None
    loaded = clinical.load_key_file(path)
    assert loaded.key == made.key == bytes.fromhex(body["key"]) and loaded.key_id == made.key_id
    assert body["key"] not in repr(loaded)
    assert clinical.new_key_file(tmp_path / "other.penkey").key != made.key


def test_key_new_refuses_to_overwrite_or_a_bad_path(tmp_path):
    path = tmp_path / "a.penkey"
    first = clinical.new_key_file(path)
    for bad in (path, tmp_path / "missing" / "b.penkey", tmp_path / "c.json", tmp_path):
        with pytest.raises(UsageError) as err:
            clinical.new_key_file(bad)
        assert err.value.exit_code == EXIT_USAGE
    assert clinical.load_key_file(path).key == first.key          # untouched
    link = tmp_path / "link.penkey"
    link.symlink_to(tmp_path / "target.penkey")
    with pytest.raises(UsageError):
        clinical.new_key_file(link)                                # a dangling symlink is not followed
    assert not (tmp_path / "target.penkey").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_key_new_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="permission denied"):
            clinical.new_key_file(folder / "k.penkey")
    finally:
        folder.chmod(0o700)


def test_key_file_load_refusals(tmp_path):
    good = clinical.new_key_file(tmp_path / "good.penkey")
    body = json.loads((tmp_path / "good.penkey").read_text())

    def write(name, content, mode=0o600):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        path.chmod(mode)
        return path

    cases = {
        "open.penkey": (body, 0o644, "other users"),
        "notjson.penkey": ("{", 0o600, "not a clinician key file"),
        "format.penkey": (dict(body, format="x"), 0o600, "not a clinician key file"),
        "version.penkey": (dict(body, version=2), 0o600, "version"),
        "short.penkey": (dict(body, key=body["key"][:-2]), 0o600, "'key'"),
        "upper.penkey": (dict(body, key=body["key"].upper()), 0o600, "'key'"),
        "kid.penkey": (dict(body, key_id="xyz"), 0o600, "'key_id'"),
        "serial.penkey": (dict(body, pen_serial="../x"), 0o600, "pen_serial"),
    }
    for name, (content, mode, message) in cases.items():
        with pytest.raises(UsageError, match=message):
            clinical.load_key_file(write(name, content, mode))
    big = tmp_path / "big.penkey"
    with open(big, "wb") as handle:
        handle.truncate(2 * 1024 * 1024)
    big.chmod(0o600)
    with pytest.raises(UsageError, match="too large"):
        clinical.load_key_file(big)
    with pytest.raises(UsageError, match="no such"):
        clinical.load_key_file(tmp_path / "none.penkey")
    assert clinical.load_key_file(tmp_path / "good.penkey").key == good.key


# ---- the two HMACs agree ----


_printable = st.text(st.characters(min_codepoint=32, max_codepoint=126))
_wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | _printable,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abcdef_", min_size=1, max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=16, max_size=16),
       op=st.sampled_from(["ceiling_set", "clock_set", "interval_override", "key_provision"]),
       args=st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=8), _wire_values, max_size=4),
       serial=st.text("0123456789ABCDEF", min_size=1, max_size=16))
def test_host_mac_equals_pen_mac(key, nonce, op, args, serial):
    host = clinical.compute_mac(key, nonce.hex(), serial, op, args)
    pen = pen_auth.hmac_sha256(key, pen_auth.mac_message(nonce, serial, op, args))
    assert host == pen.hex()
    assert host == hmac.new(key, nonce + serial.encode() + b"\0" + op.encode() + b"\0"
                            + wire.dumps(args).encode(), hashlib.sha256).hexdigest()


@settings(max_examples=100, deadline=None)
@given(current=st.binary(min_size=32, max_size=32), new=st.binary(min_size=32, max_size=32),
       nonce=st.binary(min_size=16, max_size=16))
def test_host_key_wrapping_is_what_the_pen_unwraps(current, new, nonce):
    wrapped = bytes.fromhex(clinical.wrap_key(current, nonce.hex(), new))
    stream = pen_auth.wrap_keystream(current, nonce)
    assert bytes(a ^ b for a, b in zip(wrapped, stream, strict=True)) == new
    assert wrapped != new


# ---- flows against the pen ----


def test_provision_then_ceiling_right_wrong_and_replayed(pen, side, key, tmp_path):
    assert pen.request("info")["key_provisioned"] is False
    clinical.provision_key(pen, key)
    assert pen.request("info")["key_provisioned"] is True
    # right key
    assert clinical.set_ceiling(pen, "1.0", key) == {"depth_ceiling_mm": 1.0}
    assert side.clin.ceiling_um == 1000
    # wrong key
    wrong = clinical.new_key_file(tmp_path / "wrong.penkey")
    with pytest.raises(PenRefused) as err:
        clinical.set_ceiling(pen, "2.5", wrong)
    assert err.value.code == "AUTH_FAILED" and err.value.exit_code == EXIT_REFUSED
    # replayed: the exact request frame of an accepted answer, sent again
    clinical.set_ceiling(pen, "1.5", key)
    accepted = side.frames[-1]
    _k, _n, body = wire.decode(accepted)
    assert body["op"] == "ceiling_set" and "auth" in body
    with pytest.raises(PenRefused) as err:
        pen.request(body.pop("op"), **body)
    assert err.value.code == "AUTH_FAILED"
    assert side.clin.ceiling_um == 1500
    kinds = [e["kind"] for e in clinical.read_audit(pen)["entries"]]
    assert kinds == ["key_provision", "ceiling_set", "auth_failed", "ceiling_set", "auth_failed"]


def test_first_provisioning_only_sends_the_key_in_clear_once(pen, side, key, tmp_path):
    clinical.provision_key(pen, key)
    new = clinical.new_key_file(tmp_path / "new.penkey", pen_serial=SERIAL)
    side.frames.clear()
    with pytest.raises(UsageError) as err:
        clinical.provision_key(pen, new)                    # no current key given
    assert err.value.exit_code == EXIT_USAGE
    assert new.key.hex().encode() not in _sent(side)
    clinical.provision_key(pen, new, current=key)
    assert new.key.hex().encode() not in _sent(side)        # wrapped, never in clear
    assert key.key.hex().encode() not in _sent(side)
    clinical.set_ceiling(pen, 0.75, new)
    with pytest.raises(PenRefused, match="wrong answer"):
        clinical.set_ceiling(pen, 0.8, key)
    entry = [e for e in clinical.read_audit(pen)["entries"] if e["kind"] == "key_provision"][-1]
    assert entry["key_id"] == new.key_id and entry["old_key_id"] == key.key_id and entry["first"] is False


def test_key_of_another_pen_refused_before_it_is_used(pen, side, key, tmp_path):
    clinical.provision_key(pen, key)
    other = clinical.new_key_file(tmp_path / "other.penkey", pen_serial="0000000000000001")
    side.frames.clear()
    with pytest.raises(UsageError, match="key of pen 0000000000000001"):
        clinical.set_ceiling(pen, 1.0, other)
    assert [wire.decode(f)[2]["op"] for f in side.frames] == ["info"]


def test_ceiling_argument_checked_on_the_host(pen, side, key):
    clinical.provision_key(pen, key)
    for good, um in (("0.25", 250), ("2.5", 2500), (0.55, 550), ("1", 1000), (2, 2000)):
        assert clinical.ceiling_um(good) == um
    side.frames.clear()
    for bad in ("0.2", "2.55", "0.33", "abc", "nan", "", True, None, "1e9", -1):
        with pytest.raises(UsageError):
            clinical.set_ceiling(pen, bad, key)
    assert side.frames == []


def test_clock_set_back_needs_the_key(pen, side, key):
    clinical.provision_key(pen, key)
    assert clinical.set_clock(pen, T0)["utc"] == "2026-01-01T00:00:00Z"
    assert clinical.set_clock(pen, T0 - 3600)["auth"] is False
    with pytest.raises(PenRefused) as err:
        clinical.set_clock(pen, T0 - 7200)
    assert err.value.code == "AUTH_REQUIRED" and "clinician key" in err.value.message
    assert clinical.set_clock(pen, T0 - 7200, key)["auth"] is True
    assert side.clin.utc_now() == T0 - 7200
    now = clinical.set_clock(pen)                           # the computer's UTC by default
    assert abs(now["utc_s"] - side.clin.utc_now()) <= 1
    with pytest.raises(UsageError):
        clinical.set_clock(pen, 5)


def test_interval_override_flow(pen, side, key, tmp_path):
    clinical.provision_key(pen, key)
    assert clinical.interval_override(pen, "crown", key) == {"profile": "crown", "override": True}
    with pytest.raises(PenRefused) as err:
        clinical.interval_override(pen, "nope", key)
    assert err.value.code == "UNKNOWN_PROFILE"
    with pytest.raises(UsageError):
        clinical.interval_override(pen, "Not A Name", key)


def test_no_key_and_lockout_reach_the_host_as_refusals(pen, side, key, tmp_path):
    with pytest.raises(PenRefused) as err:
        clinical.set_ceiling(pen, 1.0, key)
    assert err.value.code == "NO_KEY"
    clinical.provision_key(pen, key)
    wrong = clinical.new_key_file(tmp_path / "wrong.penkey")
    for _ in range(5):
        with pytest.raises(PenRefused, match="AUTH_FAILED|authentication failed"):
            clinical.set_ceiling(pen, 1.0, wrong)
    with pytest.raises(PenRefused) as err:
        clinical.set_ceiling(pen, 1.0, key)
    assert err.value.code == "AUTH_LOCKED" and "60 s" in err.value.message
    assert clinical.clinical_info_to_host(pen.request("info"))["auth_locked_s"] == 60


def test_audit_in_host_units_and_filtered(pen, side, key):
    clinical.provision_key(pen, key)
    side.clock_us += 2500000
    clinical.set_ceiling(pen, 1.0, key)
    clinical.set_clock(pen, T0)
    audit = clinical.read_audit(pen)
    assert audit["end"] == 3 and audit["oldest"] == 0 and audit["lost"] == 0
    assert audit["totals"] == {"key_provision": 1, "ceiling_set": 1, "clock_set": 1}
    ceiling = audit["entries"][1]
    assert ceiling["from_mm"] == 0.5 and ceiling["to_mm"] == 1.0 and ceiling["t_s"] == 2.5
    assert ceiling["utc"] == "unset" and ceiling["source"] == "audit"
    clock = audit["entries"][2]
    assert clock["from"] == "unset" and clock["to"] == "2026-01-01T00:00:00Z"
    only = clinical.read_audit(pen, kind="clock_set")["entries"]
    assert [e["kind"] for e in only] == ["clock_set"]
    with pytest.raises(UsageError):
        clinical.read_audit(pen, kind="bogus")
    info = clinical.clinical_info_to_host(pen.request("info"))
    assert info["depth_ceiling_mm"] == 1.0 and info["key_provisioned"] is True and info["audit_entries"] == 3
    assert "key" not in info
