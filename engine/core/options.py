"""Config dataclasses as the one place for a setting's default and help: the CLI derives its flags
from them, the pages read their help texts from them, the docs quote them.

    @dataclass(frozen=True)
    class Config:
        p: int = option(53, "modulus p (prime for division)")

`add_options(parser, Config)` adds `--p` with type int, default 53 and that help; `from_args(Config,
args)` builds the config back. Modules holding config dataclasses must not import torch, so that
`--help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True, **extra: Any) -> Any:
    """A dataclass field with its help text (and optional CLI flag name, or cli=False to keep it off the CLI)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, **extra})


def help_of(cls: type, name: str) -> str:
    """The help text of one field of a config dataclass."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def default_of(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> None:
    """Add one flag per documented field of `cls`: type, choices (a Literal) and default from the field."""
    types = _resolved_types(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or "help" not in field.metadata or not field.metadata.get("cli", True):
            continue
        default = (defaults or {}).get(field.name, default_of(cls, field.name))
        kind = types[field.name]
        kwargs: dict[str, Any] = {
            "default": default,
            "dest": field.name,
            "help": field.metadata["help"] + (" (default: %(default)s)" if default not in ("", None) else ""),
        }
        origin = get_origin(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(get_args(kind))
            kwargs["type"] = type(get_args(kind)[0])
        elif origin in (list, tuple):
            item = get_args(kind)[0] if get_args(kind) else str
            kwargs["type"] = lambda text, item=item: [item(v) for v in text.split(",") if v.strip()]
            kwargs["metavar"] = "A,B,..."
            kwargs["help"] = (
                field.metadata["help"] + f" (comma-separated; default: {','.join(map(str, default)) or 'none'})"
            )
        elif kind in (int, float, str):
            kwargs["type"] = kind
        elif origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            inner = [a for a in get_args(kind) if a is not type(None)]
            kwargs["type"] = inner[0] if inner else str
        parser.add_argument(_flag(field), **kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config built from parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    types = _resolved_types(cls)
    for name, value in values.items():
        if get_origin(types[name]) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)
