"""Config dataclasses as the one place for a setting's default and help: the CLI derives its flags
from them, the pages read their help texts from them, the docs quote them.

    @dataclass(frozen=True)
    class Config:
        p: int = option(53, "modulus p (prime for division)")

`add_options(parser, Config)` adds `--p` with type int, default 53 and that help; `from_args(Config,
args)` builds the config back; `to_flags(config)` is the inverse, the flags that give `config` again
(`from_args(Config, parser.parse_args(to_flags(config))) == config`), for a report's reproduce line.
Modules holding config dataclasses must not import torch, so that `--help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
import weakref
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


def _is_union(kind: Any) -> bool:
    return get_origin(kind) in (typing.Union, types.UnionType)


def _optional_inner(kind: Any) -> Any:
    """`X | None` -> X (the type the flag parses); any other type unchanged."""
    if _is_union(kind):
        inner = [a for a in get_args(kind) if a is not type(None)]
        return inner[0] if inner else str
    return kind


def _on_cli(field: dataclasses.Field, skip: tuple[str, ...]) -> bool:
    return field.name not in skip and "help" in field.metadata and field.metadata.get("cli", True)


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> None:
    """Add one flag per documented field of `cls`: type, choices (a Literal) and default from the field."""
    hints = _resolved_types(cls)
    for field in dataclasses.fields(cls):
        if not _on_cli(field, skip):
            continue
        default = (defaults or {}).get(field.name, default_of(cls, field.name))
        kind = hints[field.name]
        if _is_union(kind) and get_origin(_optional_inner(kind)) in (list, tuple):
            kind = _optional_inner(kind)  # `list[int] | None`: a comma list (None only as the default)
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
            item = type(get_args(item)[0]) if get_origin(item) is Literal else item
            kwargs["type"] = lambda text, item=item: [item(v) for v in text.split(",") if v.strip()]
            kwargs["metavar"] = "A,B,..."
            kwargs["help"] = (
                field.metadata["help"] + f" (comma-separated; default: {','.join(map(str, default or ())) or 'none'})"
            )
        elif kind in (int, float, str):
            kwargs["type"] = kind
        elif _is_union(kind):
            kwargs["type"] = _optional_inner(kind)
        parser.add_argument(_flag(field), **kwargs)
    _ADDED.setdefault(parser, []).append(AddedOptions(cls, skip, dict(defaults or {})))


@dataclasses.dataclass(frozen=True)
class AddedOptions:
    """One `add_options` call: the config class, the fields it skipped and the defaults it overrode."""

    cls: type
    skip: tuple[str, ...]
    defaults: dict[str, Any]


_ADDED: weakref.WeakKeyDictionary[argparse.ArgumentParser, list[AddedOptions]] = weakref.WeakKeyDictionary()


def options_added(parser: argparse.ArgumentParser) -> list[AddedOptions]:
    """The config classes whose flags `add_options` put on `parser`, in order."""
    return list(_ADDED.get(parser, []))


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config built from parsed flags (fields without a flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    hints = _resolved_types(cls)
    for name, value in values.items():
        if get_origin(_optional_inner(hints[name])) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def _flag_value(value: Any) -> str:
    """One value as its flag's parser reads it back: a list or tuple comma-separated, a float by repr."""
    if isinstance(value, (list, tuple)):
        return ",".join(_flag_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def to_flags(config: Any, *, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[str]:
    """The flags that `add_options(parser, type(config), skip=skip, defaults=defaults)` parses back into
    `config`: one per field that differs from its default (a bool as `--x` / `--no-x`, a list or tuple
    comma-separated), none for fields kept off the CLI. ValueError when a value has no flag (None
    where the default is not, or an item with a comma in it)."""
    cls = type(config)
    hints = _resolved_types(cls)
    flags: list[str] = []
    for field in dataclasses.fields(cls):
        if not _on_cli(field, skip):
            continue
        value = getattr(config, field.name)
        default = (defaults or {}).get(field.name, default_of(cls, field.name))
        if value == default:
            continue
        flag = _flag(field)
        if hints[field.name] is bool:
            flags.append(flag if value else "--no-" + flag[2:])
            continue
        if value is None:
            raise ValueError(f"{cls.__name__}.{field.name} = None has no flag (its default is {default!r})")
        if isinstance(value, (list, tuple)) and any("," in str(v) for v in value):
            raise ValueError(f"{cls.__name__}.{field.name}: an item with a comma cannot be written as {flag} A,B")
        text = _flag_value(value)
        flags.append(f"{flag}={text}" if text.startswith("-") else flag)  # `--x=-1`: never read as a flag
        if not text.startswith("-"):
            flags.append(text)
    return flags


def shell_command(command: str, *flags: list[str]) -> str:
    """A shell line: `command` then the flags, each quoted where the shell needs it."""
    return " ".join([command, *(shlex.quote(f) for group in flags for f in group)])
