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
    __slots__ = ("test", "name", "value", "unit", "low", "high", "passed")

    def __init__(self, test, name, value, unit, low, high):
        self.test = test
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
                "low": self.low, "high": self.high, "outcome": "pass" if self.passed else "FAIL"}


def _fmt(value):
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


class Recorder:
    def __init__(self, out_dir, target):
        self.out_dir = out_dir
        self.target = target
        self.measurements = []
        self.plots = []          # (test, title, relative path)
        self.outcomes = {}       # test nodeid -> passed/failed/skipped (+ reason)
        self.current_test = "?"
        self.started = time.time()
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    def check(self, name, value, unit, low=None, high=None):
        """Record a measurement against its limits and assert it."""
        item = Measurement(self.current_test, name, value, unit, low, high)
        self.measurements.append(item)
        assert item.passed, "%s = %s %s outside limits %s" % (name, _fmt(value), unit, item.limits_text())
        return value

    def plot_path(self, stem):
        if not self.out_dir:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        return os.path.join(self.out_dir, safe + ".png")

    def add_plot(self, title, path):
        if path and os.path.exists(path):
            self.plots.append((self.current_test, title, os.path.basename(path)))

    def write(self):
        if not self.out_dir:
            return
        counts = {}
        for outcome, _reason in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = {
            "target": self.target,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "counts": counts,
            "measurements": [m.as_dict() for m in self.measurements],
            "tests": {k: {"outcome": v[0], "reason": v[1]} for k, v in self.outcomes.items()},
        }
        with open(os.path.join(self.out_dir, "measurements.json"), "w") as handle:
            json.dump(summary, handle, indent=1)
        with open(os.path.join(self.out_dir, "report.md"), "w") as handle:
            handle.write(self._markdown(summary))
        with open(os.path.join(self.out_dir, "report.html"), "w") as handle:
            handle.write(self._html(summary))

    def _markdown(self, summary):
        lines = ["# HIL report", "",
                 "- target: %s" % self.target,
                 "- started: %s, duration %s s" % (summary["started"], summary["duration_s"]),
                 "- tests: " + ", ".join("%s %d" % kv for kv in sorted(summary["counts"].items())),
                 "", "## Measurements", "",
                 "| test | measurement | value | unit | limits | outcome |",
                 "|---|---|---|---|---|---|"]
        for m in self.measurements:
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                m.test, m.name, _fmt(m.value), m.unit, m.limits_text(), "pass" if m.passed else "**FAIL**"))
        skipped = [(k, v[1]) for k, v in self.outcomes.items() if v[0] == "skipped"]
        if skipped:
            lines += ["", "## Skipped", ""]
            lines += ["- %s: %s" % item for item in skipped]
        failed = [k for k, v in self.outcomes.items() if v[0] == "failed"]
        if failed:
            lines += ["", "## Failed", ""] + ["- %s" % k for k in failed]
        if self.plots:
            lines += ["", "## Plots", ""]
            for test, title, path in self.plots:
                lines += ["### %s (%s)" % (title, test), "", "![%s](%s)" % (title, path), ""]
        return "\n".join(lines) + "\n"

    def _html(self, summary):
        esc = html.escape
        rows = []
        for m in self.measurements:
            rows.append("<tr class='%s'><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>"
                        % ("pass" if m.passed else "fail", esc(m.test), esc(m.name), esc(_fmt(m.value)),
                           esc(m.unit), esc(m.limits_text()), "pass" if m.passed else "FAIL"))
        tests = "".join("<tr class='%s'><td>%s</td><td>%s</td><td>%s</td></tr>"
                        % (esc(v[0]), esc(k), esc(v[0]), esc(v[1] or "")) for k, v in self.outcomes.items())
        plots = "".join("<figure><img src='%s' width='900'><figcaption>%s (%s)</figcaption></figure>"
                        % (esc(path), esc(title), esc(test)) for test, title, path in self.plots)
        return ("<!doctype html><html><head><meta charset='utf-8'><title>HIL report</title><style>"
                "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
                "padding:3px 6px}.fail td,.failed td{background:#fcc}.skipped td{background:#eee}"
                "</style></head><body><h1>HIL report</h1><p>target: %s<br>started %s, %s s<br>%s</p>"
                "<h2>Measurements</h2><table><tr><th>test</th><th>measurement</th><th>value</th>"
                "<th>unit</th><th>limits</th><th>outcome</th></tr>%s</table>"
                "<h2>Tests</h2><table><tr><th>test</th><th>outcome</th><th>reason</th></tr>%s</table>"
                "<h2>Plots</h2>%s</body></html>"
                % (esc(self.target), esc(summary["started"]), summary["duration_s"],
                   esc(", ".join("%s %d" % kv for kv in sorted(summary["counts"].items()))),
                   "".join(rows), tests, plots))
