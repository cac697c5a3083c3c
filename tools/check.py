"""Static checks (`make check`): run as `.venv/bin/python tools/check.py` from the repo root.

1. pyright on the firmware that runs on the RP2040 (firmware/pen, firmware/boards/pico_pen.py,
   firmware/main.py), type-checked against the MicroPython rp2 stubs in .venv/rp2-stubs through
   firmware/pyrightconfig.json. A canary file with known mistakes is checked in the same run, so a
   config that silently fell back to CPython's typeshed fails here instead of passing everything.
   firmware/boards/sim.py runs on the unix port only and is not checked against rp2 stubs.
2. mpy-cross -march=armv6m on every .py under firmware/ (output to a temp dir).
3. ruff check on host/, tests/, hil_tests/, tools/ (those that exist).

One line per step; details only on failure. Exit status 1 if any step fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
VENV_BIN = ROOT / ".venv" / "bin"
STUBS = ROOT / ".venv" / "rp2-stubs"
# Empty site-packages named as the "venv" in firmware/pyrightconfig.json: keeps the host's
# CPython stdlib and packages out of pyright's search paths for the firmware.
NO_ENV_SITE = ROOT / ".venv" / "rp2-noenv" / "lib" / "python3.11" / "site-packages"
PYRIGHT_CONFIG = FIRMWARE / "pyrightconfig.json"
RUFF_DIRS = ("host", "tests", "hil_tests", "tools", "lab")

# Diagnostics tolerated as warnings in firmware/pen (see firmware/pyrightconfig.json): the
# `try: from micropython import const / except ImportError: def const(value)` fallback, whose
# signature cannot match the stub's positional-only one in MicroPython syntax.
TOLERATED = (
    ("reportAssignmentType", re.compile(r'^Type "\(expr: Const_T@const, /\) -> Const_T@const" is not assignable')),
)

# Lines marked "expect-error" must be flagged; every other line must be clean.
CANARY = """\
# tools/check.py stub canary: proves pyright reads the MicroPython rp2 stubs.
import os
import time

import machine
import subprocess  # expect-error: CPython-only module, absent from the MicroPython stdlib stubs

