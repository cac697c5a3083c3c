"""One exception type per layer; the CLI converts them to `penctl: message` and an exit code.

Exit codes (docs/design.md §4): 0 ok, 1 the pen refused, 2 usage or input-file error (nothing sent),
3 connection, timeout or protocol error, or no usable answer, 130 interrupted.
"""

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130


class PenctlError(Exception):
    """Base of every error penctl reports to the user."""

    exit_code = EXIT_CONNECTION
    code = "ERROR"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UsageError(PenctlError):
    """Bad command line or input file. Nothing was sent to the pen."""

    exit_code = EXIT_USAGE
    code = "USAGE"


class OutputError(PenctlError):
    """An output file could not be written after the pen was used (the message names where the data
    went instead). Exit 2 like every file error, but the pen was used: the message says so."""

    exit_code = EXIT_USAGE
    code = "FILE"


class LinkError(PenctlError):
    """Transport layer: port missing, cannot open, disconnected, timed out."""

    exit_code = EXIT_CONNECTION
    code = "LINK"


class NoAnswer(LinkError):
    """A check that needs the pen's answer got none it could use: penctl refuses to go on."""

    code = "NO_ANSWER"


class ProtocolError(PenctlError):
    """Frames that do not decode, wrong protocol version, unexpected replies."""

    exit_code = EXIT_CONNECTION
    code = "PROTOCOL"


class PenRefused(PenctlError):
    """The pen answered with a structured error (locked out, fault, invalid value, busy)."""

    exit_code = EXIT_REFUSED

    def __init__(self, code, message, field=None):
        super().__init__(message, code)
        self.field = field


class FlashError(PenctlError):
    """Deploying the firmware failed (the message says which firmware the pen boots now)."""

    exit_code = EXIT_CONNECTION
    code = "FLASH"
