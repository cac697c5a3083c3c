"""`penctl flash` (penctl.flash): compile to .mpy, A/B slots behind the boot stub, power-cut safety.

Unit tests need no pen; the rest flash virtual pens (pensim.supervisor) through their pty, as on a board.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pty
import shutil
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest
import serial

from penctl import flash
from penctl.errors import FlashError, LinkError, NoAnswer, UsageError
from penctl.firmware.pen import limits
from penctl.flash import build as flash_build
from penctl.flash import device, settings

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MICROPYTHON = Path(sys.executable).parent / "micropython"

try:
    from pensim.supervisor import VirtualPen
except ImportError:  # pragma: no cover - the supervisor is part of the project
    VirtualPen = None

needs_pen = pytest.mark.skipif(VirtualPen is None or not MICROPYTHON.exists(),
                               reason="virtual pen (pensim.supervisor + MicroPython unix port) not available")


@pytest.fixture(autouse=True)
def _quick_timeouts(monkeypatch):
    # A pen that stopped answering is detected after this long (3 s by default).
    monkeypatch.setattr(settings, "TIMEOUT_SILENT", 1.0)


@pytest.fixture
def build(tmp_path):
    return flash.compile_firmware(cache_dir=tmp_path / "cache")


def firmware_copy(tmp_path: Path, name: str = "src", base: Path = FIRMWARE) -> Path:
    """A copy of the firmware sources: what a test flashes does not change under it (the working
    tree may be edited while the tests run)."""
    src = tmp_path / name
    shutil.copytree(base, src, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    return src


def add_comment_line(path: Path):
    """A comment line at the top: no code change, but the line numbers in the .mpy move."""
    path.write_text("# edited for a flash test\n" + path.read_text())


def slot_tree(state: Path, slot: str) -> dict[str, bytes]:
    base = state / "fw" / slot
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def at_repl(port: str) -> bool:
    """True if the pen answers a bare Enter with the friendly prompt (a firmware ignores a CR)."""
    with serial.Serial(port, timeout=0.1) as ser:
        ser.write(b"\r")
        buf = b""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and b">>> " not in buf:
            buf += ser.read(ser.in_waiting or 1)
    return b">>> " in buf


# ---- compile ----------------------------------------------------------------------------------

def test_compile_every_firmware_file_but_the_stub(build):
    sources = {p.relative_to(FIRMWARE).with_suffix(".mpy").as_posix() for p in FIRMWARE.rglob("*.py")
               if "__pycache__" not in p.parts and p.name != "boot_stub.py"
               and p.relative_to(FIRMWARE).as_posix() != "__init__.py"}   # host package marker
    assert {f.rel for f in build.files} == sources
    assert "main.mpy" in sources and "pen/app.mpy" in sources and "boards/pico_pen.mpy" in sources
    assert build.stub == (FIRMWARE / "boot_stub.py").read_bytes()
    for f in build.files:
        assert f.data[:2] == b"M\x06", f.rel                 # .mpy version 6
        if f.rel in build.native:                            # native code: for the RP2040
            assert f.data[2] >> 2 == flash.ARCHS.index("armv6m"), f.rel
        else:
            assert f.data[2] >> 2 == 0, f.rel                # no native arch: bytecode only
        assert hashlib.sha256(f.data).hexdigest() == f.sha256


@functools.cache
def unix_port_mpy() -> int:
    """sys.implementation._mpy of the unix port (the virtual pen): .mpy version | native arch << 10."""
    out = subprocess.run([str(MICROPYTHON), "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout)


def unix_port_arch() -> str:
    """What the virtual pen's native code is compiled for (x64 here; the RP2040 is armv6m)."""
    return flash.ARCHS[unix_port_mpy() >> 10]


