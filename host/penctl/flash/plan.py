"""What to write where: pure functions of the build and of what the pen reported (no I/O).

Layout on the pen (firmware/boot_stub.py is the pen's /main.py and reads it):

    main.py             the boot stub (stable; rewritten only when it differs)
    fw/a/, fw/b/        two firmware slots: main.mpy, pen/*.mpy, boards/*.mpy
    fw/<slot>/complete  written last, after the slot's hashes were verified (its generation)
    fw/active           "a" or "b", replaced atomically (temp file + os.rename)

The slot the stub boots now is never touched; the other one is staged. A pen whose /main.py is not a
boot stub runs a *factory image* (main.py with pen/ and boards/ as sources at the root): nothing is
in a slot yet, so before the stub replaces that main.py, the factory image is copied (on the pen) into
the slot that is not staged and marked complete with the lower generation. It is the fallback that
boots if the new firmware does not start (docs/design.md §4.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from penctl.errors import FlashError
from penctl.flash.build import Build, Built

# MicroPython's native architecture numbers (sys.implementation._mpy >> 10) as mpy-cross -march names
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
         "xtensawin", "rv32imc", "rv64imc")
FACTORY_MAIN = "main.py"


@dataclass
class PenFiles:
    """What the pen reported (penctl.flash.device.parse_hashes)."""
    files: dict[str, dict[str, str]]   # slot -> relpath -> sha256 (the marker excluded)
    dirs: dict[str, set[str]]          # slot -> relpaths of its folders
    gens: dict[str, int | None]        # slot -> generation of its marker (None: not complete)
    pointer: str | None
    stub_sha256: str | None            # of main.py (None: there is none)
    mpy: int | None = None             # sys.implementation._mpy: .mpy version, sub-version, native arch
    main_is_stub: bool | None = None   # main.py reads the slot pointer (a boot stub, any version)
    root_files: dict[str, str] = field(default_factory=dict)   # factory image: main.py, pen/..., boards/...
    root_dirs: set[str] = field(default_factory=set)

    @property
    def factory_boots(self) -> bool:
        """/main.py is a firmware of its own (a factory image), not a boot stub."""
        return self.stub_sha256 is not None and self.main_is_stub is False

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


@dataclass
class Adoption:
    """Copy the factory image into `slot` (on the pen) and mark it complete: the fallback."""
    slot: str
    generation: int
    files: dict[str, str]                              # relpath -> sha256, copied from the root
    copy: bool = True                                  # False: the slot already holds it, complete
    remove: list[str] = field(default_factory=list)    # stale files in the slot
    rmdirs: list[str] = field(default_factory=list)
    mkdirs: list[str] = field(default_factory=list)


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
    adopt: Adoption | None = None   # a factory image becomes the fallback slot first
    fallback: str | None = None     # the slot to switch back to if the new firmware does not start

    @property
    def changed(self) -> bool:
        return self.stage or self.set_pointer or self.write_stub or self.adopt is not None


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


def top_dirs(build: Build) -> list[str]:
    """The firmware's top-level folders (pen, boards): where a factory image keeps its sources."""
    return sorted({f.rel.split("/", 1)[0] for f in build.files if "/" in f.rel})


def _folders(rels) -> set[str]:
    out = set()
    for rel in rels:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _shallow_first(dirs):
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def _deep_first(dirs):
    return sorted(dirs, key=lambda d: (-d.count("/"), d))


def _adoption(pen: PenFiles, slot: str, generation: int) -> Adoption:
    want = pen.root_files
    have = pen.files[slot]
    if pen.gens[slot] is not None and have == want:
        return Adoption(slot, pen.gens[slot], dict(want), copy=False)
    need = _folders(want)
    return Adoption(slot, generation, dict(want), remove=sorted(set(have) - set(want)),
                    rmdirs=_deep_first(pen.dirs[slot] - need), mkdirs=_shallow_first(need - pen.dirs[slot]))


def make_plan(build: Build, pen: PenFiles) -> Plan:
    stubm = build.stub_module
    want = build.hashes
    write_stub = pen.stub_sha256 != build.stub_sha256
    gen = max([g for g in pen.gens.values() if g is not None], default=0) + 1
    factory = pen.factory_boots and FACTORY_MAIN in pen.root_files
    # What boots now: the slot the stub picks, or (factory image) no slot at all.
    booted = None if factory else stubm.pick(pen.pointer, pen.gens)
    if booted is not None and pen.files[booted] == want:
        return Plan(booted, gen, set_pointer=pen.pointer != booted, write_stub=write_stub,
                    fallback=None)

    def cost(slot):
        have = pen.files[slot]
        return sum(len(f.data) for f in build.files if have.get(f.rel) != f.sha256) + len(set(have) - set(want))

    # Never the booting slot; with none booting, the slot closer to done (an interrupted first flash).
    slot = min((s for s in stubm.SLOTS if s != booted), key=lambda s: (cost(s), s))
    adopt = None
    fallback = booted
    if factory:
        other = next(s for s in stubm.SLOTS if s != slot)
        adopt = _adoption(pen, other, gen)
        fallback = other
        gen = max(gen, adopt.generation + 1)
    have = pen.files[slot]
    if pen.gens[slot] is not None and have == want:
        # staged and verified before (flashing back to the previous build): only switch
        return Plan(slot, gen, set_pointer=True, write_stub=write_stub, adopt=adopt, fallback=fallback)
    todo = [f for f in build.files if have.get(f.rel) != f.sha256]
    # The booting slot holds the unchanged files of a small change: copy those on the pen, so the
    # link carries only what really changed (the copies are verified with everything else).
    source = pen.files[booted] if booted is not None else {}
    copy = [f for f in todo if source.get(f.rel) == f.sha256]
    need_dirs = _folders(want)
    return Plan(
        slot, gen, stage=True,
        write=[f for f in todo if source.get(f.rel) != f.sha256],
        copy=copy, copy_from=booted if copy else None,
        remove=sorted(set(have) - set(want)),
        rmdirs=_deep_first(pen.dirs[slot] - need_dirs),
        mkdirs=_shallow_first(need_dirs - pen.dirs[slot]),
        set_pointer=True, write_stub=write_stub, adopt=adopt, fallback=fallback)
