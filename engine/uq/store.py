"""Saved uncertainty runs: `cache/uq/<run_id>/`, one folder of the core run store per run.

The run id hashes (model, generation config, question-set hash), so the same inputs resume the same
run. Besides the store's `config.json`, `status.json` and claim, a run holds `questions.jsonl`,
`records/<index>.npz` (one per question, written atomically: a killed process never leaves half a
record) and `scores/<key>.json` (cached scores). Manual marks and LLM-judge verdicts are rows of the
lab's state database (engine.core.db, one transaction per change); `marks.json` / `judge_llm.json`
written by earlier lab versions are imported into it once. Blind hand marks, made to measure the judges and
never overriding them, are private to each person: the owner's `hand_marks.csv`, anyone else's
`hand_marks/<owner id>.csv` (engine.uq.handmarks).

Crash safety: a record that cannot be read (truncated, not a zip, wrong keys or shapes) is reported by
`bad_records` and is not counted as done, so the next generation writes it again; loading never raises
on a damaged file. Temporary files of `atomic_write` left by a dead process (or older than
STALE_TEMP_SECONDS) are removed when the run is opened or claimed. Marks and verdicts are database
rows changed one question at a time, so concurrent writers (threads or processes) never lose each
other's updates.

Disk: hidden states stay float32 (lossless). Float16 would halve them but moves EigenScore by 0.025 and
the cross-fitted probes by up to 0.3 on the 270M (measured), over the 1e-3 any score may move. Instead a
sample whose hidden state repeats an earlier sample's (the same answer, common for factual questions:
59% of the samples on the bundled set with the 270M, K = 10) is stored once: `sample_hidden` holds the
distinct states, `sample_rows` [K] says which one each sample has. Zip compression saves about 5% more
for ten times the write time, so records are not compressed. Records of older versions (every row
stored) load as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.db import lab_db
from engine.core.errors import LabError
from engine.core.paths import atomic_write
from engine.core.runstore import RunFolder, RunStore, read_json
from engine.uq.config import GenerationConfig, default_hidden_layers
from engine.uq.questions import questions_hash
from engine.uq.records import QuestionRecord

TOPIC = "uq"
STORE = RunStore(TOPIC, digits=12)
STALE_TEMP_SECONDS = 300  # an atomic_write temporary this old is left over, whoever wrote it
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.\d+\.tmp$")  # .<name>.<pid>.<thread>.tmp (engine.core.paths.atomic_write)
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


class RecordError(LabError):
    """A saved record that cannot be read: truncated, not an .npz, wrong keys, or fields that disagree."""


def _distinct_rows(hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, ...] -> (the distinct rows in first-seen order [U, ...], which row each one is [K] int32);
    rows are the same when their float32 bytes are."""
    first: dict[bytes, int] = {}
    keep: list[int] = []
    rows = []
    for k, row in enumerate(hidden):
        if row.tobytes() not in first:
            first[row.tobytes()] = len(keep)
            keep.append(k)
        rows.append(first[row.tobytes()])
    return hidden[keep], np.array(rows, dtype=np.int32)


def record_to_bytes(record: QuestionRecord) -> bytes:
    """One record as .npz bytes (no pickles): the graded answer's hidden states [n_layers, d], the distinct
    sample hidden states [U, n_layers, d] with `sample_rows` [K], all float32, and the rest as UTF-8 JSON."""
    meta = {field: getattr(record, field) for field in _RECORD_FIELDS}
    samples = np.asarray(record.sample_hidden, dtype=np.float32)
    distinct, rows = _distinct_rows(samples)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        answer_hidden=np.asarray(record.answer_hidden, dtype=np.float32),
        sample_hidden=distinct,
        sample_rows=rows,
        meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
    )
    return buffer.getvalue()