def test_compiled_firmware_loads_on_the_unix_port(tmp_path):
    build = flash.compile_firmware(cache_dir=tmp_path / "cache", arch=unix_port_arch())
    tree = tmp_path / "slot"
    for f in build.files:
        (tree / f.rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / f.rel).write_bytes(f.data)
    mods = sorted(f.rel[:-4].replace("/", ".") for f in build.files if f.rel != "boards/pico_pen.mpy")
    code = ("import sys\nsys.path[:]=['%s']\n" % tree
            + "".join("import %s\n" % m for m in mods)
            + "print('loaded', pen.app.__file__, main.main)\n")
    out = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loaded %s/pen/app.mpy" % tree in out.stdout
    assert "<function main" in out.stdout   # imported, not run: main.py runs only as __main__


def test_compile_cache_is_reused(build, tmp_path, monkeypatch):
    def no_compiler(*a, **k):
        raise AssertionError("mpy-cross ran although nothing changed")

    monkeypatch.setattr(flash_build.subprocess, "Popen", no_compiler)
    again = flash.compile_firmware(cache_dir=tmp_path / "cache")
    assert again.hashes == build.hashes


def test_compile_error_names_the_file_and_sends_nothing(tmp_path):
    src = firmware_copy(tmp_path)
    (src / "pen" / "profiles.py").write_text("def broken(:\n")
    with pytest.raises(UsageError) as err:
        flash.flash_firmware("/dev/nonexistent-pen", source_dir=src)
    assert "pen/profiles.py" in err.value.message and "nothing was sent" in err.value.message


def test_not_a_firmware_folder(tmp_path):
    with pytest.raises(UsageError):
        flash.compile_firmware(tmp_path, cache_dir=tmp_path / "cache")


# ---- boot stub --------------------------------------------------------------------------------

def test_stub_picks_the_pointer_slot_if_complete_else_the_newest_complete(build):
    pick = build.stub_module.pick
    assert pick("a", {"a": 1, "b": 2}) == "a"           # the pointer wins
    assert pick("b", {"a": 3, "b": None}) == "a"        # pointed slot incomplete
    assert pick(None, {"a": 1, "b": 2}) == "b"          # no pointer: newest complete
    assert pick("x\x00", {"a": 4, "b": None}) == "a"    # corrupt pointer
    assert pick("a", {"a": None, "b": None}) is None    # nothing flashed
    gen = build.stub_module.generation
    assert gen("12") == 12 and gen(None) is None and gen("") is None and gen("1\x002") is None


def _stub_flash(tmp_path: Path, slots: dict[str, str | None], pointer: str | None) -> Path:
    """A flash root with the stub as main.py; each slot's main.py prints its name (None: incomplete)."""
    root = tmp_path / "flash"
    (root / "fw").mkdir(parents=True)
    shutil.copy(FIRMWARE / "boot_stub.py", root / "main.py")
    for slot, gen in slots.items():
        d = root / "fw" / slot
        d.mkdir()
        (d / "main.py").write_text("def main():\n    print('booted %s', __file__)\n" % slot)
        if gen is not None:
            (d / "complete").write_text(gen)
    if pointer is not None:
        (root / "fw" / "active").write_text(pointer)
    return root


@pytest.mark.parametrize("slots,pointer,expect", [
    ({"a": "1", "b": "2"}, "a", "booted a"),
    ({"a": "1", "b": None}, "b", "booted a"),     # power cut while b was staged: b has no marker
    ({"a": "1", "b": "2"}, None, "booted b"),     # pointer lost: newest complete
    ({"a": None, "b": None}, None, "no complete firmware"),
])
def test_stub_on_the_unix_port(tmp_path, slots, pointer, expect):
    root = _stub_flash(tmp_path, slots, pointer)
    out = subprocess.run([str(MICROPYTHON), "main.py"], cwd=root, capture_output=True, text=True, timeout=30)
    assert expect in out.stdout + out.stderr
    if expect.startswith("booted"):
        assert out.returncode == 0 and "fw/%s/main.py" % expect[-1] in out.stdout
    else:
        assert out.returncode != 0 and "penctl flash" in out.stdout + out.stderr


