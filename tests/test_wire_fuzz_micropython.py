"""Decoder fuzzing on both interpreters (docs/design.md §3): a few thousand inputs drawn with
hypothesis (random bytes, valid frames with mutated bytes, frames with a correct CRC
around random or JSON-like inner text, truncations, oversized frames) plus the golden
and malformed vectors go through `pen.wire.decode` in ONE MicroPython process and in
one CPython process (the same script, tests/wire_fuzz_mp.py). Neither may raise
anything but WireError, and both must reach the same verdict for every input.
"""
import os
import subprocess
import sys
import time
import zlib

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import wire_vectors as vectors          # tests/fw (conftest puts it on sys.path)
from pen import wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
SCRIPT = "tests/wire_fuzz_mp.py"
FRAME_MAX = 2048
EXAMPLES = 3000


def _frame(inner, newline=True):
    """A frame around `inner` (bytes) with a correct CRC, computed with zlib."""
    out = b"@" + inner + b"*" + b"%08x" % (zlib.crc32(inner) & 0xFFFFFFFF)
    return out + b"\n" if newline else out


# ---- strategies ----

_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_keys = st.one_of(st.sampled_from(["op", "ok", "code", "msg", "profile", "name", "depth_um", "ev"]),
                  st.text(max_size=6))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=10)
_bodies = st.dictionaries(_keys, _values, max_size=5)


@st.composite
def _valid_frames(draw):
    kind = draw(st.sampled_from("QRE"))
    num = draw(st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 65535, 65536])))
    try:
        return wire.encode(kind, num, draw(_bodies))
    except ValueError:                    # longer than FRAME_MAX
        return wire.encode(kind, num, {"op": "ping"})


_byte_edit = st.tuples(st.sampled_from(["set", "insert", "delete", "printable"]),
                       st.integers(0, 10**6), st.integers(0, 255))


def _mutate(data, edits):
    data = bytearray(data)
    for what, where, byte in edits:
        index = where % (len(data) + 1)
        if what == "insert":
            data[index:index] = bytes([byte])
        elif not data or index == len(data):
            continue
        elif what == "set":
            data[index] = byte
        elif what == "delete":
            del data[index]
        else:
            data[index] = 0x20 + byte % 0x5F
    return bytes(data)


@st.composite
def _mutated_frames(draw):
    """A valid frame with a few bytes set/inserted/deleted (the CRC now mostly wrong)."""
    return _mutate(draw(_valid_frames()), draw(st.lists(_byte_edit, min_size=1, max_size=3)))


@st.composite
def _mutated_inner_crc_ok(draw):
    """A valid frame's inner text mutated, then framed with a correct CRC again: gets
    past the CRC check into the version/kind/number/JSON checks."""
    frame = draw(_valid_frames())
    inner = frame[1:frame.rindex(b"*")]
    edits = draw(st.lists(_byte_edit, min_size=1, max_size=3))
    return _frame(_mutate(inner, edits), newline=draw(st.booleans()))


@st.composite
def _truncated_frames(draw):
    frame = draw(_valid_frames())
    cut = draw(st.integers(0, len(frame) - 1))
    return frame[:cut] + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


_json_tokens = st.sampled_from([
    "{", "}", "[", "]", ",", ":", " ", '"', "\\", '"op"', '"ping"', '"a"', '""', "0", "1", "-1", "01",
    "-", "-0", "1.5", "1e5", "1e400", ".5", "+1", "99999999999999999999", "true", "false", "null",
    "tru", "nul", "NaN", "Infinity", '"\\u00e9"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\x41"',
    '"\\u12"', '"\\n"', '"\\/"', "'a'"])


@st.composite
def _json_soup(draw):
    """A correct CRC around a valid header and a body of JSON-like tokens."""
    head = draw(st.sampled_from(["1,Q,1,", "1,R,65535,", "1,E,0,", "1,Q,1,{", '1,Q,7,{"op": ']))
    body = "".join(draw(st.lists(_json_tokens, max_size=14)))
    return _frame((head + body).encode())


@st.composite
def _oversized(draw):
    size = draw(st.integers(FRAME_MAX - 12, FRAME_MAX + 12))
    pad = max(0, size - 10 - len('1,Q,2,{"p": ""}'))
    frame = _frame(('1,Q,2,{"p": "' + "x" * pad + '"}').encode(), newline=False)
    return frame + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n", b"x"]))


_inputs = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=FRAME_MAX - 4, max_size=FRAME_MAX + 4),
    _valid_frames(),
    _mutated_frames(),
    _mutated_inner_crc_ok(),
    _truncated_frames(),
    st.builds(lambda text, nl: _frame(text.encode(), nl), st.text(_printable, max_size=120), st.booleans()),
    _json_soup(),
    _oversized(),
)


