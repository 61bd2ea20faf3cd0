"""Config <-> flags: `to_flags` is the inverse of the parser `add_options` builds, for every command.

For each subcommand of `python -m engine`, every config class it takes flags from gets a value that
differs from the default in every field it has a flag for (tuples included); the flags `to_flags`
writes for it, parsed by that command's real parser, give the same config back.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from typing import Literal, get_args, get_origin

import pytest

from engine.cli import build_parser
from engine.core.options import (
    AddedOptions,
    add_options,
    default_of,
    from_args,
    option,
    options_added,
    shell_command,
    to_flags,
)

# The flags a command requires besides its configs' (values that parse; nothing runs).
REQUIRED = {
    "attention": ["--out", "x", "--prompt", "p"],
    "heads": ["--out", "x"],
    "superweights": ["--out", "x"],
    "uq": ["--questions", "default"],
    "uq-marks": ["sample", "--run", "abc123"],
}
WITHOUT_CONFIG = {"models"}  # commands with no config dataclass


def _other(kind, default):
    """A value of type `kind` that differs from `default` (and survives the flag's parser exactly)."""
    origin = get_origin(kind)
    if origin in (typing.Union, __import__("types").UnionType):
        inner = next(a for a in get_args(kind) if a is not type(None))
        return _other(inner, None if default is None else default)
    if kind is bool:
        return not default
    if origin is Literal:
        return next(c for c in get_args(kind) if c != default)
    if origin in (tuple, list):
        item = get_args(kind)[0]
        values = {int: (7, 1, 4), float: (0.5, 2.25, 3.0), str: ("a", "b c")}[item]
        return tuple(values) if origin is tuple else list(values)
    if kind is int:
        return 7 if default is None else default + 3
    if kind is float:
        return 0.375 if default is None else default * 2 + 0.125
    if kind is str:
        return "some value" if not default else default + " changed"
    raise AssertionError(f"no test value for {kind}")


def _on_cli(field: dataclasses.Field, added: AddedOptions) -> bool:
    return field.name not in added.skip and "help" in field.metadata and field.metadata.get("cli", True)


def _changed(added: AddedOptions):
    """The class's default config with every field that has a flag here set to another value."""
    hints = typing.get_type_hints(added.cls)
    changes = {}
    for field in dataclasses.fields(added.cls):
        if _on_cli(field, added):
            default = added.defaults.get(field.name, default_of(added.cls, field.name))
            changes[field.name] = _other(hints[field.name], default)
    return dataclasses.replace(added.cls(), **changes), set(changes)


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_with_flags_is_covered():
    commands = _commands()
    assert {"grok", "grok-sweep", "grok-study", "uq", "uq-study", "attention", "heads", "superweights"} <= set(commands)
    for name, parser in commands.items():
        assert options_added(parser) or name in WITHOUT_CONFIG, f"{name} takes no config dataclass: list it"


@pytest.mark.parametrize("command", sorted(set(_commands()) - WITHOUT_CONFIG))
def test_to_flags_round_trips_through_the_command_parser(command):
    parser = _commands()[command]
    added = options_added(parser)
    changed = [_changed(a) for a in added]
    flags = [f for a, (config, _) in zip(added, changed) for f in to_flags(config, skip=a.skip, defaults=a.defaults)]
    args = parser.parse_args(REQUIRED.get(command, []) + flags)
    for a, (config, owned) in zip(added, changed):
        parsed = from_args(a.cls, args)
        assert owned, f"{command}: {a.cls.__name__} adds no flag"
        assert {n: getattr(parsed, n) for n in owned} == {n: getattr(config, n) for n in owned}
        if not a.skip:
            assert parsed == config
    # and the parser's defaults (the class's, or those the command sets) give no flag at all, and parse back
    assert all(
        to_flags(dataclasses.replace(a.cls(), **a.defaults), skip=a.skip, defaults=a.defaults) == [] for a in added
    )
    args = parser.parse_args(REQUIRED.get(command, []))
    for a in added:
        parsed = from_args(a.cls, args)
        assert all(getattr(parsed, f) == default_of(a.cls, f) for f in _changed(a)[1] if f not in a.defaults)


def test_one_field_at_a_time_round_trips():
    """Each field changed alone writes exactly its own flag (the others stay at their defaults)."""
    for command, parser in _commands().items():
        for a in options_added(parser):
            config, owned = _changed(a)
            for name in owned:
                single = dataclasses.replace(a.cls(), **{**a.defaults, name: getattr(config, name)})
                flags = to_flags(single, skip=a.skip, defaults=a.defaults)
                assert len(flags) in (1, 2), (command, name, flags)
                parsed = from_args(a.cls, parser.parse_args(REQUIRED.get(command, []) + flags))
                assert getattr(parsed, name) == getattr(single, name), (command, name, flags)


def test_superweights_block_sizes_use_the_same_comma_format():
    """`--block-sizes` is written by hand in the superweights command; to_flags writes what it reads."""
    from engine.superweights.config import QuantizationConfig

    config = QuantizationConfig(block_sizes=(32, 512))
    flags = to_flags(config)
    assert flags == ["--block-sizes", "32,512"]
    args = _commands()["superweights"].parse_args(["--out", "x", *flags])
    assert args.block_sizes == (32, 512)


@dataclasses.dataclass(frozen=True)
class _Edge:
    shift: float = option(1.0, "may be negative")
    offsets: tuple[int, ...] = option((1, 2), "may be empty or negative")
    name: str | None = option(None, "optional")
    layers: list[int] | None = option(None, "optional list")
    flag: bool = option(True, "a switch", flag="--switch")
    hidden: int = option(3, "not on the CLI", cli=False)


@pytest.mark.parametrize(
    "config",
    [
        _Edge(shift=-2.5),
        _Edge(offsets=()),
        _Edge(offsets=(-1, 3)),
        _Edge(name="two words"),
        _Edge(name="-dash"),
        _Edge(layers=[4, 8]),
        _Edge(flag=False),
        _Edge(shift=1e-12, offsets=(0,), name="x", layers=[0], flag=False),
    ],
)
def test_edge_values_round_trip(config):
    parser = argparse.ArgumentParser()
    add_options(parser, _Edge)
    flags = to_flags(config)
    assert from_args(_Edge, parser.parse_args(flags)) == config
    line = shell_command("prog", flags)  # through the shell's quoting too
    assert from_args(_Edge, parser.parse_args(shlex.split(line)[1:])) == config


def test_values_without_a_flag_are_refused_not_dropped():
    assert to_flags(_Edge(hidden=9)) == []  # kept off the CLI by the field itself
    with pytest.raises(ValueError, match="None has no flag"):
        to_flags(dataclasses.replace(_Edge(), shift=None))


def test_bools_are_written_as_flag_and_no_flag():
    assert to_flags(_Edge(flag=False)) == ["--no-switch"]

    @dataclasses.dataclass(frozen=True)
    class Off:
        on: bool = option(False, "off by default")

    assert to_flags(Off(on=True)) == ["--on"]


def _parse_line(line: str) -> argparse.Namespace:
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "engine"]
    return build_parser().parse_args(words[3:])


