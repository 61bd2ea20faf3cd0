"""`python -m engine` (or the `lab` console script): one subcommand per module in `engine/commands/`.

Each command module defines `register(subparsers)`, which adds its parser(s) and sets `func`
(a callable taking the parsed args and returning an exit code). User errors (`LabError`) end
the process with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from engine.core.errors import LabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab" if Path(sys.argv[0]).name == "lab" else "python -m engine",
        description="LLM internals lab: super weights, grokking, semantic uncertainty, attention.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import engine.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"engine.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
