"""The command table of `penctl` (like mpremote's): name -> Command.

A command group is one module here that defines `COMMAND = Command(...)`, plus one entry in
`_MODULES` below. penctl.cli builds the parser from the table, runs `check(args)` (every
argument, input file and output path; nothing touches the pen) and then `run(args, out)`.
See docs/notes/host-penctl.md, "Adding a command".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from penctl.output import Out


def _no_check(args: argparse.Namespace) -> None:
    return None


@dataclass(frozen=True)
class Command:
    name: str
    help: str                                                   # one line, for `penctl --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]    # the command's own options / actions
    run: Callable[[argparse.Namespace, Out], int]               # returns the exit code
    description: str = ""                                       # for `penctl NAME --help`
    check: Callable[[argparse.Namespace], None] = _no_check     # validation before any side effect
    stops_on_signals: bool = True   # SIGTERM/SIGHUP act like Ctrl-C (a running session is stopped)


def _table() -> dict[str, Command]:
    from penctl.commands import (
        ceiling, clock, fault, flash, info, interval, key, log, ports, profile, session, sim, sterilise, telemetry,
    )

    _MODULES = (sim, ports, info, profile, sterilise, session, telemetry, log, flash, fault, key, ceiling, clock,
                interval)
    return {module.COMMAND.name: module.COMMAND for module in _MODULES}


TABLE = _table()
