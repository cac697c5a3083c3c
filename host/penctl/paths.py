"""Input files and output paths, checked before the pen is touched (docs/design.md §4).

- `check_output_path`: a directory, a missing parent folder, no write permission, the wrong extension or
  something that is not a file (a FIFO would block the write) is a UsageError (exit 2, nothing sent).
  The check opens the file for appending the way the write will (and removes it again if it did not
  exist), so it sees what the operating system will say: permissions, read-only mounts, ACLs.
- `read_input_file`: only regular files up to INPUT_MAX_BYTES, refused from their size before a byte
  is read (`/dev/zero` never ends), and read with a bound in case the file grows meanwhile.
- `write_with_fallback`: a recording that cannot be written where asked after a session (a full disk)
  goes to a fallback file in the system temp folder (then the home folder); the caller names it.
"""

import errno
import os
import stat
import tempfile
import time

from penctl.errors import UsageError
from penctl.tracing import log

#: input files (profiles, keys) larger than this are refused unread
INPUT_MAX_BYTES = 1024 * 1024


def _file_error(text):
    return UsageError(text + "; nothing was sent to the pen", code="FILE")


def check_output_path(path, option, suffix=None):
    """`path` as a string if a file can be written there, else UsageError (code FILE)."""
    text = os.fspath(path)
    if not text:
        raise _file_error("%s: the file name is empty" % option)
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        raise _file_error("%s %s: is a directory, give a file name" % (option, text))
    if suffix and not text.lower().endswith(suffix):
        raise _file_error("%s %s: the file name must end in %s" % (option, text, suffix))
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise _file_error("%s %s: the folder %s does not exist" % (option, text, parent))
    existed = os.path.lexists(text)
    if existed:
        try:
            mode = os.stat(text).st_mode
        except OSError as exc:            # e.g. a dangling symlink
            raise _file_error("%s %s: %s" % (option, text, exc.strerror)) from None
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise _file_error("%s %s: not a regular file" % (option, text))
    try:
        fd = os.open(text, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise _file_error("%s %s: cannot write it (%s)" % (option, text, exc.strerror or exc)) from None
    os.close(fd)
    if not existed:
        os.unlink(text)
    return text


def read_input_file(path, option, max_bytes=INPUT_MAX_BYTES):
    """The bytes of an input file: a regular file of at most max_bytes, else UsageError (code FILE)."""
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise _file_error("%s: no such file (%s)" % (text, option)) from None
    except OSError as exc:
        raise _file_error("%s %s: %s" % (option, text, exc.strerror or exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise _file_error("%s %s: is a directory" % (option, text))
    if not stat.S_ISREG(st.st_mode):
        raise _file_error("%s %s: not a regular file" % (option, text))
    if st.st_size > max_bytes:
        raise _file_error("%s %s: %d bytes, more than the %d a file for the pen may have"
                          % (option, text, st.st_size, max_bytes))
    try:
        with open(text, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _file_error("%s %s: %s" % (option, text, exc.strerror or exc)) from None
    if len(data) > max_bytes:
        raise _file_error("%s %s: grew past %d bytes while being read" % (option, text, max_bytes))
    return data


def _fallback_candidates(kind, suffix):
    name = "penctl-%s-%s-%d%s" % (kind, time.strftime("%Y%m%d-%H%M%S"), os.getpid(), suffix)
    folders = [tempfile.gettempdir(), os.path.expanduser("~")]
    return [os.path.join(folder, name) for folder in dict.fromkeys(folders)]


def write_with_fallback(write, path, kind, suffix):
    """`write(path)`; if that raises OSError, `write(fallback)` in the temp (then home) folder.

    Returns (path written or None if every attempt failed, the first OSError or None)."""
    try:
        write(path)
        return path, None
    except OSError as exc:
        first = exc
        log.info("writing %s failed (%s): trying a fallback file", path, exc.strerror or exc)
    return write_fallback(write, kind, suffix), first


def write_fallback(write, kind, suffix):
    """`write(candidate)` for a new file in the temp folder, then the home folder; the path written,
    or None if every attempt failed."""
    for candidate in _fallback_candidates(kind, suffix):
        try:
            write(candidate)
            return candidate
        except OSError as exc:
            log.info("fallback %s failed too (%s)", candidate, exc.strerror or exc)
            try:
                os.unlink(candidate)
            except OSError:
                pass
    return None


def describe_os_error(exc):
    """'No space left on device' style text for an OSError."""
    if exc.errno is not None and exc.strerror:
        return exc.strerror
    if exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno in errno.errorcode else str(exc)
    return str(exc) or type(exc).__name__
