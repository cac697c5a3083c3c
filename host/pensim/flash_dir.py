"""The virtual pen's flash: a folder (`--state DIR`, else a temporary one) that the interpreter
sees as the pen's filesystem root, with the board's serial number beside it in `.serial`."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

SERIAL_FILE = ".serial"


def firmware_source_dir() -> Path | None:
    """The firmware folder (main.py, pen/, boards/): shipped with penctl as `penctl.firmware`."""
    from penctl.firmware_files import firmware_dir

    return firmware_dir()


def check_state_dir(path: Path) -> None:
    """Refuse a --state path that cannot be the pen's flash (before anything is created)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--state {path}: exists and is not a folder")
    existing = path
    while not existing.exists():   # the folder is created with its missing parents
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--state {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--state {path}: no permission to write in {existing}")


def install_factory_image(flash_dir: Path, source: Path | None = None) -> list[str]:
    """Copy the firmware sources (main.py, pen/*.py, boards/*.py) into a pen's flash folder."""
    src = source or firmware_source_dir()
    if src is None or not (src / "main.py").is_file():
        return []
    copied = []
    files = [src / "main.py"] + sorted((src / "pen").glob("*.py")) + sorted((src / "boards").glob("*.py"))
    for f in files:
        rel = f.relative_to(src)
        dest = flash_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        copied.append(str(rel))
    return copied


def pen_serial(flash_dir: Path) -> str:
    """The board serial of a flash folder: created once, stable across restarts."""
    f = flash_dir / SERIAL_FILE
    try:
        s = f.read_text().strip()
        if s:
            return s
    except OSError:
        pass
    s = secrets.token_hex(8).upper()  # like machine.unique_id() on an RP2040
    f.write_text(s + "\n")
    return s
