"""The code `penctl flash` runs on the pen (MicroPython, sent through the raw REPL), and the parser of
what it prints. Paths and names come from the boot stub module, so the host writes exactly the layout
the stub reads. Every function here only builds strings; penctl.flash.deploy sends them.
"""

from __future__ import annotations

import base64

from penctl.errors import FlashError
from penctl.flash.build import Build
from penctl.flash.plan import FACTORY_MAIN, Adoption, PenFiles, Plan

# Prints, tab-separated, one line each: "F slot relpath sha256" for every file of a slot,
# "D slot relpath" for every folder, "G slot marker-text"; for a factory image at the root
# "X / relpath sha256" and "Y / relpath"; the full hash adds "P pointer-text", "S sha256-of-main.py",
# "K 1|0" (main.py reads the slot pointer: a boot stub) and "V sys.implementation._mpy". "-" stands
# for a missing file, "?" for a marker or pointer that is not plain letters/digits (corrupt: the
# stub treats it as absent).
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
def w(s,d,q,f='F',g='D'):
 try:l=[(e[0],e[1]) for e in os.ilistdir(d)]
 except OSError:return
 for n,t in l:
  if t&0x4000:print(g,s,q+n,sep='\\t');w(s,d+'/'+n,q+n+'/',f,g)
  else:print(f,s,q+n,h(d+'/'+n),sep='\\t')
def v(s,d):
 w(s,d,'')
 print('G',s,r(d+'/'+%(mark)r),sep='\\t')
def x(d):
 try:os.stat(d)
 except OSError:return
 print('Y','/',d,sep='\\t');w('/',d,d+'/','X','Y')
"""

_DEV_MAIN = """\
try:print('S',h(%(main)r),sep='\\t')
except OSError:print('S','-',sep='\\t')
try:
 with open(%(main)r,'rb') as f:k=f.read()
 print('K',int(%(pointer)r in k),sep='\\t')
except OSError:print('K','-',sep='\\t')
import sys
print('V',getattr(sys.implementation,'_mpy',0),sep='\\t')
"""


def hash_code(stubm, slots, everything: bool, root_dirs=()) -> str:
    """Hash the files of `slots`; `everything` adds the pointer, main.py, the MicroPython build and the
    factory image's folders `root_dirs` at the root."""
    code = [_DEV_HASH % {"mark": stubm.MARK}]
    code += ["v(%r,%r)\n" % (slot, stubm.slot_dir(slot)) for slot in slots]
    if everything:
        code.append("print('P',r(%r),sep='\\t')\n" % stubm.POINTER)
        code.append(_DEV_MAIN % {"main": FACTORY_MAIN, "pointer": stubm.POINTER.encode()})
        code += ["x(%r)\n" % d for d in root_dirs]
    return "".join(code)


def parse_hashes(text: str, stubm) -> PenFiles:
    slots = stubm.SLOTS
    files: dict[str, dict[str, str]] = {s: {} for s in slots}
    dirs: dict[str, set[str]] = {s: set() for s in slots}
    gens: dict[str, int | None] = {s: None for s in slots}
    root_files: dict[str, str] = {}
    root_dirs: set[str] = set()
    pointer = stub = mpy = is_stub = None
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
        elif tag == "X" and len(parts) == 4 and parts[1] == "/":
            root_files[parts[2]] = parts[3]
        elif tag == "Y" and len(parts) == 3 and parts[1] == "/":
            root_dirs.add(parts[2])
        elif tag == "P" and len(parts) == 2:
            pointer = None if parts[1] == "-" else parts[1]
        elif tag == "S" and len(parts) == 2:
            stub = None if parts[1] == "-" else parts[1]
        elif tag == "K" and len(parts) == 2 and parts[1] in ("0", "1", "-"):
            is_stub = None if parts[1] == "-" else parts[1] == "1"
        elif tag == "V" and len(parts) == 2 and parts[1].isdigit():
            mpy = int(parts[1])
        elif line.strip():
            raise FlashError("unexpected output from the pen while hashing its files: %r" % line[:80])
    if stub is not None:
        root_files[FACTORY_MAIN] = stub
    return PenFiles(files, dirs, gens, pointer, stub, mpy, is_stub, root_files, root_dirs)


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


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _clear_slot(stubm, slot, remove, rmdirs, mkdirs) -> list[str]:
    """Marker off first (the slot is not complete from here on), then stale files and folders out,
    needed folders in."""
    root = stubm.slot_dir(slot)
    head = [_DEV_WRITE, "M(%r)\nM(%r)\nR(%r)\n" % (root.rsplit("/", 1)[0], root, root + "/" + stubm.MARK)]
    head += ["R(%r)\n" % (root + "/" + rel) for rel in remove]
    head += ["try:os.rmdir(%r)\nexcept OSError:pass\n" % (root + "/" + d) for d in rmdirs]
    head += ["M(%r)\n" % (root + "/" + d) for d in mkdirs]
    return head


def adopt_code(adopt: Adoption, stubm) -> str:
    """Copy the factory image from the root into the adoption slot (its marker stays off)."""
    root = stubm.slot_dir(adopt.slot)
    code = _clear_slot(stubm, adopt.slot, adopt.remove, adopt.rmdirs, adopt.mkdirs)
    code += ["C(%r,%r)\n" % (rel, root + "/" + rel) for rel in sorted(adopt.files)]
    return "".join(code)


def marker_code(stubm, slot: str, generation: int) -> str:
    return _DEV_WRITE + "A(%r,%r)\n" % (stubm.slot_dir(slot) + "/" + stubm.MARK, b64(str(generation).encode()))


def pointer_code(stubm, slot: str) -> str:
    return _DEV_WRITE + "A(%r,%r)\n" % (stubm.POINTER, b64(slot.encode()))


def write_batches(plan: Plan, stubm, batch_bytes: int) -> list[tuple[str, int, int]]:
    """Device code that stages plan.slot: [(code, file bytes sent in it, files completed in it)].

    The first batch removes the slot's marker before anything else in the slot changes, then
    stale files and folders, creates folders and makes the on-pen copies; then the files follow,
    batch_bytes of file data per batch.
    """
    root = stubm.slot_dir(plan.slot)
    head = _clear_slot(stubm, plan.slot, plan.remove, plan.rmdirs, plan.mkdirs)
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
            lines.append("W(%r,%r,%r)\n" % (root + "/" + built.rel, "ab" if off else "wb", b64(piece)))
            nbytes += len(piece)
            off += len(piece)
            if off >= len(built.data):
                nfiles += 1
                break
    batches.append(("".join(lines), nbytes, nfiles))
    return batches


def commit_code(plan: Plan, build: Build) -> str:
    """Marker, then pointer, then stub: each replaced atomically, so after any prefix of them the
    pen boots a complete firmware (or, if it never had one, none; or still its factory image)."""
    stubm = build.stub_module
    code = [_DEV_WRITE, "M(%r)\n" % stubm.POINTER.rsplit("/", 1)[0]]
    if plan.stage:
        code.append("A(%r,%r)\n" % (stubm.slot_dir(plan.slot) + "/" + stubm.MARK,
                                    b64(str(plan.generation).encode())))
    if plan.set_pointer:
        code.append("A(%r,%r)\n" % (stubm.POINTER, b64(plan.slot.encode())))
    if plan.write_stub:
        code.append("A(%r,%r)\n" % (FACTORY_MAIN, b64(build.stub)))
    code.append("if hasattr(os,'sync'):os.sync()\n")
    return "".join(code)
