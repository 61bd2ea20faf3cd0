"""CLI subcommands; each module defines `register(subparsers)` (see engine/cli.py)."""