# ---- plan ------------------------------------------------------------------------------------

def _pen(build, files=None, gens=None, pointer=None, stub=None):
    files = files or {}
    return flash.PenFiles({"a": files.get("a", {}), "b": files.get("b", {})},
                          {"a": {"pen", "boards"} if files.get("a") else set(),
                           "b": {"pen", "boards"} if files.get("b") else set()},
                          {"a": None, "b": None, **(gens or {})}, pointer, stub)


def test_plan_blank_pen_stages_a(build):
    plan = flash.make_plan(build, _pen(build))
    assert plan.slot == "a" and plan.stage and plan.set_pointer and plan.write_stub
    assert [f.rel for f in plan.write] == [f.rel for f in build.files] and not plan.copy
    assert plan.mkdirs == ["boards", "pen"]


def test_plan_nothing_changed(build):
    plan = flash.make_plan(build, _pen(build, {"a": build.hashes}, {"a": 1}, "a", build.stub_sha256))
    assert not plan.changed and plan.slot == "a"


def test_plan_one_change_sends_one_file_and_copies_the_rest(build):
    old = dict(build.hashes, **{"pen/app.mpy": "0" * 64, "pen/gone.mpy": "1" * 64})
    plan = flash.make_plan(build, _pen(build, {"a": old, "b": {"junk.mpy": "2" * 64}}, {"a": 3, "b": 2}, "a",
                                       build.stub_sha256))
    assert plan.slot == "b" and plan.stage and plan.generation == 4
    assert [f.rel for f in plan.write] == ["pen/app.mpy"]
    assert plan.copy_from == "a" and len(plan.copy) == len(build.files) - 1
    assert plan.remove == ["junk.mpy"] and not plan.write_stub
    first = device.write_batches(plan, build.stub_module, 1 << 20)[0][0]
    marker_off = first.index("R('fw/b/complete')")
    assert marker_off < first.index("C('fw/a/") < first.index("W('fw/b/pen/app.mpy'")


def test_plan_back_to_the_previous_build_only_switches(build):
    plan = flash.make_plan(build, _pen(build, {"a": {"x.mpy": "0" * 64}, "b": build.hashes}, {"a": 5, "b": 4},
                                       "a", build.stub_sha256))
    assert plan.slot == "b" and not plan.stage and plan.set_pointer and not plan.write


def _factory_pen(build):
    pen = _pen(build, stub="f" * 64)
    pen.main_is_stub = False
    pen.root_files = {"main.py": "f" * 64, "pen/app.py": "1" * 64, "boards/sim.py": "2" * 64}
    pen.root_dirs = {"pen", "boards"}
    return pen


def test_plan_factory_image_becomes_the_fallback_slot(build):
    plan = flash.make_plan(build, _factory_pen(build))
    assert plan.slot == "a" and plan.stage and plan.write_stub and plan.set_pointer
    assert plan.adopt.slot == "b" and plan.fallback == "b" and plan.adopt.copy
    assert plan.adopt.files == {"main.py": "f" * 64, "pen/app.py": "1" * 64, "boards/sim.py": "2" * 64}
    assert plan.adopt.mkdirs == ["boards", "pen"] and plan.generation == plan.adopt.generation + 1
    code = device.adopt_code(plan.adopt, build.stub_module)
    assert code.index("R('fw/b/complete')") < code.index("C('main.py','fw/b/main.py')")
    # adopted before (an interrupted first flash): not copied again, still the fallback
    pen = _factory_pen(build)
    pen.files["b"], pen.gens["b"] = dict(pen.root_files), 1
    again = flash.make_plan(build, pen)
    assert again.adopt.slot == "b" and not again.adopt.copy and again.fallback == "b" and again.generation == 2