def test_the_grokking_study_reproduce_line_runs_with_other_seeds_and_arms():
    from engine.grokking.config import StudyConfig
    from engine.grokking.study import command_line

    study = StudyConfig(seeds=(3, 11), arms=("control", "zero_tracked"), n_layers=3, root="my runs", report_only=True)
    line = command_line(study)
    assert "--seeds 3,11" in line and "--arms control,zero_tracked" in line and "--report-only" not in line
    assert from_args(StudyConfig, _parse_line(line)) == dataclasses.replace(study, report_only=False)
    assert command_line(StudyConfig()) == "python -m engine grok-study"


def test_the_uncertainty_study_reproduce_line_runs():
    from engine.uq.config import BatchOptions, EvalOptions, GenerationConfig
    from engine.uq.study import StudyConfig, command_line

    study = StudyConfig(webquestions=20, bundled=False, limit=5, model="some/model")
    generation = GenerationConfig(samples=4, temperature=0.7, seed=3)
    options = EvalOptions(judge="f1", n_boot=200, seed=3, nli_model="org/nli model", lm_entailment=True)
    batch = BatchOptions(batch_questions=2)
    args = _parse_line(command_line(study, generation, options, batch))
    assert args.command == "uq-study"
    assert from_args(StudyConfig, args) == study
    assert from_args(GenerationConfig, args) == generation
    assert from_args(EvalOptions, args) == options
    assert from_args(BatchOptions, args) == batch