def record_from_file(path: Path) -> QuestionRecord:
    """The record saved by `record_to_bytes` (or by an older version, every sample row stored); RecordError,
    never a zip or numpy error, when the file is damaged."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                raise RecordError("not an .npz file")
        with np.load(path, allow_pickle=False) as data:
            missing = {"answer_hidden", "sample_hidden", "meta"} - set(data.files)
            if missing:
                raise RecordError(f"no {', '.join(sorted(missing))} in the file")
            meta = data["meta"]  # UTF-8 bytes; older records: a numpy unicode string (4 bytes a character)
            meta = json.loads(meta.tobytes().decode("utf-8") if meta.dtype == np.uint8 else str(meta))
            samples = np.asarray(data["sample_hidden"], dtype=np.float32)
            if "sample_rows" in data.files:  # stored once per distinct state; older records hold every row
                rows = np.asarray(data["sample_rows"])
                if (
                    rows.ndim != 1
                    or rows.dtype.kind not in "iu"
                    or (rows.size and not 0 <= rows.min() <= rows.max() < len(samples))
                ):
                    raise RecordError("sample_rows do not index the stored sample states")
                samples = samples[rows]
            record = QuestionRecord(
                answer_hidden=np.asarray(data["answer_hidden"], dtype=np.float32), sample_hidden=samples, **meta
            )
    except RecordError:
        raise
    except FileNotFoundError as err:
        raise RecordError("the file is gone") from err
    except zipfile.BadZipFile as err:
        raise RecordError(f"a truncated or damaged .npz ({err})") from err
    except Exception as err:  # noqa: BLE001 - a damaged file fails in numpy's, zipfile's, zlib's or json's ways
        raise RecordError(f"{type(err).__name__}: {str(err)[:120] or 'unreadable'}") from err
    problem = record.problem()
    if problem:
        raise RecordError(problem)
    return record


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record file that cannot be read, and why (it is regenerated by the next generation)."""

    index: int
    reason: str


# A record file's path -> (its stat stamp, why it is unreadable or None): each version of a file is read
# once per process to be judged, so listing runs stays cheap.
_JUDGED: dict[str, tuple[tuple[int, int, int], str | None]] = {}


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _load_judged(path: Path) -> QuestionRecord:
    """The record (RecordError at once when this version of its file is known unreadable); remembers the verdict."""
    stamp = _stamp(path)
    if stamp is None:
        raise RecordError("the file is gone")
    known = _JUDGED.get(str(path))
    if known is not None and known[0] == stamp and known[1] is not None:
        raise RecordError(known[1])
    try:
        record = record_from_file(path)
    except RecordError as err:
        _JUDGED[str(path)] = (stamp, str(err))
        raise
    _JUDGED[str(path)] = (stamp, None)
    return record


