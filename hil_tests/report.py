"""Measurement recording and the human HIL report (Markdown + HTML).

Every test states its numbers through `Recorder.check(...)`: the value, its
units and the limits from the specification. The check both records the
measurement and asserts it, so the report and the verdict cannot disagree.
"""
import html
import json
import math
import os
import time


class Measurement:
    __slots__ = ("test", "name", "value", "unit", "low", "high", "passed", "place")

    def __init__(self, test, name, value, unit, low, high, place=None):
        self.test = test
        self.place = place
        self.name = name
        self.value = value
        self.unit = unit
        self.low = low
        self.high = high
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        if ok and low is not None:
            ok = value >= low
        if ok and high is not None:
            ok = value <= high
        self.passed = bool(ok)

    def limits_text(self):
        if self.low is not None and self.high is not None:
            return "%s … %s" % (_fmt(self.low), _fmt(self.high))
        if self.low is not None:
            return "≥ %s" % _fmt(self.low)
        if self.high is not None:
            return "≤ %s" % _fmt(self.high)
        return "—"

    def as_dict(self):
        return {"test": self.test, "name": self.name, "value": self.value, "unit": self.unit,
                "low": self.low, "high": self.high, "outcome": "pass" if self.passed else "FAIL",
                "place": self.place}


def _fmt(value):
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


class Recorder:
    """What one pytest process measured (with pytest-xdist: one worker, one pen). `part()` is the
    process's share of the report; `write_report()` merges the shares of every process."""

    def __init__(self, out_dir, target):
        self.out_dir = out_dir
        self.target = target
        self.measurements = []
        self.plots = []          # (test, title, relative path)
        self.outcomes = {}       # test nodeid -> {"outcome", "reason", "place", "serial"}
        self.notes = []          # what the lab did (a stale lock reclaimed, a pen that vanished)
        self.current_test = "?"
        self.current_place = None
        self.started = time.time()
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    def check(self, name, value, unit, low=None, high=None):
        """Record a measurement against its limits and assert it."""
        item = Measurement(self.current_test, name, value, unit, low, high, self.current_place)
        self.measurements.append(item)
        assert item.passed, "%s = %s %s outside limits %s" % (name, _fmt(value), unit, item.limits_text())
        return value

    def record_outcome(self, nodeid, outcome, reason="", place=None, serial=None):
        self.outcomes[nodeid] = {"outcome": outcome, "reason": reason or "", "place": place, "serial": serial}

    def plot_path(self, stem):
        if not self.out_dir:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        return os.path.join(self.out_dir, safe + ".png")

    def add_plot(self, title, path):
        if path and os.path.exists(path):
            self.plots.append((self.current_test, title, os.path.basename(path)))

    def part(self):
        """This process's share of the report (plain data: pytest-xdist sends it to the controller)."""
        return {"target": self.target, "started": self.started, "finished": time.time(),
                "measurements": [m.as_dict() for m in self.measurements],
                "plots": [list(p) for p in self.plots], "outcomes": dict(self.outcomes), "notes": list(self.notes)}

    def write(self):
        """The report of this process alone (no pytest-xdist)."""
        if self.out_dir:
            write_report(self.out_dir, [self.part()])


