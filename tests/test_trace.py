"""tools/trace.py (`make trace`) on small fixture files: it passes a complete table whose tests
all passed, and fails (exit 1, naming the problem, report still written) on each failure mode:
a requirement without a test, a test or hazard naming an unknown requirement, a requirement
missing from or added to docs/design.md, a listed test that failed, errored, was skipped or did
not run, and a firmware test that passed on CPython but not on MicroPython. Unusable inputs
(no JUnit results, malformed table) exit 2. Also: the repository's own table is well-formed.
"""

import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "trace.py")

DESIGN = """\
# design

| id | requirement |
|---|---|
| S1 | Depth range. |
| S2 | Depth follows the set point. |
"""

TABLE = """\
[[hazard]]
id = "H1"
title = "Over-depth"
harm = "Scarring."
cause = "Bad set point."
requirements = ["S1", "S2"]
residual = "Physical custody only."

[[requirement]]
id = "S1"
text = "Depth range."

[[requirement]]
id = "S2"
text = "Depth follows."

[[tests]]
requirements = ["S1"]
ids = ["tests/fw/test_s1_depth.py", "tests/test_props.py::test_s1_*"]

[[tests]]
requirements = ["S2"]
ids = ["hil_tests/test_03.py::test_s2_depth_accuracy"]
"""


def _case(classname, name, outcome="passed"):
    inner = {"passed": "", "failed": '<failure message="boom"/>', "error": '<error message="x"/>',
             "skipped": '<skipped message="no rig"/>'}[outcome]
    return '<testcase classname="%s" name="%s" time="0.01">%s</testcase>' % (classname, name, inner)


def _junit(cases):
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="%d">%s'
            "</testsuite></testsuites>" % (len(cases), "".join(cases)))


def _good_cases(**override):
    cases = {
        "fw_a": ("tests.fw.test_s1_depth", "test_s1_boundaries"),
        "fw_b": ("tests.fw.test_s1_depth", "test_s1_grid"),
        "mp_a": ("tests.test_on_micropython", "test_micropython[test_s1_depth-test_s1_boundaries]"),
        "mp_b": ("tests.test_on_micropython", "test_micropython[test_s1_depth-test_s1_grid]"),
        "prop": ("tests.test_props", "test_s1_property"),
        "prop_other": ("tests.test_props", "test_unrelated"),
        "hil": ("hil_tests.test_03", "test_s2_depth_accuracy[sim]"),
    }
    return [_case(classname, name, override.get(key, "passed")) for key, (classname, name) in cases.items()]


