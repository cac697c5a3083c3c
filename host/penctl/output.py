"""What penctl prints: results on stdout (text, or exactly one JSON object with --json), errors as
`penctl: message` on stderr, progress on stderr only when it is a terminal."""

import json
import sys
import time

from penctl import errors


class Out:
    def __init__(self, json_mode):
        self.json = json_mode
        self.progress_on = _stderr_is_tty()
        self._last_progress = 0.0
        self._progress_shown = False

    def result(self, obj, human=None):
        if self.json:
            payload = {"ok": True}
            payload.update(obj)
            sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
        elif human:
            sys.stdout.write(human.rstrip("\n") + "\n")
        sys.stdout.flush()

    def error(self, exc, extra=None):
        self.end_progress()
        text = str(exc.message)
        if isinstance(exc, errors.PenRefused) and exc.code not in text:
            text = "%s (%s)" % (text, exc.code)       # the stable code names the reason
        for line in text.splitlines() or [""]:
            sys.stderr.write("penctl: %s\n" % line)
        sys.stderr.flush()
        if self.json:
            err = {"code": exc.code, "message": exc.message}
            if getattr(exc, "field", None):
                err["field"] = exc.field
            payload = {"ok": False, "error": err}
            if extra:
                payload.update(extra)
            sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
            sys.stdout.flush()

    def note(self, text):
        """A remark on stderr that is not an error (e.g. `--force` skipped a check)."""
        self.end_progress()
        sys.stderr.write("penctl: %s\n" % text)
        sys.stderr.flush()

    def progress(self, text, force=False):
        if not self.progress_on:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.1:
            return
        self._last_progress = now
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()
        self._progress_shown = True

    def end_progress(self):
        if self._progress_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._progress_shown = False


def _stderr_is_tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def num(value, fmt="%.2f", none="-"):
    if value is None:
        return none
    text = fmt % value
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]                              # no "-0.00" from sensor noise
    return text


def table(headers, rows):
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    lines = ["  ".join(str(h).ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)