def test_plan_an_older_boot_stub_is_not_a_factory_image(build):
    pen = _pen(build, {"a": {"main.mpy": "0" * 64}}, {"a": 1}, "a", stub="e" * 64)
    pen.main_is_stub = True
    pen.root_files = {"main.py": "e" * 64}
    plan = flash.make_plan(build, pen)
    assert plan.adopt is None and plan.slot == "b" and plan.fallback == "a" and plan.write_stub


def test_refuse_a_pen_that_cannot_load_the_mpy_version(build):
    pen = _pen(build)
    pen.mpy = 5 | 3 << 8 | 4 << 10
    with pytest.raises(FlashError) as err:
        flash.check_loadable(build, pen)
    assert "version 5" in err.value.message and "nothing was written" in err.value.message


def _with_native_module(tmp_path: Path) -> Path:
    src = firmware_copy(tmp_path)
    (src / "pen" / "fastpath.py").write_text(
        "import micropython\n\n\n@micropython.native\ndef add(a, b):\n    return a + b\n")
    return src


def test_native_code_is_compiled_for_the_pen_architecture(tmp_path):
    src = _with_native_module(tmp_path)
    build = flash.compile_firmware(src, cache_dir=tmp_path / "cache")
    assert "pen/fastpath.mpy" in build.native and build.arch == "armv6m"
    fast = {f.rel: f for f in build.files}["pen/fastpath.mpy"]
    assert fast.data[2] >> 2 == flash.ARCHS.index("armv6m")
    rp2040 = _pen(build)
    rp2040.mpy = 6 | 3 << 8 | flash.ARCHS.index("armv6m") << 10
    flash.check_loadable(build, rp2040)
    assert rp2040.arch == "armv6m"
    pc = _pen(build)
    pc.mpy = 6 | 3 << 8 | flash.ARCHS.index("x64") << 10
    with pytest.raises(FlashError) as err:
        flash.check_loadable(build, pc)
    assert "native code for armv6m" in err.value.message and "x64" in err.value.message
    x64 = flash.compile_firmware(src, cache_dir=tmp_path / "cache", arch="x64")
    flash.check_loadable(x64, pc)
    plain = {f.rel: f.sha256 for f in build.files if f.rel not in build.native}
    assert plain.items() <= x64.hashes.items()          # bytecode-only files are the same for every arch


def test_write_batches_split_large_files(build):
    plan = flash.make_plan(build, _pen(build))
    batches = device.write_batches(plan, build.stub_module, 2048)
    assert sum(n for _c, n, _f in batches) == sum(len(f.data) for f in build.files)
    assert sum(f for _c, _n, f in batches) == len(build.files)
    assert all(n <= 2048 for _c, n, _f in batches)


# ---- links that are not a pen -----------------------------------------------------------------

def test_missing_port_is_a_link_error():
    with pytest.raises(LinkError) as err:
        flash.flash_firmware("/dev/no-such-pen-port")
    assert "--port" in err.value.message


def test_silent_port_is_a_link_error(monkeypatch):
    monkeypatch.setattr(settings, "TIMEOUT_RAW_REPL", 1.0)
    monkeypatch.setattr(settings, "PROBE_TIMEOUT", 1.0)
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        # The busy guard: a silent port is no answer, so nothing is broken into (exit 3).
        t0 = time.monotonic()
        with pytest.raises(NoAnswer) as err:
            flash.flash_firmware(os.ttyname(slave))
        assert time.monotonic() - t0 < 8
        assert "no usable answer" in err.value.message and "--force" in err.value.message
        assert err.value.exit_code == 3
        os.set_blocking(master, False)
        sent = os.read(master, 4096)
        assert b"\x03" not in sent and b"\x01" not in sent              # no Ctrl-C, no raw REPL
        # Forced: the raw REPL does not answer either.
        with pytest.raises(LinkError) as err:
            flash.flash_firmware(os.ttyname(slave), force=True)
        assert "REPL" in err.value.message
    finally:
        os.close(master)
        os.close(slave)


# ---- on a virtual pen -------------------------------------------------------------------------

