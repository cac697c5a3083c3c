"""Paths the virtual pen creates for the user: the `--link` symlink and the `--control` socket.

The virtual pen never replaces or deletes a file it did not create (docs/design.md §5.1): a path
that exists in any form (file, folder, symlink, dangling symlink, socket) is refused before
anything else happens, creation is atomic (a path that appears in between is refused too), and at
exit the path is removed only while it is still the one the pen made (same inode, and for the link
the same target).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


# sockaddr_un.sun_path holds 108 bytes on Linux, including the terminating NUL.
UNIX_SOCKET_PATH_MAX = 107


class PathRefused(ValueError):
    """A path the virtual pen will not use; the message says why."""


def check_socket_path(path: Path) -> None:
    """Refuse a socket path that is taken or that a unix socket cannot have."""
    check_new_path(path, "--control")
    if len(os.fsencode(path)) > UNIX_SOCKET_PATH_MAX:
        raise PathRefused(f"--control {path}: longer than the {UNIX_SOCKET_PATH_MAX} bytes a unix "
                          "socket path can have; choose a shorter one")


def check_new_path(path: Path, what: str) -> None:
    """Refuse `path` unless it is free and its folder exists (nothing is created here)."""
    if os.path.lexists(path):
        kind = ("a symlink" if path.is_symlink() else "a folder" if path.is_dir()
                else "a socket" if path.is_socket() else "a file")
        raise PathRefused(f"{what} {path}: already exists ({kind}); the virtual pen does not replace "
                          "files it did not create: choose another path or remove it")
    parent = path.parent
    if not parent.is_dir():
        raise PathRefused(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathRefused(f"{what} {path}: no permission to create files in {parent}")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class OwnedLink:
    """`path` as a symlink to `target`, made by us."""

    def __init__(self, path: Path, target: str):
        self.path = path
        self.target = target
        self._identity: tuple[int, int] | None = None

    def create(self) -> None:
        try:
            os.symlink(self.target, self.path)
        except FileExistsError:
            raise PathRefused(f"--link {self.path}: appeared while the virtual pen started; "
                              "not replaced") from None
        self._identity = _identity(self.path)

    def remove(self) -> None:
        """Remove the link if it is still ours and still points at our port."""
        if self._identity is None:
            return
        try:
            if _identity(self.path) == self._identity and os.readlink(self.path) == self.target:
                os.unlink(self.path)
        except OSError:
            pass
        self._identity = None


class OwnedSocket:
    """A listening unix socket bound at `path` by us."""

    def __init__(self, path: Path):
        self.path = path
        self.sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None

    def bind(self, backlog: int = 16) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))  # fails (EADDRINUSE) if the path exists by now
        except OSError as e:
            sock.close()
            raise PathRefused(f"--control {self.path}: cannot create the socket: {e.strerror or e}") from None
        self._identity = _identity(self.path)
        sock.listen(backlog)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self._identity is not None:
            try:
                if _identity(self.path) == self._identity:
                    os.unlink(self.path)
            except OSError:
                pass
            self._identity = None
