"""Where the pen firmware's sources are: shipped with penctl as the package `penctl.firmware`.

In a checkout, pyproject maps `penctl.firmware` to the repository's firmware/ folder; in an
installed wheel it is package data. The same files are flashed to a pen (`penctl flash`,
default `--source`) and imported by the host (`penctl.firmware.pen.wire`, `.limits`,
`.profiles`: the frame codec and the safety limits exist once, docs/design.md §3).
"""

from pathlib import Path


def firmware_dir() -> Path:
    """The firmware folder (main.py, boot_stub.py, pen/, boards/)."""
    import penctl.firmware as package  # a namespace package: no __init__.py on the pen

    for entry in package.__path__:
        path = Path(entry)
        if (path / "main.py").is_file():
            return path.resolve()
    raise FileNotFoundError("the penctl installation has no firmware (penctl.firmware without main.py)")
