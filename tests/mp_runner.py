# Runs firmware test modules (tests/fw/test_*.py) on the MicroPython unix port.
# Usage: micropython tests/mp_runner.py MODULE [MODULE...]
# Prints one line per test: "RESULT <module>::<test> PASS|FAIL|SKIP <detail>".
import sys

sys.path.insert(0, "tests/fw")
sys.path.insert(0, "firmware")

import fwtest  # noqa: E402


def run_module(name):
    module = __import__(name)
    names = sorted([n for n in dir(module) if n.startswith("test_")])
    for test_name in names:
        func = getattr(module, test_name)
        try:
            func()
        except fwtest.SkipTest as exc:
            print("RESULT %s::%s SKIP %s" % (name, test_name, exc))
        except BaseException as exc:  # noqa: B036 - report every failure, then go on
            print("RESULT-TRACE %s::%s" % (name, test_name))
            sys.print_exception(exc)
            print("RESULT %s::%s FAIL %s: %s" % (name, test_name, type(exc).__name__, exc))
        else:
            print("RESULT %s::%s PASS" % (name, test_name))


for module_name in sys.argv[1:]:
    run_module(module_name)
