"""make trace: the traceability report (IEC 62304 class B style, docs/design.md §8).

Reads docs/traceability.toml (hazards -> requirements -> tests), the requirement ids of
docs/design.md §2.1 and the JUnit XML of the last `make test` run; writes docs/traceability.md
(hazards, requirements with their tests and last results, residual risks, counts).

Exit status: 0 when every check holds; 1 when one fails (the report is still written, with the
failures marked); 2 when an input is unusable (no table, a malformed table, no JUnit results).
The checks: every requirement of the table is in docs/design.md §2.1 and the other way round;
every requirement traces to a hazard and has at least one test; every hazard and every test
names only known requirements; every listed test ran in the last run and passed (a skip is not
a pass).

Test ids are pytest node ids relative to the repository root, with `*` wildcards:
  tests/test_x.py::test_y      that test (all its parametrisations)
  tests/test_x.py::test_s5_*   every test of the file whose name matches
  tests/fw/test_s10_*.py       every test of every matching file
An id under tests/fw/ names a firmware test, which runs on CPython and again on the MicroPython
unix port (tests/test_on_micropython.py::test_micropython[module-test]): both must have passed.

usage: python tools/trace.py [--table F] [--design F] [--junit PATH ...] [--out F]
(--junit takes files or folders of *.xml; default build/junit and hil_report/junit.xml).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FW_PREFIX = "tests/fw/"
MP_CLASSNAME = "tests.test_on_micropython"
MP_FUNCTION = "test_micropython"
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
_REQ_ROW = re.compile(r"^\|\s*(S\d+)\s*\|")


class InputError(Exception):
    """An input that cannot be used at all (exit 2)."""


# ---- inputs ----


def load_table(path):
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError("%s: no such file" % path) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError("%s: not valid TOML: %s" % (path, exc)) from None
    problems = []
    for section, fields in (("hazard", ("id", "title", "harm", "requirements")),
                            ("requirement", ("id", "text")),
                            ("tests", ("requirements", "ids"))):
        items = data.get(section)
        if not isinstance(items, list) or not items:
            problems.append("no [[%s]] tables" % section)
            continue
        for index, item in enumerate(items, start=1):
            for field in fields:
                if field not in item:
                    problems.append("[[%s]] %d has no '%s'" % (section, index, field))
            for field in ("requirements", "ids"):
                value = item.get(field)
                if field in item and not (isinstance(value, list) and value
                                          and all(isinstance(v, str) and v for v in value)):
                    problems.append("[[%s]] %d: '%s' must be a list of strings" % (section, index, field))
    for section in ("hazard", "requirement"):
        ids = [item.get("id") for item in data.get(section) or []]
        for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append("%s %s is defined twice" % (section, duplicate))
    if problems:
        raise InputError("%s: %s" % (path, "; ".join(problems)))
    return data


def design_requirements(path):
    """Requirement ids of the table in docs/design.md §2.1 (rows starting `| S<n> |`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError("%s: %s" % (path, exc.strerror or exc)) from None
    ids = [m.group(1) for m in map(_REQ_ROW.match, text.splitlines()) if m]
    if not ids:
        raise InputError("%s: no requirement table (rows '| S1 | ... |')" % path)
    return ids


def junit_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(glob.glob(os.path.join(path, "*.xml"))))
        elif os.path.isfile(path):
            files.append(path)
    if not files:
        raise InputError("no JUnit results in %s: run `make test` first" % ", ".join(map(str, paths)))
    return files


def load_results(files):
    """[(classname, name, outcome)] of every testcase; outcome passed|failed|error|skipped."""
    cases = []
    for path in files:
        try:
            tree = ET.parse(path)
        except (ET.ParseError, OSError) as exc:
            raise InputError("%s: not a JUnit XML file: %s" % (path, exc)) from None
        for case in tree.iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    break
            cases.append((case.get("classname", ""), case.get("name", ""), outcome))
    return cases


# ---- matching ids to test cases ----


def _glob_re(pattern):
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$")


def matchers(test_id):
    """[(label, classname regex, name regex)]: one per interpreter the id must have passed on."""
    path, _, name = test_id.partition("::")
    if not path.endswith(".py"):
        raise InputError("test id %r: give a .py path (optionally ::test_name)" % test_id)
    module = path[:-3].replace("/", ".")
    name = name or "*"
    # pytest's JUnit classname is the module (plus any class); the name carries [params]
    found = [("", _glob_re(module), re.compile(_glob_re(name).pattern[:-1] + r"(\[.*\])?$"))]
    if path.startswith(FW_PREFIX):
        fw_module = path[len(FW_PREFIX):-3]
        # test_micropython[<module>-<test>] (pytest joins the two parameters with "-")
        inner = _glob_re(fw_module).pattern[1:-1] + "(-|::)" + _glob_re(name).pattern[1:-1]
        found.append(("MicroPython", _glob_re(MP_CLASSNAME),
                      re.compile("^%s\\[%s\\]$" % (MP_FUNCTION, inner))))
    return found


def result_of(test_id, cases):
    """(ok, text): did every case the id names pass, on every interpreter it runs on?"""
    texts = []
    ok = True
    for label, class_re, name_re in matchers(test_id):
        hits = [outcome for classname, name, outcome in cases
                if (class_re.match(classname) or class_re.match(classname.rsplit(".", 1)[0]))
                and name_re.match(name)]
        where = " on %s" % label if label else ""
        if not hits:
            ok = False
            texts.append("NOT RUN%s" % where)
            continue
        bad = [o for o in hits if o != "passed"]
        if bad:
            ok = False
            texts.append("%s %d of %d%s" % ("/".join(sorted(set(bad))).upper(), len(bad), len(hits), where))
        else:
            texts.append("passed %d%s" % (len(hits), where))
    return ok, "; ".join(texts)


