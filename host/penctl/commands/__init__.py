"""The command table of `penctl` (like mpremote's): name -> Command.

A command group is one module here that defines `COMMAND = Command(...)`, plus one entry in
`_MODULES` below. penctl.cli builds the parser from the table, runs `check(args)` (every
argument, input file and output path; nothing touches the pen) and then `run(args, out)`.

Adding a group: create `commands/NAME.py` with `add_arguments(parser)` (use
`common.add_actions` / `common.add_action` for sub-actions), `check(args)` (validate every
argument; output paths through `penctl.paths.check_output_path`, input files through
`penctl.paths.read_input_file`, regular files of at most 1 MB) and `run(args, out)` (open the
pen with `common.open_pen(args)`, report with `out.result(json_dict, human_text)`, return the
exit code), then `COMMAND = Command("NAME", "one-line help", add_arguments, run, check=check)`,
and add the module to `_MODULES`. Errors are raised, never printed: `UsageError` (exit 2),
`PenRefused` (1), `LinkError` / `ProtocolError` (3); penctl.cli prints `penctl: message` (or
the JSON error object) and picks the exit code.
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
