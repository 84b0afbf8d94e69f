"""The ``stirscope`` command line: one subcommand module per job.

Exit codes: 0 success (for ``verify``: TN-Validation-Passed), 1 a negative result or a parse
error in the input, 2 usage errors or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Protocol

from analyzer.version import __version__

# Each module registers its own subcommand(s) through ``register(subparsers)``.
COMMAND_MODULES = (
    "service.cmd_sip",
    "service.cmd_verify",
    "service.cmd_cert",
    "service.cmd_sign",
    "service.cmd_analyze",
    "service.cmd_traceback",
    "service.cmd_listen",
    "service.cmd_serve",
)


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


Runner = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="stirscope",
        description="STIR/SHAKEN analyzer: parse, verify and trace signed SIP calls.",
    )
    parser.add_argument("--version", action="version", version=f"stirscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module: CommandModule = import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except BrokenPipeError:  # e.g. `stirscope ... | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