# ---- the checks and the report ----


def trace(table, design_ids, cases):
    """(errors, model for the report)."""
    errors = []
    requirements = {r["id"]: r for r in table["requirement"]}
    for rid in design_ids:
        if rid not in requirements:
            errors.append("requirement %s of docs/design.md §2.1 is not in the table" % rid)
    for rid in requirements:
        if rid not in design_ids:
            errors.append("requirement %s is not in docs/design.md §2.1" % rid)
    hazards_of = {rid: [] for rid in requirements}
    for hazard in table["hazard"]:
        for rid in hazard["requirements"]:
            if rid not in requirements:
                errors.append("hazard %s names unknown requirement %s" % (hazard["id"], rid))
            else:
                hazards_of[rid].append(hazard["id"])
    tests_of = {rid: [] for rid in requirements}
    results = {}
    for group in table["tests"]:
        for test_id in group["ids"]:
            for rid in group["requirements"]:
                if rid not in requirements:
                    errors.append("test %s names unknown requirement %s" % (test_id, rid))
                elif test_id not in tests_of[rid]:
                    tests_of[rid].append(test_id)
            if test_id not in results:
                results[test_id] = result_of(test_id, cases)
                if not results[test_id][0]:
                    errors.append("test %s did not pass in the last run: %s" % (test_id, results[test_id][1]))
    for rid in requirements:
        if not tests_of[rid]:
            errors.append("requirement %s has no test" % rid)
        if not hazards_of[rid]:
            errors.append("requirement %s traces to no hazard" % rid)
    return errors, {"requirements": requirements, "hazards_of": hazards_of, "tests_of": tests_of,
                    "results": results}


def _shown(path):
    """A path relative to the repository when it is inside it (the report is committed)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def render(table, model, errors, junit, cases):
    requirements = model["requirements"]
    results = model["results"]
    passed_ids = sum(1 for ok, _ in results.values() if ok)
    lines = [
        "# Traceability: hazards, requirements, tests",
        "",
        "Generated by `make trace` (tools/trace.py) from docs/traceability.toml, docs/design.md §2.1",
        "and the JUnit results of the last `make test` run (%s). Do not edit: edit the table."
        % ", ".join(_shown(f) for f in junit),
        "",
        "## Counts",
        "",
        "| hazards | requirements | test ids | test cases run | test ids passed | problems |",
        "|---|---|---|---|---|---|",
        "| %d | %d | %d | %d | %d | %d |" % (len(table["hazard"]), len(requirements), len(results), len(cases),
                                         passed_ids, len(errors)),
        "",
    ]
    if errors:
        lines += ["## Problems (make trace fails)", ""] + ["- %s" % _cell(e) for e in errors] + [""]
    lines += ["## Hazards", "", "| id | hazard | harm | causes | requirements | residual risk |",
              "|---|---|---|---|---|---|"]
    for hazard in table["hazard"]:
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            hazard["id"], _cell(hazard["title"]), _cell(hazard["harm"]), _cell(hazard.get("cause", "")) or "-",
            ", ".join(hazard["requirements"]), "below" if hazard.get("residual") else "-"))
    lines += ["", "## Requirements", "", "| id | requirement | hazards | tests | last result |",
              "|---|---|---|---|---|"]
    for rid, req in requirements.items():
        tests = model["tests_of"][rid]
        ok = sum(1 for t in tests if results[t][0])
        verdict = "no test" if not tests else ("all passed" if ok == len(tests) else "%d of %d ids did not pass"
                                                                                    % (len(tests) - ok, len(tests)))
        lines.append("| %s | %s | %s | %d | %s |" % (rid, _cell(req["text"]), ", ".join(model["hazards_of"][rid])
                                                      or "-", len(tests), verdict))
    lines += ["", "## Tests by requirement", ""]
    for rid in requirements:
        lines += ["### %s" % rid, "", "| test id | last result |", "|---|---|"]
        for test_id in model["tests_of"][rid]:
            lines.append("| `%s` | %s |" % (test_id, _cell(results[test_id][1])))
        if not model["tests_of"][rid]:
            lines.append("| (none) | NO TEST |")
        lines.append("")
    risks = [h for h in table["hazard"] if h.get("residual")]
    if risks:
        lines += ["## Residual risks", ""]
        for hazard in risks:
            lines += ["### %s %s" % (hazard["id"], hazard["title"]), "", hazard["residual"].strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=str(ROOT / "docs" / "traceability.toml"))
    parser.add_argument("--design", default=str(ROOT / "docs" / "design.md"))
    parser.add_argument("--junit", nargs="+",
                        default=[str(ROOT / "build" / "junit"), str(ROOT / "hil_report" / "junit.xml")],
                        help="JUnit XML files or folders of them (default: build/junit and the HIL suite's "
                             "hil_report/junit.xml)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "traceability.md"))
    args = parser.parse_args(argv)
    try:
        table = load_table(args.table)
        design_ids = design_requirements(args.design)
        files = junit_files(args.junit)
        cases = load_results(files)
        for group in table["tests"]:
            for test_id in group["ids"]:
                matchers(test_id)          # every id well-formed before anything is judged
    except InputError as exc:
        print("trace: %s" % exc, file=sys.stderr)
        return EXIT_INPUT
    errors, model = trace(table, design_ids, cases)
    text = render(table, model, errors, files, cases)
    Path(args.out).write_text(text, encoding="utf-8")
    print("trace: %d hazards, %d requirements, %d test ids (%d cases in %d JUnit files) -> %s"
          % (len(table["hazard"]), len(model["requirements"]), len(model["results"]), len(cases), len(files),
             args.out))
    for error in errors:
        print("trace: FAIL %s" % error, file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
