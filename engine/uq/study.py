"""The uncertainty study at the seed's scale: is decomposing hidden states into semantic and surface
subspaces useful for reducing errors?

`run_study` answers it on two question sets with one model: a seeded sample of `webquestions` questions
(default 1000) of WebQuestions' test split (../shared/data/webquestions_test.csv, engine.core.paths.
shared_data_dir) and the bundled set (engine/data, 265 questions). Per set it opens the saved run for
(model, generation settings, questions) in the run store, so an interrupted study resumes question by
question in a later call or session, generates what is missing (engine.uq.generation), evaluates it
(engine.uq.evaluation: every score, paired differences, the verdict under each judge), writes each set's
results.csv / summary.json / summary.md, and finally the report (engine.uq.report: summary.md and PNG
figures) in `out`. `study.json` in `out` names the runs, so `report_only` rebuilds the report from the
cached runs alone: no model, no generation. When the report folder holds the exploration run's blind hand
marks (`hand_marks/marks.csv`, or the file `hand_marks` names), the report grades the judges and the
contrasts by them (engine.uq.marked_contrasts.check_hand_marks).

The sample: `numpy.random.default_rng(sample_seed).choice(n_rows, webquestions, replace=False)`, kept in
the file's order; `limit` takes the first N questions of each set (a quick end-to-end check: the same
runs, so a later full study resumes them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.core.embedded import EMBEDDED_LM
from engine.core.embedder import load_embedder
from engine.core.errors import LabError
from engine.core.executor import ExecutorConfig
from engine.core.loading import load_model
from engine.core.model import LoadedModel
from engine.core.options import option, shell_command, to_flags
from engine.core.paths import atomic_write, shared_data_dir
from engine.core.provenance import machine, utc_now
from engine.uq import confirmation, export, handmarks, questions, report
from engine.uq.config import CLI_FOLD_SEEDS, BatchOptions, EvalOptions, GenerationConfig
from engine.uq.distributed import ShardOptions
from engine.uq.evaluation import Evaluation, entailment_judge, evaluate_run
from engine.uq.generator import Generator
from engine.uq.marked_contrasts import HandMarkCheck, check_hand_marks
from engine.uq.store import UqRun, get_run

WEBQUESTIONS_FILE = "webquestions_test.csv"
HAND_MARKS = "hand_marks/marks.csv"  # in the report folder: the exploration run's blind hand marks
MANIFEST = "study.json"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study runs (the generation and grading settings are GenerationConfig and EvalOptions)."""

    webquestions: int = option(
        1000, "WebQuestions test questions in the study: a seeded sample of ../shared/data/" + WEBQUESTIONS_FILE
    )
    sample_seed: int = option(0, "seed of the WebQuestions sample (numpy default_rng(seed).choice, file order kept)")
    bundled: bool = option(True, "also run the bundled question set (engine/data, 265 questions)")
    limit: int | None = option(None, "only the first N questions of each set (a quick end-to-end check)")
    out: str = option("reports/uq", "report folder: summary.md, figures/, one folder per question set")
    model: str = option(EMBEDDED_LM, "model name, HF id or folder (a bigger one on a GPU: see the report)")
    report_only: bool = option(
        False, "rebuild the report from the cached runs named in OUT/study.json (no model, no generation)"
    )
    confirm: bool = option(
        False,
        "the confirmation stage: generate the WebQuestions test questions the exploration sample leaves out, fit on "
        "the exploration questions, test the contrast fixed in OUT/" + confirmation.PLAN + " once",
    )
    contrast: str = option("", "with --confirm: the contrast to confirm (refused unless it is the fixed one)")
    hand_marks: str = option(
        "",
        "hand marks of the exploration run (CSV: question_id, answer, mark) the report grades the judges and the "
        f"contrasts by; default OUT/{HAND_MARKS} when it exists, 'none' to leave them out",
    )

    def validate(self) -> None:
        if self.webquestions < 0:
            raise LabError("--webquestions must be 0 or more.")
        if self.limit is not None and self.limit < 1:
            raise LabError("--limit must be at least 1.")
        if self.webquestions == 0 and not self.bundled:
            raise LabError("Nothing to study: no WebQuestions (--webquestions 0) and --no-bundled.")


@dataclasses.dataclass
class StudySet:
    """One question set of the study and its saved run."""

    name: str  # folder name in the report: "webquestions" | "bundled"
    title: str
    description: str  # how the questions were chosen (the report states it)
    run_id: str
    total: int  # questions evaluated (the first `total` of the run)
    generation_seconds: float = 0.0  # spent generating in this call


