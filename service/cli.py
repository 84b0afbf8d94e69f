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

# Each module registers its own subcommand(s) through ``register(subparsers)``. Command modules
# import heavy dependencies (FastAPI, SQLAlchemy...), so only the one being run is imported;
# ``stirscope --help`` imports them all to list them.
COMMANDS: dict[str, str] = {
    "sip": "service.cmd_sip",
    "verify": "service.cmd_verify",
    "cert": "service.cmd_cert",
    "sign": "service.cmd_sign",
    "analyze": "service.cmd_analyze",
    "traceback": "service.cmd_traceback",
    "listen": "service.cmd_listen",
    "serve": "service.cmd_serve",
}


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


Runner = Callable[[argparse.Namespace], int]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="stirscope",
        description="STIR/SHAKEN analyzer: parse, verify and trace signed SIP calls.",
    )
    parser.add_argument("--version", action="version", version=f"stirscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [only] if only in COMMANDS else list(COMMANDS)
    for name in names:
        module: CommandModule = import_module(COMMANDS[name])
        module.register(subparsers)
    return parser


def _asks_local_cluster(words: Sequence[str]) -> bool:
    """Whether the words hold ``--cluster local:N``. Read before the parser exists, so that the
    local cluster's worker server starts importing (~1 s, on another core) while this process
    imports the command's modules: the run's first task then starts ~1 s earlier. A spelling
    this misses (an abbreviated option) only loses that head start."""
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word == "--cluster" and following.startswith("local:"):
            return True
        if word.startswith("--cluster=local:"):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((w for w in words if not w.startswith("-")), None)
    if first == "analyze" and _asks_local_cluster(words):
        from analyzer.clusterstart import start_worker_server

        start_worker_server()
    parser = build_parser(first)
    args = parser.parse_args(words)
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
