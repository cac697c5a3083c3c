# REPL shim of the virtual pen.  This file is a *MicroPython* script: the
# virtual-pen supervisor (pensim.interpreter) runs it on the unix port
#
#     micropython -X heapsize=256K repl_shim.py MODE STATUS_FD ROOT
#
# whenever the pen is not running its firmware (no main.py, after Ctrl-C, after
# the firmware exited, after a raw-mode soft reset).  It reproduces what a real
# RP2040 board prints on its USB-CDC console, byte for byte where mpremote
# depends on it (shared/runtime/pyexec.c + shared/readline/readline.c):
#
#   friendly REPL   banner, ">>> " / "... ", echo, backspace, auto-indent,
#                   Ctrl-A raw REPL, Ctrl-B banner, Ctrl-C cancel line,
#                   Ctrl-D soft reboot, Ctrl-E paste mode
#   raw REPL        "raw REPL; CTRL-B to exit\r\n>", code until Ctrl-D, "OK",
#                   output, "\x04", exception, "\x04", ">"; Ctrl-D on an empty
#                   buffer = soft reboot; Ctrl-B back to friendly
#   raw paste       "\x05A\x01" -> "R\x01" + window (2 bytes LE) + "\x01",
#                   one "\x01" per window consumed, "\x04" from the host is
#                   acknowledged with "\x04", then executed like raw REPL code
#
# MODE is "friendly" or "raw" (the mode to start in).  A soft reboot prints
# "MPY: soft reboot\r\n" and exits with EXIT_REBOOT_FRIENDLY or EXIT_REBOOT_RAW;
# the supervisor then starts main.py (friendly, if present) or a new shim.
# machine.reset() (what `mpremote reset` sends) reports STATUS_RESET and exits
# with EXIT_HARD_RESET: the supervisor restarts the pen as from power-on.
# STATUS_FD (an inherited pipe, "-" for none) gets one byte per state change
# (shim_protocol.py, beside this file, defines the codes for both sides).  The
# supervisor turns a Ctrl-C that arrives while the shim is busy into SIGINT
# (-> KeyboardInterrupt), like a board's keyboard interrupt.
# ROOT is the pen's flash folder; it is mounted at "/" so that code run here
# sees exactly the files a board would.
import builtins
import io
import os
import sys

import machine
import micropython

# From this file's folder (sys.path[0]), before ROOT is mounted at "/"; then hidden from the
# code run at the REPL, which sees only the pen's flash.
import shim_protocol as _sp

del sys.modules["shim_protocol"]

_SELF = __file__
_out = sys.stdout.buffer
_in = sys.stdin.buffer
_W = _out.write
_print = builtins.print

BANNER = (
    b"MicroPython v1.29.0 on 2026-08-29; Raspberry Pi Pico (virtual pen) with RP2040\r\n"
    b'Type "help()" for more information.\r\n'
)
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
# MICROPY_REPL_STDIN_BUFFER_MAX (256) / 2, as on the rp2 port.
PASTE_WINDOW = 128



class _EOF(Exception):
    pass


class _HardReset(BaseException):
    # machine.reset() at the REPL: unwinds to main(), which exits with EXIT_HARD_RESET.
    pass


_status_f = None
_status_last = None
_kbd_enabled = True


def _status(b):
    global _status_last
    if _status_f is not None and b != _status_last:
        _status_last = b
        try:
            _status_f.write(b)
        except OSError:
            pass


def _getc():
    try:
        b = _in.read(1)
    except KeyboardInterrupt:
        # SIGINT that raced with the end of a command: it stands for the
        # Ctrl-C byte the host sent.
        return 3
    if not b:
        raise _EOF()
    return b[0]


def _cooked(s):
    # A board's sys.stdout (text) turns "\n" into "\r\n".
    if isinstance(s, str):
        s = s.encode()
    return s.replace(b"\n", b"\r\n")


def _cprint(*args, **kw):
    f = kw.get("file")
    if f is not None and f is not sys.stdout and f is not sys.stderr:
        return _print(*args, **kw)
    s = io.StringIO()
    kw["file"] = s
    _print(*args, **kw)
    _W(_cooked(s.getvalue()))