def _fixed_inputs():
    """The golden and malformed vectors, so every run covers them."""
    out = []
    for _kind, _num, _body, frame in vectors.GOLDEN + vectors.ASTRAL:
        out.append(frame)
    out += [vectors.MAX_FRAME, vectors.OVER_FRAME]
    for line, _code in vectors.MALFORMED + vectors.LENIENT_JSON + vectors.APP_MALFORMED:
        out.append(line)
    out += vectors.APP_LENIENT
    return out


def _generate():
    drawn = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(_inputs)
    def collect(data):
        drawn.append(data)

    collect()
    unique = {}
    for data in _fixed_inputs() + drawn:
        unique.setdefault(data, None)
    return list(unique)


def _run(interpreter, path):
    args = [interpreter] + (["-X", "heapsize=8M"] if interpreter == MICROPYTHON else []) + [SCRIPT, path]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    return lines, proc, time.monotonic() - started


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    started = time.monotonic()
    inputs = _generate()
    generated = time.monotonic() - started
    path = str(tmp_path_factory.mktemp("wirefuzz") / "inputs.hex")
    with open(path, "w") as handle:
        for data in inputs:
            handle.write(data.hex() + "\n")
    mp_lines, mp_proc, mp_time = _run(MICROPYTHON, path)
    cp_lines, cp_proc, cp_time = _run(sys.executable, path)
    print("\nwire fuzz: %d inputs (hypothesis %.1f s), MicroPython %.1f s, CPython %.1f s"
          % (len(inputs), generated, mp_time, cp_time))
    return {"inputs": inputs, "mp": (mp_lines, mp_proc), "cp": (cp_lines, cp_proc)}


def _results(batch, which):
    lines, proc = batch[which]
    count = len(batch["inputs"])
    assert lines and lines[-1] == "DONE %d" % count, (
        "%s did not finish the batch (rc %s):\n%s" % (which, proc.returncode, (proc.stdout + proc.stderr)[-2000:]))
    assert len(lines) == count + 1
    return lines[:-1]


def _show_cases(cases, limit=12):
    out = []
    for data, first, second in cases[:limit]:
        out.append("  input %r\n    MicroPython: %s\n    CPython:     %s" % (data, first[:160], second[:160]))
        if not second:
            out[-1] = "  input %r\n    %s" % (data, first[:200])
    if len(cases) > limit:
        out.append("  ... and %d more" % (len(cases) - limit))
    return "\n".join(out)


def test_batch_is_large_and_varied(batch):
    inputs = batch["inputs"]
    assert len(inputs) >= 2000, len(inputs)
    verdicts = set(line.split(" ")[1] if line.startswith("err") else "ok" for line in _results(batch, "cp"))
    # every outcome class is reached, so the batch exercises each check of decode()
    assert verdicts >= {"ok", "FRAME_LONG", "FRAME_SYNTAX", "FRAME_CRC", "FRAME_VERSION", "FRAME_CHARS",
                        "FRAME_BODY"}, verdicts


@pytest.mark.parametrize("which", ["mp", "cp"])
def test_decoder_never_crashes(batch, which):
    crashes = [(data, line, "") for data, line in zip(batch["inputs"], _results(batch, which), strict=True)
               if not (line.startswith("ok ") or line.startswith("err FRAME_"))]
    assert not crashes, "decode raised something other than WireError:\n" + _show_cases(crashes)


def test_micropython_and_cpython_verdicts_agree(batch):
    differ = []
    for data, mp, cp in zip(batch["inputs"], _results(batch, "mp"), _results(batch, "cp"), strict=True):
        if mp.split(" ")[:3] != cp.split(" ")[:3]:        # "ok KIND NUM" or "err CODE"
            differ.append((data, mp, cp))
    assert not differ, "%d inputs get different verdicts:\n%s" % (len(differ), _show_cases(differ))


def test_micropython_and_cpython_decode_the_same_body(batch):
    differ = []
    for data, mp, cp in zip(batch["inputs"], _results(batch, "mp"), _results(batch, "cp"), strict=True):
        if mp.startswith("ok ") and cp.startswith("ok ") and mp != cp:
            differ.append((data, mp, cp))
    assert not differ, "%d inputs decode to different bodies:\n%s" % (len(differ), _show_cases(differ))


def test_fuzz_script_reports_each_outcome(tmp_path):
    # The harness itself: one line per input, in order, and a CRASH line is visible.
    path = tmp_path / "few.hex"
    path.write_text("\n".join([vectors.PING.hex(), vectors.PING[:-1].hex() + "63", "", "zz"]) + "\n")
    lines, proc, _ = _run(MICROPYTHON, str(path))
    assert lines == ["ok Q 1 {s6f.70:s70.69.6e.67}", "err FRAME_CRC", "err FRAME_SYNTAX",
                     "CRASH BadHex input line 4", "DONE 4"], proc.stdout + proc.stderr