def webquestions_sample(n: int, seed: int) -> tuple[questions.QuestionSet, str]:
    """The seeded sample of WebQuestions' test split and a sentence stating how it was drawn."""
    folder = shared_data_dir()
    path = folder / WEBQUESTIONS_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise LabError(
            f"The study needs {WEBQUESTIONS_FILE} (WebQuestions test split, CC-BY 4.0) in ../shared/data beside "
            "the checkout, or in the folder LAB_SHARED_DATA names; it is not there. Pass --webquestions 0 to run "
            "the bundled set only."
        )
    qset = questions.load_question_file(path)
    frame = qset.frame
    n = min(n, len(frame))
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    sample = dataclasses.replace(qset, frame=frame.iloc[rows].reset_index(drop=True))
    text = (
        f"{n} of the {len(frame)} questions of WebQuestions' test split ({WEBQUESTIONS_FILE}), drawn without "
        f"replacement by numpy default_rng({seed}).choice and kept in file order"
    )
    return sample, text


def webquestions_confirmation(n: int, seed: int) -> tuple[questions.QuestionSet, str]:
    """The questions of WebQuestions' test split that `webquestions_sample(n, seed)` leaves out (file
    order): the confirmation set, never used to choose a contrast, and a sentence stating how it was made."""
    folder = shared_data_dir()
    path = folder / WEBQUESTIONS_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise LabError(f"The confirmation stage needs {WEBQUESTIONS_FILE} in ../shared/data beside the checkout.")
    qset = questions.load_question_file(path)
    frame = qset.frame
    n = min(n, len(frame))
    used = np.random.default_rng(seed).choice(len(frame), size=n, replace=False)
    rows = np.setdiff1d(np.arange(len(frame)), used)
    rest = dataclasses.replace(qset, frame=frame.iloc[rows].reset_index(drop=True))
    text = (
        f"the {len(rows)} questions of WebQuestions' test split ({WEBQUESTIONS_FILE}) not in the exploration "
        f"sample (default_rng({seed}).choice of {n}), in file order"
    )
    return rest, text


def _question_sets(config: StudyConfig) -> list[tuple[str, str, questions.QuestionSet, str]]:
    sets = []
    if config.webquestions:
        sample, text = webquestions_sample(config.webquestions, config.sample_seed)
        sets.append(("webquestions", "WebQuestions (test split, seeded sample)", sample, text))
    if config.bundled:
        bundled = questions.default_questions()
        text = f"the lab's bundled set, all {len(bundled.frame)} questions (engine/data)"
        sets.append(("bundled", "Bundled question set", bundled, text))
    return sets


def command_line(config: StudyConfig, generation: GenerationConfig, options: EvalOptions, batch: BatchOptions) -> str:
    """The CLI call that reproduces these settings: `python -m engine uq-study` and each non-default flag
    (the evaluation's seed is the generation's: `uq-study` has one --seed; its fold seeds default to the command
    line's CLI_FOLD_SEEDS, not the page's)."""
    flags = [
        to_flags(config),
        to_flags(generation),
        to_flags(options, skip=("seed",), defaults={"n_seeds": CLI_FOLD_SEEDS}),
        to_flags(batch),
    ]
    return shell_command("python -m engine uq-study", *flags)


def _write_manifest(out: Path, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))


def read_manifest(out: Path) -> dict:
    """The last study's manifest in `out` (LabError when there is none)."""
    path = Path(out) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LabError(
            f"No study in {out} ({MANIFEST} missing or unreadable): run `python -m engine uq-study`."
        ) from err
    if manifest.get("version") != MANIFEST_VERSION:
        raise LabError(f"{path} is from another version of the lab: run the study again.")
    return manifest


def _generator(
    config: StudyConfig, batch: BatchOptions, executor: ExecutorConfig | None, shards: ShardOptions, total: int
) -> Generator:
    """The study's generation on its executor (engine.uq.generator): the model here, or on Ray workers."""
    return Generator(
        config.model,
        executor,
        total=total,
        batch_questions=batch.batch_questions,
        shard_questions=shards.shard_questions,
    )


