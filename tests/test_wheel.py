"""`pip install .` gives a working penctl (issue 10 item 5, docs/design.md §1.1, §8): the wheel is built
from a copy of the sources, installed into a fresh venv with the pinned versions of constraints.txt, and
used from there only: --version, python -m penctl, the messages for the missing extras, then with [sim]:
`penctl sim --blank`, `penctl flash` (the firmware is package data, the default --source), `penctl info`.
Needs the package index (PyPI) for the build backend and the dependencies.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "host", "firmware")


def _run(cmd, env, timeout=300, check=True):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_wheel_in_a_fresh_venv(tmp_path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy", "*.egg-info"))
        else:
            shutil.copy(path, src / name)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PENCTL", "PEN_SIM"))}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])    # no other micropython, no .venv
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", src], env)
    wheel, = (tmp_path / "dist").glob("penctl-%s-*.whl" % version)
    _run([sys.executable, "-m", "venv", venv], env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt"]
    _run(pip + [wheel], env)
    penctl = venv / "bin" / "penctl"

    where = _run([venv / "bin" / "python", "-c", "import penctl, penctl.firmware_files as f; "
                  "print(penctl.__file__); print(f.firmware_dir())"], env).stdout.split()
    assert all(str(venv) in line for line in where), where          # the installed copy, not the checkout
    out = _run([penctl, "--version"], env).stdout.strip()
    assert out == "penctl %s (firmware 1.0.0, protocol 2)" % version
    assert _run([venv / "bin" / "python", "-m", "penctl", "--version"], env).stdout.strip() == out

    # Without the extras: a clear message naming the extra, exit 2, before any port is opened.
    sim = _run([penctl, "sim", "--blank"], env, check=False)
    assert sim.returncode == 2 and "pip install 'penctl[sim]'" in sim.stderr, sim.stderr
    plot = _run([penctl, "--port", "/dev/no-such-pen", "telemetry", "--seconds", "1", "--plot", tmp_path / "t.png"],
                env, check=False)
    assert plot.returncode == 2 and "pip install 'penctl[plot]'" in plot.stderr, plot.stderr

    _run(pip + ["%s[sim]" % wheel], env)
    proc = subprocess.Popen([penctl, "--json", "sim", "--blank", "--clock", "fast"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        flashed = json.loads(_run([penctl, "--port", port, "--json", "flash"], env).stdout)
        assert flashed["report"]["changed"] is True and flashed["report"]["protocol"] == 2
        info = json.loads(_run([penctl, "--port", port, "--json", "info"], env).stdout)
        assert info["firmware"] == "1.0.0" and info["protocol"] == 2 and info["board"] == "sim"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0