def write_report(out_dir, parts):
    """measurements.json, report.md and report.html in `out_dir`, from the parts of every process."""
    summary = _merge(parts)
    with open(os.path.join(out_dir, "measurements.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write(_markdown(summary))
    with open(os.path.join(out_dir, "report.html"), "w") as handle:
        handle.write(_html(summary))
    return summary


def _merge(parts):
    parts = [p for p in parts if p]
    started = min((p["started"] for p in parts), default=time.time())
    finished = max((p["finished"] for p in parts), default=started)
    tests = {}
    for part in parts:
        tests.update(part["outcomes"])
    counts = {}
    for test in tests.values():
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    return {
        "targets": [p["target"] for p in parts],
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(finished - started, 1),
        "counts": counts,
        "measurements": [m for p in parts for m in p["measurements"]],
        "plots": [pl for p in parts for pl in p["plots"]],
        "tests": dict(sorted(tests.items())),
        "notes": [n for p in parts for n in p["notes"]],
    }


def _limits_text(m):
    return Measurement(m["test"], m["name"], m["value"], m["unit"], m["low"], m["high"]).limits_text()


def _markdown(summary):
    lines = ["# HIL report", ""]
    lines += ["- target: %s" % t for t in summary["targets"]]
    lines += ["- started: %s, duration %s s" % (summary["started"], summary["duration_s"]),
              "- tests: " + ", ".join("%s %d" % kv for kv in sorted(summary["counts"].items())),
              "", "## Tests", "",
              "| test | outcome | place | pen serial | reason |",
              "|---|---|---|---|---|"]
    for nodeid, t in summary["tests"].items():
        lines.append("| %s | %s | %s | %s | %s |" % (
            nodeid, t["outcome"] if t["outcome"] != "failed" else "**failed**", t["place"] or "—",
            t["serial"] or "—", (t["reason"] or "").replace("|", "\\|").replace("\n", " ")))
    lines += ["", "## Measurements", "",
              "| test | measurement | value | unit | limits | outcome | place |",
              "|---|---|---|---|---|---|---|"]
    for m in summary["measurements"]:
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            m["test"], m["name"], _fmt(m["value"]), m["unit"], _limits_text(m),
            "pass" if m["outcome"] == "pass" else "**FAIL**", m["place"] or "—"))
    if summary["notes"]:
        lines += ["", "## Lab", ""] + ["- %s" % note for note in summary["notes"]]
    skipped = [(k, t["reason"]) for k, t in summary["tests"].items() if t["outcome"] == "skipped"]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += ["- %s: %s" % item for item in skipped]
    failed = [k for k, t in summary["tests"].items() if t["outcome"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""] + ["- %s" % k for k in failed]
    if summary["plots"]:
        lines += ["", "## Plots", ""]
        for test, title, path in summary["plots"]:
            lines += ["### %s (%s)" % (title, test), "", "![%s](%s)" % (title, path), ""]
    return "\n".join(lines) + "\n"


def _html(summary):
    esc = html.escape
    rows = []
    for m in summary["measurements"]:
        passed = m["outcome"] == "pass"
        rows.append("<tr class='%s'><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>"
                    % ("pass" if passed else "fail", esc(m["test"]), esc(m["name"]), esc(_fmt(m["value"])),
                       esc(m["unit"]), esc(_limits_text(m)), "pass" if passed else "FAIL", esc(m["place"] or "—")))
    tests = "".join("<tr class='%s'><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>"
                    % (esc(t["outcome"]), esc(k), esc(t["outcome"]), esc(t["place"] or "—"), esc(t["serial"] or "—"),
                       esc(t["reason"] or "")) for k, t in summary["tests"].items())
    notes = "".join("<li>%s</li>" % esc(n) for n in summary["notes"])
    plots = "".join("<figure><img src='%s' width='900'><figcaption>%s (%s)</figcaption></figure>"
                    % (esc(path), esc(title), esc(test)) for test, title, path in summary["plots"])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>HIL report</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 6px}.fail td,.failed td{background:#fcc}.skipped td{background:#eee}"
            "</style></head><body><h1>HIL report</h1><p>%s<br>started %s, %s s<br>%s</p>"
            "<h2>Tests</h2><table><tr><th>test</th><th>outcome</th><th>place</th><th>pen serial</th>"
            "<th>reason</th></tr>%s</table>"
            "<h2>Measurements</h2><table><tr><th>test</th><th>measurement</th><th>value</th>"
            "<th>unit</th><th>limits</th><th>outcome</th><th>place</th></tr>%s</table>"
            "%s<h2>Plots</h2>%s</body></html>"
            % ("<br>".join("target: %s" % esc(t) for t in summary["targets"]), esc(summary["started"]),
               summary["duration_s"], esc(", ".join("%s %d" % kv for kv in sorted(summary["counts"].items()))),
               tests, "".join(rows), "<h2>Lab</h2><ul>%s</ul>" % notes if notes else "", plots))
