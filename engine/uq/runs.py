"""Runs of the uncertainty experiment: a resumable store on disk, the generation loop, evaluation.

A run lives in `cache/uq/<run_id>/` where run_id hashes (model, generation config, question-set hash),
so the same inputs resume the same run: `config.json`, `questions.jsonl`, `records/<index>.npz` (one
per question, written to a temp file then `os.replace`d: a killed process never leaves half a record),
`marks.json` (manual marks), `judge_llm.json` (LLM-judge verdicts), `scores/<key>.json` (cached scores).
`evaluate_run` turns a run into the results table, A1/A2/A3 and every score's metrics, the same for
the page and the CLI given the same options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.paths import atomic_write, cache_dir
from engine.uq import correctness
from engine.uq.generation import GenerationConfig, default_hidden_layers, generate_record, n_layers_of
from engine.uq.records import QuestionRecord

TOPIC = "uq"
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


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=True).encode("utf-8"))


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


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
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return QuestionRecord(answer_hidden=data["answer_hidden"], sample_hidden=data["sample_hidden"], **meta)


# ------------------------------------------------------------------------------------------------
# The store


def run_id_for(model_name: str, generation: GenerationConfig, questions_hash: str) -> str:
    """Hash of everything that determines the generated text: same inputs -> same run (resume)."""
    key = json.dumps(
        {"model": model_name, "generation": dataclasses.asdict(generation), "questions": questions_hash}, sort_keys=True
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class RunStore:
    """One run's folder; safe to read while another thread appends records."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_id = self.path.name

    # -- config and questions
    @property
    def config(self) -> dict:
        return _read_json(self.path / "config.json", {})

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(**self.config["generation"])

    def questions(self) -> pd.DataFrame:
        path = self.path / "questions.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pd.DataFrame(rows, columns=["id", "question", "references"])

    # -- records
    def record_path(self, index: int) -> Path:
        return self.path / "records" / f"{index:06d}.npz"

    def done_indices(self) -> list[int]:
        folder = self.path / "records"
        out = []
        for path in folder.glob("*.npz") if folder.is_dir() else []:
            try:
                out.append(int(path.stem))
            except ValueError:
                continue
        return sorted(out)

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
        return {str(k): bool(v) for k, v in _read_json(self.path / "marks.json", {}).items() if v is not None}

    def save_marks(self, marks: dict[str, bool | None]) -> None:
        _write_json(self.path / "marks.json", {str(k): bool(v) for k, v in marks.items() if v is not None})

    def llm_verdicts(self, judge_model: str) -> dict[str, bool | None]:
        return _read_json(self.path / "judge_llm.json", {}).get(judge_model, {})

    def save_llm_verdicts(self, judge_model: str, verdicts: dict[str, bool | None]) -> None:
        data = _read_json(self.path / "judge_llm.json", {})
        data.setdefault(judge_model, {}).update(verdicts)
        _write_json(self.path / "judge_llm.json", data)

    def summary(self) -> dict:
        cfg = self.config
        return {
            "run_id": self.run_id,
            "model": cfg.get("model"),
            "source": cfg.get("source"),
            "n_questions": cfg.get("n_questions"),
            "done": len(self.done_indices()),
            "samples": cfg.get("generation", {}).get("samples"),
            "seed": cfg.get("generation", {}).get("seed"),
            "created": cfg.get("created"),
        }


def runs_root() -> Path:
    return cache_dir(TOPIC)


