"""`penctl sim --link PATH` / `--control SOCK` never replace, then delete, a file they did not
create (issue 9 item 7, docs/design.md §5.1): a path that exists in any form is refused with exit
2 before anything is created, and at exit only the pen's own link / socket is removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pensim.supervisor import SimConfigError, VirtualPen

PENCTL = Path(sys.executable).parent / "penctl"
EXIT_USAGE = 2                  # docs/design.md §4: refused before the pen is touched


@pytest.fixture
def short_dir():
    d = tempfile.mkdtemp(prefix="vpen")  # short: AF_UNIX paths are limited to ~100 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def penctl_sim(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(PENCTL), "sim", *args], capture_output=True, timeout=timeout, check=False)


def snapshot(path: Path) -> tuple:
    """What is at `path`, to compare before and after (without following a symlink)."""
    if path.is_symlink():
        return ("symlink", os.readlink(path))
    if path.is_dir():
        return ("dir", sorted((p.name, p.read_bytes()) for p in path.iterdir()))
    if path.is_socket():
        return ("socket", os.lstat(path).st_ino)
    return ("file", path.read_bytes())


def make_file(p: Path) -> None:
    p.write_bytes(b"the user's data\n")


def make_symlink(p: Path) -> None:
    target = p.with_name("target.txt")
    target.write_bytes(b"target data\n")
    p.symlink_to(target)


def make_dangling_symlink(p: Path) -> None:
    p.symlink_to(p.with_name("does-not-exist"))


def make_dir(p: Path) -> None:
    p.mkdir()
    (p / "inside.txt").write_bytes(b"kept\n")


def make_socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.close()   # a stale socket file: nobody listens, still not the pen's to delete


KINDS = {"file": make_file, "symlink": make_symlink, "dangling-symlink": make_dangling_symlink,
         "directory": make_dir, "socket": make_socket}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_link_over_an_existing_path_is_refused(short_dir, kind):
    link = short_dir / "pen0"
    KINDS[kind](link)
    before = snapshot(link)
    state = short_dir / "flash"
    r = penctl_sim("--blank", "--state", str(state), "--link", str(link))
    assert r.returncode == EXIT_USAGE, r.stderr
    err = r.stderr.decode()
    assert str(link) in err and "already exists" in err and "Traceback" not in err
    assert r.stdout == b""                    # no "port:" line: nothing was started
    assert snapshot(link) == before           # untouched
    assert not state.exists()                 # nothing created before the refusal


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_control_over_an_existing_path_is_refused(short_dir, kind):
    sock = short_dir / "rig.sock"
    KINDS[kind](sock)
    before = snapshot(sock)
    link = short_dir / "pen0"
    r = penctl_sim("--blank", "--control", str(sock), "--link", str(link))
    assert r.returncode == EXIT_USAGE, r.stderr
    assert str(sock) in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    assert snapshot(sock) == before
    assert not os.path.lexists(link)          # the link is not made either


def test_link_in_a_missing_folder_is_refused(short_dir):
    link = short_dir / "no-such-folder" / "pen0"
    r = penctl_sim("--blank", "--link", str(link))
    assert r.returncode == EXIT_USAGE
    assert "does not exist" in r.stderr.decode()
    assert not (short_dir / "no-such-folder").exists()


def test_state_that_is_a_file_is_refused(short_dir):
    state = short_dir / "flash"
    make_file(state)
    r = penctl_sim("--blank", "--state", str(state))
    assert r.returncode == EXIT_USAGE
    assert "not a folder" in r.stderr.decode()
    assert state.read_bytes() == b"the user's data\n"


def test_python_api_refuses_too(short_dir):
    link = short_dir / "pen0"
    make_dangling_symlink(link)
    before = snapshot(link)
    with pytest.raises(SimConfigError, match="already exists"):
        VirtualPen(blank=True, link=link).start()
    assert snapshot(link) == before


def test_own_link_and_socket_removed_at_exit(short_dir):
    link, sock = short_dir / "pen0", short_dir / "rig.sock"
    proc = subprocess.Popen([str(PENCTL), "--json", "sim", "--blank", "--link", str(link), "--control", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        assert os.readlink(link) == info["port"] and sock.is_socket()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.lexists(link) and not os.path.lexists(sock)


def replace_with_symlink(p: Path) -> None:
    p.unlink()
    make_symlink(p)


def replace_with_file(p: Path) -> None:
    p.unlink()
    make_file(p)


@pytest.mark.parametrize("replace", [replace_with_symlink, replace_with_file], ids=["symlink", "file"])
def test_link_and_socket_replaced_during_the_run_are_kept(short_dir, replace):
    # Someone else's file at the path by the time the pen stops: not the pen's to delete.
    link, sock = short_dir / "pen0", short_dir / "rig.sock"
    pen = VirtualPen(blank=True, link=link, control=sock, clock="fast").start()
    try:
        assert os.readlink(link) == pen.port
        replace(link)
        replace(sock)
        after_link, after_sock = snapshot(link), snapshot(sock)
    finally:
        pen.stop()
    assert snapshot(link) == after_link and snapshot(sock) == after_sock


def test_link_retargeted_during_the_run_is_kept(short_dir):
    # Same path, a new symlink to another port: the user's now.
    link = short_dir / "pen0"
    with VirtualPen(blank=True, link=link, clock="fast") as pen:
        link.unlink()
        link.symlink_to("/dev/null")
        assert pen.alive
    assert os.readlink(link) == "/dev/null"


def test_missing_interpreter_is_refused(short_dir):
    env = dict(os.environ, PEN_SIM_MICROPYTHON=str(short_dir / "no-micropython"))
    state = short_dir / "flash"
    r = subprocess.run([str(PENCTL), "sim", "--blank", "--state", str(state)], capture_output=True, timeout=30,
                       check=False, env=env)
    assert r.returncode == EXIT_USAGE
    assert "not an executable file" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    assert not state.exists()
