"""Limits of the shared lab server, from one config file, `config/server_limits.toml` (its values are
the defaults; `$LAB_LIMITS_FILE` may name a file that overrides some of them). The web pages check
requests against them and refuse one that is over a limit with a message naming the limit; the
command line is not capped (it runs on a person's own machine).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from functools import lru_cache
from pathlib import Path

from engine.core.errors import LabError
from engine.core.options import help_of
from engine.core.paths import REPO_ROOT

DEFAULT_FILE = REPO_ROOT / "config" / "server_limits.toml"


def _limit(help: str) -> int:
    return dataclasses.field(metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one request or one person may ask of the shared server."""

    prompt_tokens: int = _limit("tokens per prompt (scan prompts, head-function prompts, UQ template)")
    attention_tokens: int = _limit("tokens per attention prompt")
    prompts_per_request: int = _limit("prompts per super-weight scan or head-function request")
    template_chars: int = _limit("characters of a UQ prompt template")
    question_chars: int = _limit("characters of one question")
    references_per_question: int = _limit("reference answers per question")
    reference_chars: int = _limit("characters of one reference answer")
    samples: int = _limit("samples per question (K)")
    new_tokens: int = _limit("tokens generated per answer")
    questions_per_run: int = _limit("questions of one uncertainty run")
    upload_bytes: int = _limit("bytes of an uploaded question file")
    grok_steps: int = _limit("training steps of one grokking run")
    grok_checkpoints: int = _limit("checkpoints a grokking run keeps")
    sweep_runs: int = _limit("runs of one grokking sweep")
    study_heads: int = _limit("attention heads of one attention-study run")
    study_prompts: int = _limit("train + held-out prompts of one attention-study run")
    jobs_per_person: int = _limit("long jobs one person runs at once")
    disk_quota_bytes: int = _limit("bytes of run files one person may keep")

    def check(self, name: str, value: float, what: str | None = None) -> None:
        """LabError when `value` exceeds the limit `name`, naming the limit and where it is set."""
        limit = getattr(self, name)
        if value > limit:
            raise LabError(
                f"{what or help_of(ServerLimits, name).capitalize()}: {value:,} is over this server's "
                f"limit of {limit:,} ({name} in {limits_file().name})."
            )


def limits_file() -> Path:
    """The file a limit was last set in (the override when there is one)."""
    return Path(os.environ.get("LAB_LIMITS_FILE") or DEFAULT_FILE)


def _read(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise LabError(f"Cannot read the server limits file {path}: {err}") from err
    known = {f.name for f in dataclasses.fields(ServerLimits)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LabError(f"Unknown server limit(s) in {path}: {', '.join(unknown)} (known: {', '.join(sorted(known))}).")
    bad = [k for k, v in data.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise LabError(f"Server limits must be non-negative integers: {', '.join(bad)} in {path}.")
    return data


@lru_cache(maxsize=4)
def _load(override: str | None, stamp: tuple[float, float]) -> ServerLimits:
    values = _read(DEFAULT_FILE)
    if override:
        values.update(_read(Path(override)))
    missing = sorted({f.name for f in dataclasses.fields(ServerLimits)} - set(values))
    if missing:
        raise LabError(f"{DEFAULT_FILE} lacks server limit(s): {', '.join(missing)}.")
    return ServerLimits(**values)


def _mtime(path: Path | None) -> float:
    return path.stat().st_mtime if path is not None and path.is_file() else 0.0


def server_limits() -> ServerLimits:
    """The limits in force (the files are re-read when they change)."""
    override = os.environ.get("LAB_LIMITS_FILE") or None
    if override and not Path(override).is_file():
        raise LabError(f"LAB_LIMITS_FILE names {override}, which does not exist.")
    stamp = (_mtime(DEFAULT_FILE), _mtime(Path(override) if override else None))
    return _load(override, stamp)
