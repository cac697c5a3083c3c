import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
FW_TESTS = os.path.join(ROOT, "tests", "fw")
CPYTHON_SHIMS = os.path.join(ROOT, "tests", "cpython")   # micropython.py stand-in
for path in (FIRMWARE, FW_TESTS, CPYTHON_SHIMS):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _pen_tmp(tmp_path, monkeypatch):
    # fwtest.fresh_dir() puts pen flash folders here (shared code with MicroPython).
    monkeypatch.setenv("PEN_TEST_TMP", str(tmp_path))


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    outcome = yield
    exc = outcome.excinfo
    if exc is not None and exc[0].__name__ == "SkipTest" and exc[0].__module__ == "fwtest":
        outcome.force_exception(pytest.skip.Exception(str(exc[1]), _use_item_location=True))
