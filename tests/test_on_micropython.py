"""Runs every firmware test of tests/fw/ again on the real MicroPython unix port.

Each test function becomes one pytest item `test_micropython[module::test]`, so the
output shows the same tests passing on both interpreters.
"""
import ast
import os
import subprocess
import sys
from functools import lru_cache

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FW_TESTS = os.path.join(ROOT, "tests", "fw")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
HEAP = "1024K"   # the tests build several pens; the 192 KB budget is measured by `make bench`


def _module_env(module):
    """A test module's MP_ENV (the environment its interpreter needs), if it has one. Its
    module-level constants are evaluated in order (e.g. MP_ENV = {"X": str(PERIOD)})."""
    with open(os.path.join(FW_TESTS, module + ".py")) as handle:
        tree = ast.parse(handle.read())
    scope = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        try:
            value = eval(compile(ast.Expression(body=node.value), module, "eval"), {"__builtins__": {"str": str}},
                         scope)
        except Exception:
            continue                    # not a constant expression
        scope[node.targets[0].id] = value
    return scope.get("MP_ENV", {})


def _collect():
    items = []
    for name in sorted(os.listdir(FW_TESTS)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        with open(os.path.join(FW_TESTS, name)) as handle:
            tree = ast.parse(handle.read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                items.append((name[:-3], node.name))
    return items


@lru_cache(maxsize=None)
def _run_module(module, tmp):
    env = dict(os.environ, PEN_TEST_TMP=tmp, **_module_env(module))
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=" + HEAP, "tests/mp_runner.py", module],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            key, _, rest = line[7:].partition(" ")
            results[key] = rest
    return results, proc.stdout + proc.stderr


@pytest.mark.parametrize("module,test", _collect(), ids=lambda value: value)
def test_micropython(module, test, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp() / "mpy")
    os.makedirs(tmp, exist_ok=True)
    results, output = _run_module(module, tmp)
    outcome = results.get(module + "::" + test)
    if outcome is None:
        pytest.fail("test did not report on MicroPython; interpreter output:\n" + output[-3000:])
    if outcome.startswith("SKIP"):
        pytest.skip(outcome[5:])
    if not outcome.startswith("PASS"):
        trace = output[output.find("RESULT-TRACE %s::%s" % (module, test)):][:3000]
        pytest.fail("on MicroPython: " + outcome + "\n" + trace)