machine.PWM(machine.Pin(2), freq="20kHz")  # expect-error: str for int (rp2 machine stub)
time.ticks_diff(time.ticks_us(), 0)  # MicroPython-only time API: must resolve
os.ilistdir("/")  # MicroPython-only os API (MicroPython stdlib stubs): must resolve
"""


def tool(name: str) -> str:
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def result(step: str, ok: bool, text: str) -> bool:
    print(f"{step:<10} {'OK  ' if ok else 'FAIL'} {text}", flush=True)
    return ok


def firmware_targets() -> list[Path]:
    files = sorted((FIRMWARE / "pen").rglob("*.py")) if (FIRMWARE / "pen").is_dir() else []
    for extra in (FIRMWARE / "boards" / "pico_pen.py", FIRMWARE / "boards" / "ds28e07.py",
                  FIRMWARE / "main.py", FIRMWARE / "boot_stub.py"):
        if extra.exists():
            files.append(extra)
    return [f for f in files if "__pycache__" not in f.parts]


def is_tolerated(diag: dict) -> bool:
    rule = diag.get("rule", "")
    message = diag.get("message", "")
    return any(rule == r and pattern.search(message) for r, pattern in TOLERATED)


def fmt(diag: dict) -> str:
    start = diag.get("range", {}).get("start", {})
    line = start.get("line", -1) + 1
    col = start.get("character", -1) + 1
    first = diag.get("message", "").splitlines()[0] if diag.get("message") else ""
    rule = f" [{diag['rule']}]" if diag.get("rule") else ""
    return f"  {rel(diag.get('file', '?'))}:{line}:{col}: {diag.get('severity')}: {first}{rule}"


def step_pyright() -> bool:
    name = "pyright"
    if not (STUBS / "machine.pyi").exists() or not (STUBS / "stdlib" / "builtins.pyi").exists():
        return result(name, False, f"rp2 stubs missing in {rel(STUBS)} (run `make setup`)")
    NO_ENV_SITE.mkdir(parents=True, exist_ok=True)
    targets = firmware_targets()
    if not targets:
        return result(name, False, "no firmware files found")
    with tempfile.TemporaryDirectory(prefix="pen-canary-") as tmp:
        canary = Path(tmp) / "stub_canary.py"
        canary.write_text(CANARY)
        cmd = [tool("pyright"), "-p", str(PYRIGHT_CONFIG), "--outputjson", *map(str, targets), str(canary)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return result(name, False, f"could not run pyright: {exc}")
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return result(name, False, f"pyright gave no JSON report (exit {proc.returncode})")
        canary_path = canary.resolve()
        expected = {i + 1 for i, line in enumerate(CANARY.splitlines()) if "expect-error" in line}
        canary_hits: set[int] = set()
        canary_bad: list[dict] = []
        problems: list[dict] = []
        tolerated = 0
        for diag in report.get("generalDiagnostics", []):
            severity = diag.get("severity")
            if severity not in ("error", "warning"):
                continue
            if Path(diag.get("file", "")).resolve() == canary_path:
                line = diag.get("range", {}).get("start", {}).get("line", -1) + 1
                if severity == "error" and line in expected:
                    canary_hits.add(line)
                else:
                    canary_bad.append(diag)
            elif severity == "warning" and is_tolerated(diag):
                tolerated += 1
            else:
                problems.append(diag)
    summary = report.get("summary", {})
    errors = sum(1 for d in problems if d.get("severity") == "error")
    warnings = len(problems) - errors
    missed = sorted(expected - canary_hits)
    for diag in problems:
        print(fmt(diag))
    for diag in canary_bad:
        print("  stub canary (should be clean):" + fmt(diag)[1:])
    if missed:
        print(f"  stub canary lines {missed} were not flagged: pyright is not using the rp2 stubs")
    ok = not problems and not canary_bad and not missed
    text = (f"{errors} errors, {warnings} warnings in {len(targets)} files against rp2 stubs"
            f" ({tolerated} tolerated const() fallbacks; stub canary {len(canary_hits)}/{len(expected)} flagged;"
            f" pyright {report.get('version', '?')}, {summary.get('timeInSec', '?')} s)")
    return result(name, ok, text)


def step_mpy_cross() -> bool:
    name = "mpy-cross"
    sources = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    if not sources:
        return result(name, False, "no .py files under firmware/")
    exe = tool("mpy-cross")
    with tempfile.TemporaryDirectory(prefix="pen-mpy-") as tmp:
        def compile_one(src: Path) -> tuple[Path, int, str]:
            out = Path(tmp) / src.relative_to(FIRMWARE).with_suffix(".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run([exe, "-march=armv6m", "-o", str(out), str(src)],
                                      cwd=FIRMWARE, capture_output=True, text=True, check=False, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return src, -1, str(exc)
            if proc.returncode == 0 and not out.exists():
                return src, -1, "no output written"
            return src, proc.returncode, (proc.stdout + proc.stderr).strip()

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = list(pool.map(compile_one, sources))
        total = sum(f.stat().st_size for f in Path(tmp).rglob("*.mpy"))
    failed = [(src, code, out) for src, code, out in results if code != 0]
    for src, code, out in failed:
        print(f"  {rel(src)}: exit {code}\n    " + out.replace("\n", "\n    "))
    text = (f"{len(sources) - len(failed)}/{len(sources)} firmware files compiled for armv6m"
            f" ({total} bytes of .mpy)")
    return result(name, not failed, text)


def step_ruff() -> bool:
    name = "ruff"
    dirs = [d for d in RUFF_DIRS if (ROOT / d).is_dir()]
    if not dirs:
        return result(name, True, "nothing to lint")
    cmd = [tool("ruff"), "check", "--no-cache", "--output-format=concise", *dirs]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return result(name, False, f"could not run ruff: {exc}")
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        print("  " + out.replace("\n", "\n  "))
        return result(name, False, f"lint errors in {', '.join(d + '/' for d in dirs)}")
    return result(name, True, f"clean: {', '.join(d + '/' for d in dirs)}")


def main() -> int:
    os.chdir(ROOT)
    steps = (step_pyright, step_mpy_cross, step_ruff)
    ok = [step() for step in steps]
    print(f"check: {'passed' if all(ok) else 'FAILED'} ({sum(ok)}/{len(ok)} steps)")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