@needs_pen
def test_flash_blank_pen_then_nothing_changed_then_one_file(tmp_path):
    fw = firmware_copy(tmp_path, "fw")
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        assert at_repl(vp.port)
        rep = flash.flash_firmware(vp.port, source_dir=fw)
        assert rep["protocol"] == limits.PROTOCOL_VERSION
        assert rep["changed"] and rep["slot"] == "a"
        assert rep["files_total"] == rep["files_written"] - 1 > 5       # + the boot stub
        assert (state / "fw" / "active").read_text() == "a"
        assert (state / "main.py").read_bytes() == (FIRMWARE / "boot_stub.py").read_bytes()
        fresh = flash.compile_firmware(fw, arch=unix_port_arch())
        assert slot_tree(state, "a") == {**{f.rel: f.data for f in fresh.files}, "complete": b"1"}
        assert flash.ping(vp.port, 5) == limits.PROTOCOL_VERSION

        # Nothing changed: no write (how long it takes is a `make bench` figure, docs/design.md §6).
        rep = flash.flash_firmware(vp.port, source_dir=fw)
        assert rep["files_written"] == 0 and rep["bytes_written"] == 0 and not rep["changed"]
        assert rep["protocol"] == limits.PROTOCOL_VERSION

        src = firmware_copy(tmp_path, base=fw)
        add_comment_line(src / "pen" / "profiles.py")
        rep = flash.flash_firmware(vp.port, source_dir=src)
        assert rep["files_written"] == 1 and rep["files_copied"] == rep["files_total"] - 1
        assert rep["slot"] == "b" and (state / "fw" / "active").read_text() == "b"
        new = {f.rel: f.data for f in flash.compile_firmware(src, arch=unix_port_arch()).files}
        assert slot_tree(state, "b") == {**new, "complete": b"2"}
        assert new["pen/profiles.mpy"] != slot_tree(state, "a")["pen/profiles.mpy"]
        assert flash.ping(vp.port, 5) == limits.PROTOCOL_VERSION


@needs_pen
def test_flash_a_pen_running_its_factory_firmware(tmp_path):
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=False) as vp:
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION    # the firmware from source runs
        factory_main = (state / "main.py").read_bytes()
        rep = flash.flash_firmware(vp.port)
        assert rep["changed"] and rep["protocol"] == limits.PROTOCOL_VERSION
        assert (state / "main.py").read_bytes() != factory_main
        assert (state / "fw" / "active").read_text() == rep["slot"]
        # the factory image stays bootable in the other slot (the fallback), older than the new one
        assert rep["factory_adopted"] and rep["fallback"] == "b" and rep["slot"] == "a"
        assert (state / "fw" / "b" / "main.py").read_bytes() == factory_main
        assert int((state / "fw" / "b" / "complete").read_text()) < int((state / "fw" / "a" / "complete").read_text())
        vp.power_cut()
        vp.power_on()
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION    # boots the flashed slot