def run(tmp_path, table=TABLE, design=DESIGN, cases=None, junit=True, extra=()):
    (tmp_path / "table.toml").write_text(table)
    (tmp_path / "design.md").write_text(design)
    junit_dir = tmp_path / "junit"
    junit_dir.mkdir(exist_ok=True)
    if junit:
        (junit_dir / "tests.xml").write_text(_junit(cases if cases is not None else _good_cases()))
    out = tmp_path / "traceability.md"
    proc = subprocess.run([sys.executable, TOOL, "--table", str(tmp_path / "table.toml"), "--design",
                           str(tmp_path / "design.md"), "--junit", str(junit_dir), *extra, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    report = out.read_text() if out.exists() else ""
    return proc.returncode, proc.stdout + proc.stderr, report


def test_complete_table_passes_and_writes_the_report(tmp_path):
    code, output, report = run(tmp_path)
    assert code == 0, output
    assert "1 hazards, 2 requirements, 3 test ids (7 cases in 1 JUnit files)" in output
    assert "| 1 | 2 | 3 | 7 | 3 | 0 |" in report                  # the counts row
    assert "| H1 | Over-depth | Scarring. | Bad set point. | S1, S2 | below |" in report
    assert "| S1 | Depth range. | H1 | 2 | all passed |" in report
    assert "| `tests/fw/test_s1_depth.py` | passed 2; passed 2 on MicroPython |" in report
    assert "| `hil_tests/test_03.py::test_s2_depth_accuracy` | passed 1 |" in report
    assert "Physical custody only." in report and "Problems" not in report


def test_requirement_without_test_fails(tmp_path):
    table = TABLE.replace('requirements = ["S2"]\nids = ["hil_tests/test_03.py::test_s2_depth_accuracy"]',
                          'requirements = ["S1"]\nids = ["hil_tests/test_03.py::test_s2_depth_accuracy"]')
    code, output, report = run(tmp_path, table=table)
    assert code == 1 and "requirement S2 has no test" in output
    assert "| S2 | Depth follows. | H1 | 0 | no test |" in report and "Problems (make trace fails)" in report


def test_test_naming_unknown_requirement_fails(tmp_path):
    table = TABLE.replace('requirements = ["S2"]\nids', 'requirements = ["S2", "S99"]\nids')
    code, output, _ = run(tmp_path, table=table)
    assert code == 1
    assert "test hil_tests/test_03.py::test_s2_depth_accuracy names unknown requirement S99" in output


def test_hazard_naming_unknown_requirement_fails(tmp_path):
    table = TABLE.replace('requirements = ["S1", "S2"]', 'requirements = ["S1", "S2", "S7"]')
    code, output, _ = run(tmp_path, table=table)
    assert code == 1 and "hazard H1 names unknown requirement S7" in output


def test_requirement_without_hazard_fails(tmp_path):
    code, output, _ = run(tmp_path, table=TABLE.replace('requirements = ["S1", "S2"]', 'requirements = ["S1"]'))
    assert code == 1 and "requirement S2 traces to no hazard" in output


def test_table_and_design_must_list_the_same_requirements(tmp_path):
    code, output, _ = run(tmp_path, design=DESIGN + "| S3 | Frequency. |\n")
    assert code == 1 and "requirement S3 of docs/design.md §2.1 is not in the table" in output
    code, output, _ = run(tmp_path, design=DESIGN.replace("| S2 | Depth follows the set point. |\n", ""))
    assert code == 1 and "requirement S2 is not in docs/design.md §2.1" in output


@pytest.mark.parametrize("outcome", ["failed", "error", "skipped"])
def test_listed_test_that_did_not_pass_fails(tmp_path, outcome):
    code, output, report = run(tmp_path, cases=_good_cases(prop=outcome))
    assert code == 1
    assert "test tests/test_props.py::test_s1_* did not pass in the last run: %s 1 of 1" % outcome.upper() in output
    assert "1 of 2 ids did not pass" in report


def test_unrelated_failure_does_not_count(tmp_path):
    code, output, _ = run(tmp_path, cases=_good_cases(prop_other="failed"))
    assert code == 0, output


def test_listed_test_that_did_not_run_fails(tmp_path):
    cases = [c for c in _good_cases() if "test_03" not in c]
    code, output, _ = run(tmp_path, cases=cases)
    assert code == 1 and "hil_tests/test_03.py::test_s2_depth_accuracy did not pass in the last run: NOT RUN" in output


def test_firmware_test_must_pass_on_both_interpreters(tmp_path):
    code, output, _ = run(tmp_path, cases=_good_cases(mp_b="failed"))
    assert code == 1 and "passed 2; FAILED 1 of 2 on MicroPython" in output
    cases = [c for c in _good_cases() if "test_on_micropython" not in c]
    code, output, _ = run(tmp_path, cases=cases)
    assert code == 1 and "passed 2; NOT RUN on MicroPython" in output


def test_no_junit_results_is_an_input_error(tmp_path):
    code, output, report = run(tmp_path, junit=False)
    assert code == 2 and "no JUnit results" in output and report == ""


def test_malformed_table_is_an_input_error(tmp_path):
    code, output, _ = run(tmp_path, table=TABLE + "\n[[tests]]\nrequirements = []\n")
    assert code == 2 and "'requirements' must be a list of strings" in output
    code, output, _ = run(tmp_path, table="[[hazard]\n")
    assert code == 2 and "not valid TOML" in output
    code, output, _ = run(tmp_path, table=TABLE.replace('ids = ["tests/fw/test_s1_depth.py"', 'ids = ["tests/fw/x"'))
    assert code == 2 and "give a .py path" in output


def test_junit_files_are_read_from_several_paths(tmp_path):
    hil = tmp_path / "hil.xml"
    hil.write_text(_junit([c for c in _good_cases() if "test_03" in c]))
    cases = [c for c in _good_cases() if "test_03" not in c]
    code, output, _ = run(tmp_path, cases=cases, extra=("--junit", str(tmp_path / "junit"), str(hil)))
    assert code == 0, output


def test_repository_table_is_well_formed():
    with open(os.path.join(ROOT, "docs", "traceability.toml"), "rb") as handle:
        table = tomllib.load(handle)
    import importlib.util
    spec = importlib.util.spec_from_file_location("trace_tool", TOOL)   # not the stdlib's `trace`
    trace_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_tool)
    design = trace_tool.design_requirements(os.path.join(ROOT, "docs", "design.md"))
    assert design == ["S%d" % n for n in range(1, 21)]
    loaded = trace_tool.load_table(os.path.join(ROOT, "docs", "traceability.toml"))
    errors, model = trace_tool.trace(loaded, design, [])
    # with no results every test is "not run", but the structure itself must be complete
    structural = [e for e in errors if "did not pass" not in e]
    assert structural == []
    assert len(table["hazard"]) >= 10
    titles = " ".join(h["title"].lower() for h in table["hazard"])
    for needed in ("over-depth", "depth set is not depth delivered", "cartridge reuse", "sterilisation skipped",
                   "motor stall or runaway", "overheating", "software hang", "treatment too frequent",
                   "unauthorised depth increase", "lockout bypass through the repl"):
        assert needed in titles, needed
