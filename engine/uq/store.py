"""Saved uncertainty runs: `cache/uq/<run_id>/`, one folder of the core run store per run.

The run id hashes (model, generation config, question-set hash), so the same inputs resume the same
run. Besides the store's `config.json`, `status.json` and claim, a run holds `questions.jsonl`,
`records/<index>.npz` (one per question, written atomically: a killed process never leaves half a
record), `marks.json` (manual marks), `judge_llm.json` (LLM-judge verdicts per judge model) and
`scores/<key>.json` (cached scores).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.paths import atomic_write
from engine.core.runstore import RunFolder, RunStore, read_json, write_json
from engine.uq.config import GenerationConfig, default_hidden_layers
from engine.uq.questions import questions_hash
from engine.uq.records import QuestionRecord

STORE = RunStore("uq", digits=12)
_RECORD_FIELDS = (
    "id",
    "question",
    "references",
    "answer",
    "answer_token_logprobs",
    "samples",
    "sample_token_logprobs",
    "hidden_layers",
    "seconds",
)


def record_to_bytes(record: QuestionRecord) -> bytes:
    """One record as .npz bytes (no pickles): the hidden arrays plus a JSON string of the rest."""
    meta = {field: getattr(record, field) for field in _RECORD_FIELDS}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        answer_hidden=np.asarray(record.answer_hidden, dtype=np.float32),
        sample_hidden=np.asarray(record.sample_hidden, dtype=np.float32),
        meta=np.array(json.dumps(meta, ensure_ascii=False)),
    )
    return buffer.getvalue()


def record_from_file(path: Path) -> QuestionRecord:
    """The record saved by `record_to_bytes`."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return QuestionRecord(answer_hidden=data["answer_hidden"], sample_hidden=data["sample_hidden"], **meta)


class UqRun(RunFolder):
    """One uncertainty run's folder; safe to read while its writer appends records."""

    # -- config and questions
    @property
    def model(self) -> str:
        return self.config.get("model", "")

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(**self.config["generation"])

    def questions(self) -> pd.DataFrame:
        """The run's questions: id, question, references (list of str)."""
        path = self.path / "questions.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pd.DataFrame(rows, columns=["id", "question", "references"])

    def total(self, limit: int | None = None) -> int:
        """How many questions a generation up to `limit` covers."""
        n = int(self.config.get("n_questions") or len(self.questions()))
        return n if limit is None else min(int(limit), n)

    # -- records
    def record_path(self, index: int) -> Path:
        return self.path / "records" / f"{index:06d}.npz"

    def done_indices(self) -> list[int]:
        """Indices of the questions with a saved record, ascending."""
        folder = self.path / "records"
        out = []
        for path in folder.glob("*.npz") if folder.is_dir() else []:
            try:
                out.append(int(path.stem))
            except ValueError:
                continue
        return sorted(out)

    def done(self, limit: int | None = None) -> int:
        """How many of the first `limit` questions (all by default) have a record."""
        return len([i for i in self.done_indices() if limit is None or i < limit])

    def write_record(self, index: int, record: QuestionRecord) -> None:
        atomic_write(self.record_path(index), record_to_bytes(record))

    def load_records(self, limit: int | None = None) -> list[QuestionRecord]:
        """Saved records in question order (the first `limit` questions only, when given)."""
        records = []
        for index in self.done_indices():
            if limit is not None and index >= limit:
                break
            try:
                records.append(record_from_file(self.record_path(index)))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # an unreadable file is regenerated on the next resume
        return records

    # -- marks and judges
    def marks(self) -> dict[str, bool]:
        """Manual marks: question id -> right (True) / wrong (False)."""
        return {str(k): bool(v) for k, v in read_json(self.path / "marks.json", {}).items() if v is not None}

    def save_marks(self, marks: dict[str, bool | None]) -> None:
        write_json(self.path / "marks.json", {str(k): bool(v) for k, v in marks.items() if v is not None})

    def llm_verdicts(self, judge_model: str) -> dict[str, bool | None]:
        """Saved LLM-judge verdicts of `judge_model`: question id -> right / wrong / None (ungraded)."""
        return read_json(self.path / "judge_llm.json", {}).get(judge_model, {})

    def save_llm_verdicts(self, judge_model: str, verdicts: dict[str, bool | None]) -> None:
        data = read_json(self.path / "judge_llm.json", {})
        data.setdefault(judge_model, {}).update(verdicts)
        write_json(self.path / "judge_llm.json", data)

    def describe(self) -> str:
        """One line for a run picker: id, model, questions, progress, K, creation time."""
        cfg = self.config
        return (
            f"{self.run_id} · {cfg.get('model')} · {cfg.get('source')} · {self.done()}/{cfg.get('n_questions')} "
            f"done · K={cfg.get('generation', {}).get('samples')} · {cfg.get('created')}"
        )


def run_key(model_name: str, generation: GenerationConfig, questions_digest: str) -> dict:
    """What determines the generated text, hashed into the run id: same inputs -> same run (resume)."""
    return {"model": model_name, "generation": dataclasses.asdict(generation), "questions": questions_digest}


def open_run(
    model_name: str,
    questions: pd.DataFrame,
    generation: GenerationConfig,
    *,
    source: str = "",
    n_layers: int | None = None,
) -> UqRun:
    """The run for these inputs, created when new (resumed otherwise). Hidden layers are resolved first
    (`default_hidden_layers(n_layers)` when the config leaves them open)."""
    generation.validate()
    if not generation.hidden_layers and n_layers is not None:
        generation = dataclasses.replace(generation, hidden_layers=default_hidden_layers(n_layers))
    digest = questions_hash(questions)
    key = run_key(model_name, generation, digest)
    run = UqRun(STORE.folder(STORE.run_id(key)).path)
    if not run.exists():  # questions first: a run with a config.json is complete
        (run.path / "records").mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps({"id": q, "question": t, "references": list(r)}, ensure_ascii=False)
            for q, t, r in zip(questions["id"], questions["question"], questions["references"])
        ]
        atomic_write(run.path / "questions.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        STORE.open(
            key,
            {
                "model": model_name,
                "generation": dataclasses.asdict(generation),
                "questions_hash": digest,
                "n_questions": len(questions),
                "source": source,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
    return run


def list_runs() -> list[UqRun]:
    """Saved runs, newest first."""
    return [UqRun(run.path) for run in STORE.list()]


def stray_runs() -> list[RunFolder]:
    """Folders in cache/uq/ that are no readable run (half-created, or from an older version): deletable."""
    return STORE.strays()


def get_run(run_id: str) -> UqRun:
    """A saved run; LabError for a malformed or unknown id."""
    return UqRun(STORE.get(run_id).path)


def delete_run(run: str | RunFolder) -> None:
    """Delete a run (or a stray folder); LabError while it is being generated (its claim is held)."""
    STORE.delete(run)