def _problem(path: Path) -> str | None:
    """Why a record file is unreadable (None when it reads), judged once per version of the file."""
    known = _JUDGED.get(str(path))
    if known is not None and known[0] == _stamp(path):
        return known[1]
    try:
        _load_judged(path)
    except RecordError as err:
        return str(err)
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:  # a zombie (killed, not yet reaped) writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def clean_stale_temporaries(folder: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the `atomic_write` temporaries in a run folder and its records/ that no one will finish:
    written by a process that is gone, or older than `max_age` seconds. Returns the removed paths."""
    removed = []
    now = time.time()
    for directory in (folder, folder / "records"):
        for path in directory.glob(".*.tmp") if directory.is_dir() else ():
            match = _TEMP_NAME.match(path.name)
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if age > max_age or (match is not None and not _pid_alive(int(match.group(1)))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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

    # -- claim
    @contextlib.contextmanager
    def claim(self, what: str = "written") -> Iterator[None]:
        """The run store's claim; once held, temporaries that no one will finish are removed."""
        with super().claim(what):
            clean_stale_temporaries(self.path)
            yield

    # -- records
    def record_path(self, index: int) -> Path:
        return self.path / "records" / f"{index:06d}.npz"

    def _record_files(self, limit: int | None = None) -> list[tuple[int, Path]]:
        """(index, path) of every record file (readable or not) of the first `limit` questions, ascending."""
        folder = self.path / "records"
        out = []
        for path in folder.glob("*.npz") if folder.is_dir() else []:
            try:
                index = int(path.stem)
            except ValueError:
                continue
            if limit is None or index < limit:
                out.append((index, path))
        return sorted(out)

    def done_indices(self) -> list[int]:
        """Indices of the questions with a readable saved record, ascending (an unreadable one is not done)."""
        return [index for index, path in self._record_files() if _problem(path) is None]

    def bad_records(self, limit: int | None = None) -> list[BadRecord]:
        """Record files that cannot be read, with the reason: not done, regenerated by the next generation."""
        out = []
        for index, path in self._record_files(limit):
            problem = _problem(path)
            if problem is not None:
                out.append(BadRecord(index, problem))
        return out

    def done(self, limit: int | None = None) -> int:
        """How many of the first `limit` questions (all by default) have a readable record."""
        return len([i for i in self.done_indices() if limit is None or i < limit])

    def write_record(self, index: int, record: QuestionRecord) -> None:
        path = self.record_path(index)
        atomic_write(path, record_to_bytes(record))
        stamp = _stamp(path)
        if stamp is not None:
            _JUDGED[str(path)] = (stamp, None)  # written from a whole record: readable

    def load_records(self, limit: int | None = None) -> list[QuestionRecord]:
        """Readable saved records in question order (the first `limit` questions only, when given);
        unreadable ones are left out (see `bad_records`)."""
        records = []
        for _, path in self._record_files(limit):
            try:
                records.append(_load_judged(path))
            except RecordError:
                continue
        return records

    # -- marks and judges: rows of the lab's state database (one transaction per change, no lost update)
    def _import_legacy(self, name: str, rows: Callable[[dict], None]) -> None:
        """Move a JSON file of marks / verdicts written by an earlier lab version into the database, once."""
        path = self.path / name
        if path.is_file():
            data = read_json(path, {})
            if isinstance(data, dict):
                rows(data)
            with contextlib.suppress(OSError):
                path.rename(path.with_name(path.name + ".imported"))

    def marks(self) -> dict[str, bool]:
        """Manual marks: question id -> right (True) / wrong (False)."""
        db = lab_db()
        self._import_legacy(
            "marks.json",
            lambda data: db.set_marks(
                TOPIC,
                self.run_id,
                {
                    str(k): bool(v)
                    for k, v in data.items()
                    if v is not None and str(k) not in db.marks(TOPIC, self.run_id)
                },
            ),
        )
        return db.marks(TOPIC, self.run_id)

    def save_marks(self, changes: dict[str, bool | None]) -> None:
        """Set the given marks (None clears one); marks of other ids are kept, even when another session
        or process saves its own at the same moment."""
        self.marks()  # imports a legacy marks.json first
        lab_db().set_marks(TOPIC, self.run_id, {str(k): v for k, v in changes.items()})

    def llm_verdicts(self, judge_model: str) -> dict[str, bool | None]:
        """Saved LLM-judge verdicts of `judge_model`: question id -> right / wrong / None (ungraded)."""
        db = lab_db()

        def rows(data: dict) -> None:
            for judge, verdicts in data.items():
                if isinstance(verdicts, dict):
                    db.set_verdicts(TOPIC, self.run_id, str(judge), {str(q): v for q, v in verdicts.items()})

        self._import_legacy("judge_llm.json", rows)
        return db.verdicts(TOPIC, self.run_id, judge_model)

    def save_llm_verdicts(self, judge_model: str, verdicts: dict[str, bool | None]) -> None:
        """Add verdicts of `judge_model` to the saved ones (others' concurrent saves are kept)."""
        self.llm_verdicts(judge_model)
        lab_db().set_verdicts(TOPIC, self.run_id, judge_model, verdicts)

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


def _located(
    model_name: str, questions: pd.DataFrame, generation: GenerationConfig, n_layers: int | None
) -> tuple[GenerationConfig, dict, UqRun]:
    """(the config with its hidden layers resolved, the run's key, the run these inputs name)."""
    generation.validate()
    if not generation.hidden_layers and n_layers is not None:
        generation = dataclasses.replace(generation, hidden_layers=default_hidden_layers(n_layers))
    key = run_key(model_name, generation, questions_hash(questions))
    return generation, key, UqRun(STORE.folder(STORE.run_id(key)).path)


def run_for(
    model_name: str, questions: pd.DataFrame, generation: GenerationConfig, *, n_layers: int | None = None
) -> UqRun:
    """The run these inputs name, without making its folder: a server records its owner before `open_run`
    makes it, so no other person ever lists a half-made run as no one's."""
    return _located(model_name, questions, generation, n_layers)[2]


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
    generation, key, run = _located(model_name, questions, generation, n_layers)
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
                "questions_hash": key["questions"],
                "n_questions": len(questions),
                "source": source,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
    clean_stale_temporaries(run.path)
    return run


def list_runs() -> list[UqRun]:
    """Saved runs, newest first."""
    return [UqRun(run.path) for run in STORE.list()]


def stray_runs() -> list[RunFolder]:
    """Folders in cache/uq/ that are no readable run (half-created, or from an older version): deletable."""
    return STORE.strays()


def get_run(run_id: str) -> UqRun:
    """A saved run; LabError for a malformed or unknown id."""
    run = UqRun(STORE.get(run_id).path)
    clean_stale_temporaries(run.path)
    return run


def delete_run(run: str | RunFolder) -> None:
    """Delete a run (or a stray folder); LabError while it is being generated (its claim is held)."""
    STORE.delete(run)
