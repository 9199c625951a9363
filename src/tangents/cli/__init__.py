"""``tangents``: the command line, one module per command.

``tangents [OPTIONS]`` (or ``tangents run``) runs the main job (`tangents.cli.run`); ``tangents
COMMAND ...`` runs one of `COMMANDS`. Arguments are parsed before anything heavy (torch,
scikit-learn) is imported, so ``--help``, ``--version`` and argument errors answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["COMMANDS", "entry", "main"]

#: Command name -> (module under ``tangents.cli``, one-line summary). Each module has a
#: ``main(argv, prog) -> int`` that parses its arguments before importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "the main job (the default): infinite-width NNGP/NTK vs a trained finite network on digits"),
    "kernel": ("kernel", "compute a kernel into a resumable store on disk, here or on a Dask cluster; --status STORE"),
    "fit": ("fit", "fit an infinitely wide network to your CSV/.npy/.npz data and predict a test file"),
    "evidence": ("evidence", "figures and numbers reproducing Jacot et al. and Lee et al. with finite networks"),
}


def _commands_text() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = [f"  tangents {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "commands (tangents COMMAND --help for each):\n" + "\n".join(rows)


def entry() -> NoReturn:
    """The ``tangents`` console script and ``python -m tangents``: `main`, then exit with its status.

    An interrupted kernel run (Ctrl-C, SIGTERM) leaves its blocks being computed to daemon
    threads (``tangents-block-*``) rather than wait for them; the interpreter's shutdown
    would then abort inside torch ("terminate called without an active exception", status
    -6 instead of 130). Then stdout and stderr are flushed and the process ends at once, with
    the status: the store is already consistent (every write in flight was finished).
    """
    code = main()
    if any(t.is_alive() and t.name.startswith("tangents-block-") for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tangents`` console script and ``python -m tangents`` (through `entry`).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the job fails with a message, 2 for bad
        arguments (argparse's convention).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        name = args.pop(0)
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        if name == "run":
            return module.main(args, prog="tangents run", commands=_commands_text())
        return module.main(args, prog=f"tangents {name}")
    from . import run

    return run.main(args, prog="tangents", commands=_commands_text())