def _repl_print(o):
    # what the compiler calls for an expression statement in "single" mode
    if o is not None:
        _W(_cooked(repr(o) + "\n"))
        builtins._ = o


def _print_exc(e):
    s = io.StringIO()
    sys.print_exception(e, s)
    keep = []
    for line in s.getvalue().split("\n"):
        if line.startswith('  File "') and _SELF in line:
            continue
        keep.append(line)
    _W(_cooked("\n".join(keep)))


class _MicropythonProxy:
    # `micropython` as seen by code run in the REPL: kbd_intr is reported to
    # the supervisor instead of changing the unix port's SIGINT handler
    # (which would make a later SIGINT kill the interpreter).
    def __getattr__(self, name):
        return getattr(micropython, name)

    def kbd_intr(self, c):
        global _kbd_enabled
        _kbd_enabled = c == 3
        _status(_sp.STATUS_BUSY if _kbd_enabled else _sp.STATUS_BUSY_NOINTR)


class _MachineProxy:
    # `machine` as seen by code run in the REPL: reset() restarts the pen as a board's does
    # (the unix port has no machine.reset).  The supervisor is told first, so code that catches
    # _HardReset cannot keep the pen from restarting.
    def __getattr__(self, name):
        return getattr(machine, name)

    def reset(self):
        _status(_sp.STATUS_RESET)
        raise _HardReset()


class _OsProxy:
    # `os` as seen by code run in the REPL: ilistdir() gives (name, type, inode, size) like
    # LittleFS on a board (the unix port's VfsPosix leaves out the size).
    def __getattr__(self, name):
        return getattr(os, name)

    def ilistdir(self, path="."):
        for e in os.ilistdir(path):
            if len(e) >= 4:
                yield e
                continue
            size = 0
            if e[1] == 0x8000:
                p = e[0] if path in ("", ".") else path.rstrip("/") + "/" + e[0]
                try:
                    size = os.stat(p)[6]
                except OSError:
                    pass
            yield (e[0], e[1], e[2], size)


_globals = {}


def _execute(src, kind, raw, idle):
    # pyexec.c parse_compile_execute(); src is a one-item list holding the source (so that it
    # can be freed before the code runs).  Returns True for a forced exit
    # (SystemExit / machine.soft_reset()), which soft-reboots the pen; machine.reset() raises
    # _HardReset through it.
    global _kbd_enabled
    _kbd_enabled = True
    _status(_sp.STATUS_BUSY)
    exc = None
    forced = False
    try:
        try:
            code = compile(src[0], "<stdin>", kind)
            src[0] = None  # let the source go before running the code
            exec(code, _globals)  # noqa: S102 - this is a REPL
        except SystemExit:
            forced = True
        except _HardReset:
            raise
        except BaseException as e:  # noqa: BLE001 - as pyexec.c: KeyboardInterrupt too
            exc = e
    except KeyboardInterrupt as e:
        exc = e
    if raw:
        _W(b"\x04")
    if exc is not None:
        _print_exc(exc)
    if raw:
        _W(b"\x04")
    _kbd_enabled = True
    _status(idle)
    return forced


# ---- friendly REPL ------------------------------------------------------------

_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async")