def _flash_and_cut(vp, source_dir=None) -> tuple[BaseException | None, list]:
    """Flash in a thread; cut the power right after the first batch of file data went out."""
    seen: list = []
    result: list = []

    def progress(stage, done, total):
        seen.append((stage, done, total))
        if stage == "write" and 0 < done < total and not result:
            result.append("cut")
            vp.power_cut()

    def run():
        try:
            flash.flash_firmware(vp.port, source_dir=source_dir, progress=progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    th = threading.Thread(target=run)
    th.start()
    th.join(30)
    assert not th.is_alive(), "flash hung after the power cut"
    assert result and result[0] == "cut", seen
    return (result[1] if len(result) > 1 else None), seen


@needs_pen
def test_power_cut_mid_flash_keeps_the_previous_firmware(tmp_path, monkeypatch):
    fw = firmware_copy(tmp_path, "fw")
    monkeypatch.setattr(settings, "WRITE_BATCH_BYTES", 2048)   # several write steps for a small change
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        flash.flash_firmware(vp.port, source_dir=fw)
        before = slot_tree(state, "a")
        src = firmware_copy(tmp_path, base=fw)
        add_comment_line(src / "pen" / "app.py")
        add_comment_line(src / "pen" / "control.py")
        t0 = time.monotonic()
        exc, _seen = _flash_and_cut(vp, src)
        assert isinstance(exc, FlashError), exc
        assert time.monotonic() - t0 < 10
        assert "previous" in exc.message or "before" in exc.message
        assert "penctl flash" in exc.message
        # the switch never happened: pointer and the booting slot are untouched
        assert (state / "fw" / "active").read_text() == "a"
        assert slot_tree(state, "a") == before
        assert not (state / "fw" / "b" / "complete").exists()

        vp.power_on()
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION  # the previous firmware boots
        rep = flash.flash_firmware(vp.port, source_dir=src)
        assert rep["slot"] == "b" and rep["changed"] and rep["protocol"] == limits.PROTOCOL_VERSION
        new = {f.rel: f.data for f in flash.compile_firmware(src, arch=unix_port_arch()).files}
        assert new.items() <= slot_tree(state, "b").items()


@needs_pen
def test_power_cut_mid_first_flash_leaves_the_pen_at_the_repl(tmp_path, monkeypatch):
    fw = firmware_copy(tmp_path, "fw")
    monkeypatch.setattr(settings, "WRITE_BATCH_BYTES", 4096)
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        exc, _seen = _flash_and_cut(vp, fw)
        assert isinstance(exc, FlashError), exc
        assert list((state / "fw" / "a").rglob("*.mpy"))          # half a slot was written ...
        assert not (state / "main.py").exists() and not (state / "fw" / "active").exists()
        vp.power_on()
        assert at_repl(vp.port)                                    # ... and nothing boots it
        with pytest.raises(FlashError):
            flash.ping(vp.port, 1.5)
        rep = flash.flash_firmware(vp.port, source_dir=fw)
        assert rep["slot"] == "a" and rep["protocol"] == limits.PROTOCOL_VERSION
        assert (state / "fw" / "active").read_text() == "a"


@needs_pen
def test_protocol_mismatch_is_a_flash_error_and_the_right_firmware_goes_back_on(tmp_path):
    fw = firmware_copy(tmp_path, "fw")
    src = firmware_copy(tmp_path, base=fw)
    lim = src / "pen" / "limits.py"
    old = "PROTOCOL_VERSION = const(%d)" % limits.PROTOCOL_VERSION
    assert old in lim.read_text()
    lim.write_text(lim.read_text().replace(old, "PROTOCOL_VERSION = const(%d)" % (limits.PROTOCOL_VERSION + 1)))
    with VirtualPen(state_dir=tmp_path / "state", clock="real", blank=True) as vp:
        with pytest.raises(FlashError) as err:
            flash.flash_firmware(vp.port, source_dir=src)
        assert "protocol %d" % (limits.PROTOCOL_VERSION + 1) in err.value.message
        assert "penctl speaks %d" % limits.PROTOCOL_VERSION in err.value.message
        rep = flash.flash_firmware(vp.port, source_dir=fw)
        assert rep["protocol"] == limits.PROTOCOL_VERSION and rep["slot"] == "b"


@needs_pen
def test_a_firmware_that_does_not_start_is_rolled_back(tmp_path):
    fw = firmware_copy(tmp_path, "fw")
    src = firmware_copy(tmp_path, base=fw)
    app = src / "pen" / "app.py"
    app.write_text(app.read_text() + "\nraise RuntimeError('boom at import')\n")
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        flash.flash_firmware(vp.port, source_dir=fw)
        with pytest.raises(FlashError) as err:
            flash.flash_firmware(vp.port, source_dir=src)
        assert "boom at import" in err.value.message and "switched back" in err.value.message
        assert (state / "fw" / "active").read_text() == "a"
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION      # the previous firmware runs
        rep = flash.flash_firmware(vp.port, source_dir=fw)                           # and stays: nothing to do
        assert rep["slot"] == "a" and not rep["changed"]


@needs_pen
def test_failed_first_flash_on_a_factory_pen_keeps_the_factory_firmware(tmp_path):
    src = firmware_copy(tmp_path, "broken")
    app = src / "pen" / "app.py"
    app.write_text(app.read_text() + "\nraise RuntimeError('boom at import')\n")
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=False) as vp:
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION          # the factory image runs
        factory_main = (state / "main.py").read_bytes()
        with pytest.raises(FlashError) as err:
            flash.flash_firmware(vp.port, source_dir=src)
        assert "boom at import" in err.value.message and "factory firmware" in err.value.message
        assert "switched back" in err.value.message
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION          # and runs again
        assert (state / "fw" / "active").read_text() == "b"
        assert (state / "fw" / "b" / "main.py").read_bytes() == factory_main
        vp.power_cut()
        vp.power_on()
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION          # after a power cycle too
        rep = flash.flash_firmware(vp.port)                                # a good firmware goes on
        assert rep["slot"] == "a" and rep["fallback"] == "b" and rep["protocol"] == limits.PROTOCOL_VERSION