def open_run(
    model_name: str,
    questions: pd.DataFrame,
    generation: GenerationConfig,
    *,
    source: str = "",
    n_layers: int | None = None,
) -> RunStore:
    """The run for these inputs, created when new (resumed otherwise). Hidden layers are resolved first."""
    from engine.uq.questions import questions_hash

    generation.validate()
    if not generation.hidden_layers and n_layers is not None:
        generation = dataclasses.replace(generation, hidden_layers=default_hidden_layers(n_layers))
    qhash = questions_hash(questions)
    run_id = run_id_for(model_name, generation, qhash)
    store = RunStore(runs_root() / run_id)
    if not (store.path / "config.json").exists():
        (store.path / "records").mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps({"id": q, "question": t, "references": list(r)}, ensure_ascii=False)
            for q, t, r in zip(questions["id"], questions["question"], questions["references"])
        ]
        atomic_write(store.path / "questions.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        _write_json(
            store.path / "config.json",
            {
                "model": model_name,
                "generation": dataclasses.asdict(generation),
                "questions_hash": qhash,
                "n_questions": len(questions),
                "source": source,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
    return store


def open_run_for(lm, questions: pd.DataFrame, generation: GenerationConfig, source: str = "") -> RunStore:
    return open_run(lm.name, questions, generation, source=source, n_layers=n_layers_of(lm))


def list_runs() -> list[dict]:
    """Saved runs, newest first (summary dicts)."""
    root = runs_root()
    stores = [RunStore(p) for p in root.iterdir() if (p / "config.json").is_file()]
    return sorted((s.summary() for s in stores), key=lambda s: s.get("created") or "", reverse=True)


def get_run(run_id: str) -> RunStore:
    if not run_id or not all(c in "0123456789abcdef" for c in run_id):
        raise LabError(f"Not a run id: {run_id!r}")
    store = RunStore(runs_root() / run_id)
    if not (store.path / "config.json").is_file():
        raise LabError(f"No saved run {run_id}.")
    return store


def delete_run(run_id: str) -> None:
    store = get_run(run_id)
    job = JOBS.get(run_id)
    if job is not None and job.running:
        raise LabError("This run is generating: stop it before deleting it.")
    shutil.rmtree(store.path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Generation loop (resumable) and background jobs


def generate_run(lm, store: RunStore, *, limit: int | None = None, progress=None, stop=None) -> int:
    """Generate the missing records of the first `limit` questions; returns how many were written.

    Each question's record is written as soon as it is done, so a stop / crash loses at most the
    question in flight. `progress(done, total, last_seconds)` after each; `stop`: threading.Event.
    """
    config = store.generation_config()
    if store.config.get("model") != lm.name:
        raise LabError(f"This run was made with {store.config.get('model')}, not {lm.name}: load that model.")
    questions = store.questions()
    total = len(questions) if limit is None else min(int(limit), len(questions))
    done = set(store.done_indices())
    written = 0
    for index in range(total):
        if index in done:
            continue
        if stop is not None and stop.is_set():
            break
        row = questions.iloc[index]
        record = generate_record(lm, row["question"], config, qid=row["id"], references=row["references"], index=index)
        store.write_record(index, record)
        written += 1
        done.add(index)
        if progress is not None:
            progress(len([i for i in done if i < total]), total, record.seconds)
    return written


@dataclasses.dataclass
class Job:
    """A background generation of one run (one per run id per process)."""

    run_id: str
    total: int
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    seconds: list = dataclasses.field(default_factory=list)  # per generated question
    error: str | None = None
    finished: bool = False
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def eta_seconds(self) -> float | None:
        if not self.seconds:
            return None
        recent = self.seconds[-20:]
        return float(np.mean(recent)) * max(self.total - self.done, 0)


JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()


def start_job(lm, store: RunStore, limit: int | None = None) -> Job:
    """Generate in a background thread (idempotent: an already running job of this run is returned)."""
    with _JOBS_LOCK:
        job = JOBS.get(store.run_id)
        if job is not None and job.running:
            return job
        total = len(store.questions()) if limit is None else min(int(limit), len(store.questions()))
        job = Job(store.run_id, total, done=len([i for i in store.done_indices() if i < total]))

        def progress(done, total_, seconds):
            job.done = done
            job.seconds.append(seconds)

        def work():
            try:
                generate_run(lm, store, limit=total, progress=progress, stop=job.stop)
            except LabError as err:
                job.error = str(err)
            except Exception as err:  # noqa: BLE001 - shown on the page, the run stays resumable
                job.error = f"{type(err).__name__}: {err}"
            finally:
                job.finished = True

        job.thread = threading.Thread(target=work, name=f"uq-run-{store.run_id}", daemon=True)
        JOBS[store.run_id] = job
        job.thread.start()
        return job


# ------------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class EvalOptions:
    judge: str = "auto"  # contains | f1 | auto | embedding | llm
    f1_threshold: float = correctness.F1_THRESHOLD
    embedding_threshold: float = correctness.EMBEDDING_THRESHOLD
    judge_model: str = ""  # for "llm": whose saved verdicts to use (default: the run's model)
    usual: str = "mean_token_nll"
    semantic: str = "semantic_entropy"
    n_boot: int = 1000
    seed: int = 0
    n_folds: int = 5
    cluster_threshold: float = 0.8
    layer: int | None = None  # stored hidden layer for EigenScore / SEP / subspace (None: the middle one)


@dataclasses.dataclass
class Evaluation:
    results: pd.DataFrame  # one row per question: id, question, reference, answer, correct, judges, scores
    summary: dict  # comparison() + run / judge info + agreement
    curves: pd.DataFrame  # rejection curves
    clusters: dict[str, list[int]]
    info: dict
    agreement: pd.DataFrame
    records: list[QuestionRecord]


def _score_cache_key(records: list[QuestionRecord], options: EvalOptions) -> str:
    from engine.uq import estimators

    key = json.dumps(
        [
            [r.id for r in records],
            options.n_folds,
            options.seed,
            options.cluster_threshold,
            estimators.SCORES_VERSION,
            options.layer,
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def score_run(store: RunStore | None, records: list[QuestionRecord], embedder, options: EvalOptions):
    """`estimators.score_records` on the records, cached in the run folder (scores depend on records only)."""
    from engine.uq.estimators import ScoreResult, score_records

    path = store.path / "scores" / f"{_score_cache_key(records, options)}.json" if store is not None else None
    if path is not None and path.is_file():
        cached = _read_json(path, None)
        if cached:
            scores = pd.read_json(io.StringIO(cached["scores"]), orient="split")
            scores.index = scores.index.astype(str)
            scores.index.name = "id"
            return ScoreResult(scores, cached["clusters"], cached["info"])
    result = score_records(
        records,
        embedder,
        n_folds=options.n_folds,
        seed=options.seed,
        threshold=options.cluster_threshold,
        layer=options.layer,
    )
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        _write_json(
            path,
            {
                "scores": result.scores.to_json(orient="split", double_precision=15),
                "clusters": result.clusters,
                "info": _jsonable(result.info),
            },
        )
    return result


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def evaluate_records(
    records: list[QuestionRecord],
    embedder,
    options: EvalOptions | None = None,
    *,
    marks: dict[str, bool] | None = None,
    llm_verdicts: dict | None = None,
    store: RunStore | None = None,
) -> Evaluation:
    """Results table, A1/A2/A3 and every score's metrics for these records (the page and the CLI)."""
    from engine.uq.metrics import comparison, rejection_curves

    options = options or EvalOptions()
    if options.judge not in correctness.JUDGES:
        raise LabError(f"Unknown judge '{options.judge}': choose one of {', '.join(correctness.JUDGES)}.")
    if not records:
        raise LabError("No generated answers yet: run generation first.")
    marks = marks or {}
    ids = [r.id for r in records]
    auto = correctness.grade_automatic(
        [r.answer for r in records],
        [r.references for r in records],
        f1_threshold=options.f1_threshold,
        embedder=embedder,
        embedding_threshold=options.embedding_threshold,
    )
    auto.index = pd.Index(ids, name="id")
    if llm_verdicts:
        auto["llm"] = [llm_verdicts.get(i) for i in ids]
    if options.judge == "llm" and "llm" not in auto.columns:
        raise LabError("No LLM-judge verdicts for this run yet: run the LLM judge first.")
    verdict = auto[options.judge]
    final = correctness.apply_marks(verdict, marks)
    ungraded = final.isna()
    if ungraded.all():
        raise LabError("No answer can be graded: the set has no reference answers and nothing is marked by hand.")
    result = score_run(store, records, embedder, options)
    scores = result.scores.loc[ids]
    graded = ~ungraded.to_numpy()
    correct = final[graded].astype(bool)
    comp = comparison(
        scores[graded],
        correct.to_numpy(),
        usual=options.usual,
        semantic=options.semantic,
        kinds=result.kinds,
        n_boot=options.n_boot,
        seed=options.seed,
    )
    curves = rejection_curves(scores[graded], correct.to_numpy())
    judge_cols = [c for c in ("contains", "f1_correct", "auto", "embedding", "llm") if c in auto.columns]
    judges = auto[judge_cols].copy()
    judges["manual"] = [marks.get(i) for i in ids]
    agree = correctness.agreement(judges)
    results = pd.DataFrame(
        {
            "id": ids,
            "question": [r.question for r in records],
            "reference": [" | ".join(r.references) for r in records],
            "answer": [r.answer for r in records],
            "correct": [None if pd.isna(v) else bool(v) for v in final],
            "manual": [marks.get(i) for i in ids],
            "judge": [None if pd.isna(v) else bool(v) for v in verdict],
            "f1": auto["f1"].to_numpy(),
        }
    )
    if "embedding_sim" in auto.columns:
        results["embedding_sim"] = auto["embedding_sim"].to_numpy()
    if "llm" in auto.columns:
        results["llm_judge"] = auto["llm"].to_numpy()
    for column in scores.columns:
        results[column] = scores[column].to_numpy()
    summary = dict(comp)
    summary.update(
        judge=options.judge,
        n_graded=int(graded.sum()),
        n_ungraded=int((~graded).sum()),
        n_manual=int(sum(i in marks for i in ids)),
        agreement=_jsonable(agree.to_dict(orient="records")),
        score_info=_jsonable({k: v for k, v in result.info.items() if k != "seconds"}),
    )
    if store is not None:
        summary["run"] = {
            "run_id": store.run_id,
            **{k: store.config.get(k) for k in ("model", "source", "questions_hash")},
            "generation": store.config.get("generation"),
        }
    return Evaluation(results, summary, curves, result.clusters, result.info, agree, records)


def evaluate_run(
    store: RunStore, embedder, options: EvalOptions | None = None, *, limit: int | None = None
) -> Evaluation:
    """evaluate_records on a saved run with its manual marks and saved LLM verdicts."""
    options = options or EvalOptions()
    records = store.load_records(limit)
    judge_model = options.judge_model or store.config.get("model", "")
    verdicts = store.llm_verdicts(judge_model)
    return evaluate_records(records, embedder, options, marks=store.marks(), llm_verdicts=verdicts or None, store=store)


def run_llm_judge(judge_lm, store: RunStore, *, limit: int | None = None, progress=None, stop=None) -> dict:
    """LLM-judge verdicts for the run's graded answers, saved in the run (keyed by the judge model)."""
    from engine.uq.correctness import llm_judge

    records = store.load_records(limit)
    saved = store.llm_verdicts(judge_lm.name)
    todo = [r for r in records if r.id not in saved]
    verdicts = llm_judge(
        judge_lm,
        [r.question for r in todo],
        [r.references for r in todo],
        [r.answer for r in todo],
        progress=progress,
        stop=stop,
    )
    new = {r.id: v for r, v in zip(todo, verdicts) if v is not None or not r.references}
    store.save_llm_verdicts(judge_lm.name, new)
    return {**saved, **new}


# ------------------------------------------------------------------------------------------------
# Exports


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells starting with = + - @ (or tab / CR) get a leading ' so spreadsheets never run them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v
            )
    return out


def results_csv(evaluation: Evaluation) -> bytes:
    return spreadsheet_safe(evaluation.results).to_csv(index=False).encode("utf-8")


def summary_json(evaluation: Evaluation) -> str:
    def clean(obj):
        if isinstance(obj, float) and math.isnan(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return json.dumps(clean(evaluation.summary), indent=2, ensure_ascii=False)


def summary_md(evaluation: Evaluation) -> str:
    from engine.uq.metrics import summary_markdown

    s = evaluation.summary
    head = ["# Semantic vs surface uncertainty", ""]
    run = s.get("run") or {}
    if run:
        gen = run.get("generation") or {}
        head.append(
            f"Model `{run.get('model')}`, questions `{run.get('source')}` (hash {run.get('questions_hash')}), "
            f"K = {gen.get('samples')} samples at T = {gen.get('temperature')}, seed {gen.get('seed')}, "
            f"run `{run.get('run_id')}`."
        )
    head.append(
        f"Judge: `{s.get('judge')}`; {s.get('n_graded')} graded questions ({s.get('n_manual')} marked by hand)."
    )
    head.append("")
    return "\n".join(head) + summary_markdown(s) + "\n"


def write_outputs(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """results.csv, summary.json and summary.md in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "summary.json", out / "summary.md"]
    atomic_write(paths[0], results_csv(evaluation))
    atomic_write(paths[1], summary_json(evaluation).encode("utf-8"))
    atomic_write(paths[2], summary_md(evaluation).encode("utf-8"))
    return paths