def generate(
    config: StudyConfig,
    generation: GenerationConfig,
    options: EvalOptions,
    batch: BatchOptions,
    log: Callable[[str], None] = print,
    executor: ExecutorConfig | None = None,
    shards: ShardOptions = ShardOptions(),
) -> tuple[LoadedModel | None, list[StudySet]]:
    """Generate what is missing of each set's run (resumable) on `executor` (default: this process, which
    loads the model; ray: Ray workers, and this process loads none); writes study.json. Returns the model
    when this process loaded it, and the sets."""
    sets = _question_sets(config)
    largest = max(len(qset.frame) for _, _, qset, _ in sets)
    total_hint = min(largest, config.limit) if config.limit else largest
    out, done = Path(config.out), []
    with _generator(config, batch, executor, shards, total_hint) as generator:
        log(f"generating on {generator.where}")
        generation = dataclasses.replace(generation, prompt_template=generator.facts["template"])
        for name, title, qset, description in sets:
            run = generator.open_run(qset.frame, generation, source=f"{name}: {qset.source}")
            total = run.total(config.limit)
            already, start = run.done(total), time.perf_counter()
            log(f"{name}: run {run.run_id}, {already}/{total} questions already generated")

            def progress(count: int, total_: int, message: str, name=name, already=already, start=start) -> None:
                rate = 60 * (count - already) / max(time.perf_counter() - start, 1e-9)
                log(f"{name}: {count}/{total_} questions ({rate:.1f}/min){message.partition(' questions')[2]}")

            generator.generate(run, total, progress)
            done.append(StudySet(name, title, description, run.run_id, total, time.perf_counter() - start))
        _write_manifest(
            out,
            {
                "version": MANIFEST_VERSION,
                "command": command_line(config, generation, options, batch),
                "config": dataclasses.asdict(config),
                "generation": {k: v for k, v in dataclasses.asdict(generation).items() if k != "prompt_template"},
                "prompt_template": generation.prompt_template,
                "options": dataclasses.asdict(options),
                "sets": [dataclasses.asdict(s) for s in done],
                "machine": machine(generator.facts["device"]),
                "executor": generator.where,
                "written": utc_now(),
            },
        )
    return generator.lm, done


def evaluate(
    manifest: dict, options: EvalOptions, lm: LoadedModel | None = None, log: Callable[[str], None] = print
) -> list[tuple[StudySet, UqRun, Evaluation]]:
    """Each set's cached run evaluated with `options` (the first `total` questions)."""
    embedder = load_embedder()
    if options.lm_entailment and lm is None:
        lm = load_model(get_run(manifest["sets"][0]["run_id"]).model)
    out = []
    for entry in manifest["sets"]:
        study_set = StudySet(**entry)
        run = get_run(study_set.run_id)
        if run.done(study_set.total) < study_set.total:
            raise LabError(
                f"Run {run.run_id} ({study_set.name}) has {run.done(study_set.total)} of {study_set.total} questions: "
                "run the study again (it resumes) before writing the report."
            )
        log(f"{study_set.name}: scoring {study_set.total} questions")
        out.append((study_set, run, evaluate_run(run, embedder, options, limit=study_set.total, lm=lm)))
    return out