@needs_pen
def test_host_interrupt_mid_flash_resumes_the_previous_firmware(tmp_path, monkeypatch):
    fw = firmware_copy(tmp_path, "fw")
    monkeypatch.setattr(settings, "WRITE_BATCH_BYTES", 2048)
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        flash.flash_firmware(vp.port, source_dir=fw)
        src = firmware_copy(tmp_path, base=fw)
        add_comment_line(src / "pen" / "app.py")

        def progress(stage, done, total):
            if stage == "write" and 0 < done < total:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            flash.flash_firmware(vp.port, source_dir=src, progress=progress)
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION   # not left in the raw REPL
        assert (state / "fw" / "active").read_text() == "a"


def test_a_stub_that_does_not_compile_is_not_flashed(tmp_path):
    src = firmware_copy(tmp_path)
    (src / "boot_stub.py").write_text((src / "boot_stub.py").read_text() + "\nif True\n")
    with pytest.raises(UsageError) as err:
        flash.flash_firmware("/dev/nonexistent-pen", source_dir=src)
    assert "boot_stub.py" in err.value.message


@needs_pen
def test_corrupt_pointer_and_marker_are_treated_as_absent(tmp_path):
    fw = firmware_copy(tmp_path, "fw")
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        flash.flash_firmware(vp.port, source_dir=fw)
        vp.power_cut()
        (state / "fw" / "active").write_bytes(b"\xff\tgarbage\n\x00")
        (state / "fw" / "b").mkdir()
        (state / "fw" / "b" / "complete").write_bytes(b"7\t\xfe")
        vp.power_on()
        assert flash.ping(vp.port, 10) == limits.PROTOCOL_VERSION   # the stub falls back to complete slot a
        rep = flash.flash_firmware(vp.port, source_dir=fw)
        assert rep["slot"] == "a" and rep["changed"] and rep["files_written"] == 0   # only the pointer
        assert (state / "fw" / "active").read_text() == "a"


@needs_pen
def test_native_code_on_the_virtual_pen(tmp_path):
    src = _with_native_module(tmp_path)
    state = tmp_path / "state"
    with VirtualPen(state_dir=state, clock="real", blank=True) as vp:
        rep = flash.flash_firmware(vp.port, source_dir=src)
        assert rep["protocol"] == limits.PROTOCOL_VERSION
        arch = unix_port_mpy() >> 10
        assert (state / "fw" / "a" / "pen" / "fastpath.mpy").read_bytes()[2] >> 2 == arch
        out = subprocess.run([str(MICROPYTHON), "-c", "import sys; sys.path[:0] = ['fw/a']\n"
                              "from pen.fastpath import add; print(add(2, 3))"],
                             cwd=state, capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "5", out.stdout + out.stderr