def _continue_with_input(line):
    # py/repl.c mp_repl_continue_with_input()
    if not line:
        return False
    s = bytes(line)
    compound = s[:1] == b"@"
    if not compound:
        for kw in _COMPOUND:
            kb = kw.encode()
            if s.startswith(kb) and (len(s) == len(kb) or not (chr(s[len(kb)]).isalpha()
                                                             or chr(s[len(kb)]).isdigit()
                                                             or s[len(kb)] == 95)):
                compound = True
                break
    Q_NONE, Q_1S, Q_1D, Q_3S, Q_3D = 0, 1, 2, 3, 4
    q = Q_NONE
    paren = brack = brace = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == 39:  # '
            if q == Q_NONE and s[i:i + 3] == b"'''":
                q = Q_3S
                i += 2
            elif q == Q_3S and s[i:i + 3] == b"'''":
                q = Q_NONE
                i += 2
            elif q == Q_NONE:
                q = Q_1S
            elif q == Q_1S:
                q = Q_NONE
        elif c == 34:  # "
            if q == Q_NONE and s[i:i + 3] == b'"""':
                q = Q_3D
                i += 2
            elif q == Q_3D and s[i:i + 3] == b'"""':
                q = Q_NONE
                i += 2
            elif q == Q_NONE:
                q = Q_1D
            elif q == Q_1D:
                q = Q_NONE
        elif c == 92 and i + 1 < n and s[i + 1] in (39, 34, 92):  # escaped quote
            if q != Q_NONE:
                i += 1
        elif q == Q_NONE:
            if c == 40:
                paren += 1
            elif c == 41:
                paren -= 1
            elif c == 91:
                brack += 1
            elif c == 93:
                brack -= 1
            elif c == 123:
                brace += 1
            elif c == 125:
                brace -= 1
        i += 1
    if q in (Q_3S, Q_3D):
        return True
    if (paren > 0 or brack > 0 or brace > 0) and q == Q_NONE:
        return True
    if s[-1] == 92:
        return True
    return compound and s[-1] != 10


def _readline(line, prompt):
    # shared/readline/readline.c, cursor always at the end of the line.
    # Returns 0 for Enter or a control character (1..5).
    _W(prompt)
    orig = len(line)
    just_indented = False
    if orig > 1 and line[-1] == 10:
        # auto-indent (MICROPY_REPL_AUTO_INDENT)
        i = orig - 1
        while i > 0 and line[i - 1] != 10:
            i -= 1
        j = i
        while j < orig and line[j] == 32:
            j += 1
        skip = False
        if i > 0 and j + 1 == orig:
            k = i - 1
            while k > 0:
                if line[k - 1] == 10:
                    skip = True
                    break
                if line[k - 1] != 32:
                    break
                k -= 1
        if not skip:
            n = (j - i) // 4
            if line[orig - 2] == 58:  # ':'
                n += 1
            if n:
                line.extend(b"    " * n)
                _W(b"    " * n)
                just_indented = True
    esc = 0
    while True:
        c = _getc()
        if esc:
            if esc == 1:
                esc = 2 if c == 91 else (3 if c == 79 else 0)
            elif esc == 2:
                esc = 4 if 48 <= c <= 57 else 0
            else:
                esc = 0
            continue
        if 1 <= c <= 5 and len(line) == orig:
            return c
        if c == 3:
            return c
        if c == 13:
            _W(b"\r\n")
            return 0
        if c == 27:
            esc = 1
            continue
        if c == 8 or c == 127:
            if len(line) > orig:
                nsp = 0
                for b in line[orig:]:
                    if b != 32:
                        nsp = 0
                        break
                    nsp += 1
                nsp = 4 if nsp >= 4 else 1
                line[len(line) - nsp:] = b""
                _W(b"\b" * nsp + b"\x1b[K")
        elif just_indented and (c == 9 or c == 32):
            if c == 32:
                line[len(line) - 3:] = b""
                _W(b"\b\b\b")
        elif c == 9:
            if len(line) > orig and line[-1] == 32:
                line.extend(b"    ")
                _W(b"    ")
        elif 32 <= c <= 126:
            line.append(c)
            _W(bytes((c,)))
        just_indented = False