def run_confirmation(
    config: StudyConfig,
    generation: GenerationConfig,
    options: EvalOptions,
    batch: BatchOptions,
    log: Callable[[str], None] = print,
    executor: ExecutorConfig | None = None,
    shards: ShardOptions = ShardOptions(),
) -> list[Path]:
    """The confirmation stage (engine.uq.confirmation): generate what is missing of the confirmation run
    (resumable) on `executor` (as `generate`), fit on the exploration run, test the fixed contrast once,
    rewrite the report."""
    out = Path(config.out)
    plan = confirmation.read_plan(out)
    confirmation.check_request(plan, out, config.contrast)
    manifest = read_manifest(out)
    options = dataclasses.replace(options, seed=manifest["generation"]["seed"])
    explore_entry = next((e for e in manifest["sets"] if e["name"] == "webquestions"), None)
    if explore_entry is None or explore_entry["run_id"] != plan["exploration"]["run_id"]:
        raise LabError(f"The study in {out} does not name the exploration run the plan was fixed on.")
    start = time.perf_counter()
    qset, description = webquestions_confirmation(config.webquestions, config.sample_seed)
    total_hint = min(len(qset.frame), config.limit) if config.limit else len(qset.frame)
    with _generator(config, batch, executor, shards, total_hint) as generator:
        generation = dataclasses.replace(generation, prompt_template=generator.facts["template"])
        run = generator.open_run(qset.frame, generation, source=f"confirmation: {qset.source}")
        total = run.total(config.limit)
        log(f"confirmation: run {run.run_id}, {run.done(total)}/{total} questions already generated")
        generator.generate(run, total)
    generated = time.perf_counter() - start
    explore = get_run(explore_entry["run_id"])
    log(f"confirmation: fitting on {explore_entry['total']} exploration questions, testing on {total}")
    result = confirmation.confirm_contrast(
        explore.load_records(explore_entry["total"]),
        run.load_records(total),
        plan["contrast"],
        options,
        load_embedder(),
        marks=(explore.marks(), run.marks()),
    )
    result.update(
        run_id=run.run_id,
        exploration_run_id=explore.run_id,
        description=description,
        seconds={"generation": generated, "test": time.perf_counter() - start - generated},
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    paths = [confirmation.write_result(out, result)]
    log(result["sentence"])
    return paths


def hand_marks_path(config: StudyConfig) -> Path | None:
    """The marks file the report reads: `config.hand_marks`, else OUT/HAND_MARKS when it exists; None for
    'none' or when there is no default file (a named file that does not exist is a LabError)."""
    if config.hand_marks.strip().lower() == "none":
        return None
    if config.hand_marks.strip():
        path = Path(config.hand_marks)
        if not path.is_file():
            raise LabError(f"No hand marks file {path}: name an existing marks CSV, or --hand-marks none.")
        return path
    path = Path(config.out) / HAND_MARKS
    return path if path.is_file() else None


def check_exploration_marks(
    path: Path, evaluations: list[tuple[StudySet, UqRun, Evaluation]], options: EvalOptions
) -> HandMarkCheck | None:
    """The WebQuestions (exploration) run against the marks in `path` (engine.uq.marked_contrasts.
    check_hand_marks, the sample drawn with MarkSample's defaults, as the marking view and `uq-marks` do);
    None without a WebQuestions set."""
    found = next(((s, e) for s, _r, e in evaluations if s.name == "webquestions"), None)
    if found is None:
        return None
    _set, evaluation = found
    answers, verdicts = handmarks.judge_verdicts(evaluation.records, options, load_embedder())
    results = evaluation.results.set_index("id")
    return check_hand_marks(
        handmarks.read_marks(path),
        answers,
        verdicts,
        results,
        marks_path=str(path),
        judge=results["correct"],
        judge_name=options.judge,
        usual=options.usual,
        semantic=options.semantic,
    )


def run_study(
    config: StudyConfig,
    generation: GenerationConfig,
    options: EvalOptions,
    batch: BatchOptions,
    log: Callable[[str], None] = print,
    executor: ExecutorConfig | None = None,
    shards: ShardOptions = ShardOptions(),
) -> list[Path]:
    """Generate (unless `report_only`) on `executor` (default: this process; ray: Ray workers), evaluate
    and write the report; returns the files written. With `confirm`: the confirmation stage
    (`run_confirmation`) instead, then the report again."""
    config.validate()
    if executor is not None:
        executor.validate()
    if config.confirm:
        paths = run_confirmation(config, generation, options, batch, log, executor, shards)
        config = dataclasses.replace(config, confirm=False, report_only=True)
        return paths + run_study(config, generation, options, batch, log)
    if options.nli_model:
        entailment_judge(options)  # a missing NLI model says so before any generation
    out = Path(config.out)
    marks_path = hand_marks_path(config)  # a named file that is missing says so before any work
    start = time.perf_counter()
    lm = None
    if not config.report_only:
        lm, _ = generate(dataclasses.replace(config, out=str(out)), generation, options, batch, log, executor, shards)
    manifest = read_manifest(out)
    if config.report_only:
        options = dataclasses.replace(options, seed=manifest["generation"]["seed"])
    generated = time.perf_counter() - start
    evaluations = evaluate(manifest, options, lm if options.lm_entailment else None, log)
    paths = []
    for study_set, _run, evaluation in evaluations:
        paths += export.write_outputs(evaluation, out / study_set.name)
    whole = config.limit is None and (manifest.get("config") or {}).get("limit") is None  # never from a --limit check
    for study_set, run, evaluation in evaluations:
        if study_set.name == "webquestions" and whole and evaluation.summary.contrasts:
            s = evaluation.summary
            confirmation.fix_contrast(out, s.contrasts, run_id=run.run_id, n=s.n, judge=s.judge)
            paths.append(out / confirmation.PLAN)
    hand_marks = None if marks_path is None else check_exploration_marks(marks_path, evaluations, options)
    paths += report.write_report(
        out,
        manifest,
        [(s, e) for s, _r, e in evaluations],
        seconds={"generation_this_call": generated, "scoring_and_report": time.perf_counter() - start - generated},
        report_machine=machine(),
        hand_marks=hand_marks,
    )
    return paths