def _paste_mode():
    _W(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
    buf = bytearray()
    while True:
        c = _getc()
        if c == 3:
            _W(b"\r\n")
            return None
        if c == 4:
            _W(b"\r\n")
            return buf
        buf.append(c)
        if c == 13:
            _W(b"\r\n=== ")
        else:
            _W(bytes((c,)))


def _friendly():
    _W(BANNER)
    while True:
        _status(_sp.STATUS_FRIENDLY)
        line = bytearray()
        ret = _readline(line, b">>> ")
        kind = "single"
        if ret == 1:
            _W(b"\r\n")
            return "raw"
        if ret == 2:
            _W(b"\r\n")
            _W(BANNER)
            continue
        if ret == 3:
            _W(b"\r\n")
            continue
        if ret == 4:
            _W(b"\r\n")
            return "reboot"
        if ret == 5:
            line = _paste_mode()
            if line is None:
                continue
            kind = "exec"
        elif not line:
            continue
        else:
            cancelled = False
            while _continue_with_input(line):
                line.append(10)
                ret = _readline(line, b"... ")
                if ret == 3:
                    _W(b"\r\n")
                    cancelled = True
                    break
                if ret == 4:
                    break
            if cancelled:
                continue
        src = [bytes(line)]
        line = None
        if _execute(src, kind, False, _sp.STATUS_FRIENDLY):
            return "reboot"


# ---- raw REPL -----------------------------------------------------------------

def _raw_paste(cmd):
    # pyexec.c do_reader_stdin(): returns True for a forced exit
    if cmd != 65:  # 'A'
        _W(b"R\x00")
        return False
    _W(b"R\x01")
    _W(bytes((PASTE_WINDOW & 0xFF, PASTE_WINDOW >> 8, 1)))
    buf = bytearray()
    remain = PASTE_WINDOW
    read = _in.read
    while True:
        try:
            b = read(1)
        except KeyboardInterrupt:
            b = b"\x03"
        if not b:
            raise _EOF()
        c = b[0]
        if c == 3 or c == 4:
            _W(b"\x04")  # indicate end to host
            if c == 3:
                # the reader raises KeyboardInterrupt: no traceback data
                _W(b"\x04KeyboardInterrupt: \r\n\x04")
                return False
            break
        buf.append(c)
        remain -= 1
        if remain == 0:
            _W(b"\x01")  # another window is free
            remain = PASTE_WINDOW
    src = [bytes(buf)]
    buf = None
    return _execute(src, "exec", True, _sp.STATUS_RAW)


def _raw():
    _W(RAW_BANNER)
    line = bytearray()
    _W(b">")
    while True:
        _status(_sp.STATUS_RAW)
        c = _getc()
        if c == 1:
            if len(line) == 2 and line[0] == 5:
                if _raw_paste(line[1]):
                    return "reboot"
                line = bytearray()
                _W(b">")
                continue
            _W(RAW_BANNER)
            line = bytearray()
            _W(b">")
            continue
        if c == 2:
            _W(b"\r\n")
            return "friendly"
        if c == 3:
            line = bytearray()
            continue
        if c != 4:
            line.append(c)
            continue
        _W(b"OK")
        if not line:
            _W(b"\r\n")
            return "reboot"
        src = [bytes(line)]
        line = bytearray()
        if _execute(src, "exec", True, _sp.STATUS_RAW):
            return "reboot"
        _W(b">")


def main():
    global _status_f
    mode = sys.argv[1] if len(sys.argv) > 1 else "friendly"
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        _status_f = open("/dev/fd/" + sys.argv[2], "wb")  # noqa: SIM115 - kept open for life
    if len(sys.argv) > 3:
        root = sys.argv[3]
        os.umount("/")
        os.mount(os.VfsPosix(root), "/")
        os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.argv[:] = []
    builtins.print = _cprint
    sys.modules["micropython"] = _MicropythonProxy()
    sys.modules["os"] = _OsProxy()
    sys.modules["machine"] = _MachineProxy()
    _globals["__name__"] = "__main__"
    _globals["__repl_print__"] = _repl_print
    try:
        while True:
            try:
                r = _raw() if mode == "raw" else _friendly()
            except KeyboardInterrupt:
                continue  # a stray SIGINT while idle: redisplay the mode's prompt
            if r == "reboot":
                _W(b"MPY: soft reboot\r\n")
                sys.exit(_sp.EXIT_REBOOT_RAW if mode == "raw" else _sp.EXIT_REBOOT_FRIENDLY)
            mode = r
    except _HardReset:
        sys.exit(_sp.EXIT_HARD_RESET)
    except _EOF:
        sys.exit(0)


main()
