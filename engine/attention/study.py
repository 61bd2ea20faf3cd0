"""The attention study: can the model explain its own heads better than external methods?

For every studied head of a model, five kinds of explainer each predict the head's attention on held-out
prompts, and every prediction is scored as self_explain.score_prediction does (top-1 agreement with the
real argmax, Pearson r of predicted and real weights; study_stats):
  self-text   the model's free-text explanation (self_explain.explain_head, on the description prompt),
              simulated by the model (self_explain.simulate_shared_prefix);
  self-rule   the library rule the model picks by its log-probabilities after reading the same
              description (self_rule), turned into weights exactly (rules.predict);
  detector    the library rule with the best top-1 on the train prompts (rules.fit_rule);
  probe       a logistic model on token features fitted on the train prompts (probe.fit_probe);
  controls    the simulator with no explanation (one run per held-out prompt, shared by all heads),
              another head's self-text prediction (a seeded derangement of the studied heads),
              always BOS, uniform over j <= i.

Prompts (`study_prompts`): texts of the lab's own data (engine/data: eval_text.txt prose cut into
sentence pairs, the bundled questions with their answers in pairs, the texts of attention_prompts.json:
code, lists, sentences) and sequences of RANDOM_LEN random word tokens repeated twice (induction
shows on the second copy). Each source is shuffled with the seed and dealt alternately to train and
held-out, so the two sets share no text; each set takes about 60% prose, 20% questions, 20% of the
attention prompts (prose makes up what a small source cannot give), plus `random` random sequences
(seeds 1000 + r for train, 2000 + r for held-out).
The description the model reads (and the VLM's heatmap) is one train-side prompt: a prose sentence
followed by a random sequence repeated twice, so both ordinary and induction behaviour are visible.

Resumable: one file per (model, head, prompt set) under cache/attention_study/<model>/<prompt set key>/,
written atomically once the head is done; the no-explanation control is one file per prompt set. The
final result (result_<heads, bootstrap settings>.json in the same folder) is written only when every
head is there.

For the page ("Whole model"): `run_study(lm, config, progress, stop)` runs or resumes the study of a loaded
model (progress(done, total, message); a set `stop` event ends it after the current held-out prompt, with
the finished heads kept); `cached_study(lm, config)` returns the finished result of those settings, or
None, without running anything; `study_report.load_report(folder)` reads a written report (e.g.
reports/attention). A `StudyResult` gives `atlas()` (one row per head: layer, head, best external
function, self vs control), `table()`, `layers()`, `contrasts` and `verdict`.

Shapes: L layers, H heads, T tokens, P held-out prompts, K studied heads, E explainers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from engine.attention import study_stats as st
from engine.attention.config import (
    DESCRIPTION_QUERIES,
    MAX_NEW_TOKENS,
    Explainer,
    ExplainMode,
    RuleName,
)
from engine.attention.head_functions import PromptSpec, random_token_ids, run_prompts
from engine.attention.maps import AttentionResult, parse_head, tokenize_prompt
from engine.attention.probe import fit_probe
from engine.attention.rules import RULES, fit_rule, predict
from engine.attention.self_explain import (
    NO_EXPLANATION,
    SIMULATE_TEMPLATE,
    explain_head,
    query_positions,
    simulate_shared_prefix,
)
from engine.attention.self_rule import RuleChoice, Scorer, choose_rule, lm_scorer, rule_prompt
from engine.attention.study_config import StudyConfig
from engine.attention.study_result import StudyResult, build_result
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.paths import DATA_DIR, atomic_write, cache_dir

EXPLAINERS: tuple[Explainer, ...] = get_args(Explainer)
HEAD_EXPLAINERS: tuple[Explainer, ...] = ("self-text", "self-rule", "detector", "probe")
EXTERNAL: tuple[Explainer, ...] = ("detector", "probe")
STUDY_VERSION = 1
RANDOM_LEN = 10  # random word tokens per sequence (each sequence appears twice)
SOURCE_SHARES = {"prose": 0.6, "questions": 0.2, "attention set": 0.2}
ProgressFn = Callable[[int, int, str], None]
# studies the run's heads missing from `records` (adding and caching each as it comes back), calling
# came_back(message) after each; False when `stop` ended it first
HeadsElsewhere = Callable[["StudyRun", dict, Callable[[str], None], "threading.Event | None"], bool]
Predictions = list[dict[int, np.ndarray]]  # one {query row: weights [i + 1]} per held-out prompt


# ---------------------------------------------------------------------------------------------
# Prompts


def _prose_chunks() -> list[str]:
    """eval_text.txt cut into pairs of consecutive sentences within a paragraph."""
    lines = [ln.strip() for ln in (DATA_DIR / "eval_text.txt").read_text(encoding="utf-8").splitlines()]
    out = []
    for para in (ln for ln in lines if ln and not ln.startswith("#")):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", para) if s]
        out += [" ".join(sentences[k : k + 2]) for k in range(0, len(sentences), 2)]
    return out


def _question_chunks() -> list[str]:
    """The bundled questions with their first answer, two per prompt ("Q? A. Q? A.")."""
    frame = pd.read_csv(DATA_DIR / "uq_default_questions.csv")
    qa = [f"{q} {str(a).split('|')[0].strip()}." for q, a in zip(frame["question"], frame["answer"])]
    return [" ".join(qa[k : k + 2]) for k in range(0, len(qa) - 1, 2)]


def _attention_texts() -> list[str]:
    data = json.loads((DATA_DIR / "attention_prompts.json").read_text(encoding="utf-8"))
    return [p["text"] for section in ("prompts", "heldout") for p in data[section]]


def text_sources() -> dict[str, list[str]]:
    """The lab's texts the study draws from, by source."""
    return {"prose": _prose_chunks(), "questions": _question_chunks(), "attention set": _attention_texts()}


def _deal(sources: dict[str, list[str]], n_train: int, n_heldout: int, seed: int) -> tuple[list, list]:
    """Shuffle each source, deal it alternately to train / held-out, take each source's share of each set."""
    rng = np.random.default_rng(seed)
    halves: dict[str, tuple[list[str], list[str]]] = {}
    for name, texts in sources.items():
        order = [texts[k] for k in rng.permutation(len(texts))]
        halves[name] = (order[0::2], order[1::2])
    sets: tuple[list, list] = ([], [])
    first = next(iter(sources))
    for side, n in ((0, n_train), (1, n_heldout)):
        quotas = {name: min(int(round(n * SOURCE_SHARES.get(name, 0.0))), len(halves[name][side])) for name in sources}
        quotas[first] += n - sum(quotas.values())  # what a small source cannot give, the first (prose) gives
        for name, quota in quotas.items():
            pool = halves[name][side]
            if quota > len(pool):
                raise LabError(
                    f"The prompt set is too small to split: {len(sources[name])} {name} texts cannot give "
                    f"{quota} {'train' if side == 0 else 'held-out'} prompts; ask for fewer prompts."
                )
            sets[side].extend((name, text) for text in pool[:quota])
    return sets


def study_prompts(
    tokenizer: Any, config: StudyConfig, sources: dict[str, list[str]] | None = None
) -> tuple[list[PromptSpec], list[PromptSpec], PromptSpec]:
    """(train, held-out, description prompt): disjoint sets of texts plus random sequences (module docstring)."""
    n_train_text, n_held_text = config.train - config.random, config.heldout - config.random
    if config.train < 2 or config.heldout < 4 or n_train_text < 1 or n_held_text < 0:
        raise LabError(
            f"The prompt set is too small to split: {config.train} train and {config.heldout} held-out prompts "
            f"with {config.random} random sequences each; the study needs at least 2 train prompts (one of them "
            "text) and 4 held-out prompts, more than the random sequences."
        )
    train_texts, held_texts = _deal(sources or text_sources(), n_train_text, n_held_text, config.seed)
    if {t for _, t in train_texts} & {t for _, t in held_texts}:
        raise LabError("The train and held-out prompts overlap: the texts hold duplicates.")

    def specs(texts, side: str, seed0: int) -> list[PromptSpec]:
        out = [PromptSpec(f"{side} {k}: {src}", "natural", text=t) for k, (src, t) in enumerate(texts)]
        for r in range(config.random):
            ids = random_token_ids(tokenizer, RANDOM_LEN, seed=seed0 + r)
            out.append(PromptSpec(f"{side} random x2 #{r}", "repeated-random", token_ids=ids))
        return out

    train = specs(train_texts, "train", 1000)
    heldout = specs(held_texts, "held-out", 2000)
    text_ids = tokenizer(train_texts[0][1], add_special_tokens=True)["input_ids"]
    n_rand = max(2, min(RANDOM_LEN // 2 + 3, (config.max_tokens - 4) // 2))
    rand = random_token_ids(tokenizer, n_rand, seed=999, repeat=1)
    rand = rand[1:] if tokenizer.bos_token_id is not None else rand
    keep = max(2, config.max_tokens - 2 * len(rand))
    description = PromptSpec("description: text + random x2", "natural", token_ids=tuple(text_ids[:keep]) + rand * 2)
    return train, heldout, description


# ---------------------------------------------------------------------------------------------
# Heads


def all_heads(n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def choose_heads(config: StudyConfig, n_layers: int, n_heads: int) -> tuple[list[tuple[int, int]], str]:
    """The studied heads and a sentence saying how they were chosen: `heads` (checked against the
    model), else all, thinned to a seeded sample of `max_heads` when that is smaller."""
    if config.heads:
        heads = sorted({parse_head(spec, n_layers, n_heads) for spec in config.heads})
        how = f"{len(heads)} chosen heads of {n_layers * n_heads}"
    else:
        heads = all_heads(n_layers, n_heads)
        how = f"all {len(heads)} heads"
    if config.max_heads is not None and config.max_heads < len(heads):
        rng = np.random.default_rng(config.seed)
        picked = sorted(rng.choice(len(heads), size=config.max_heads, replace=False).tolist())
        heads = [heads[k] for k in picked]
        how = f"a random sample of {len(heads)} of {n_layers * n_heads} heads (numpy default_rng({config.seed}))"
    return heads, how


def other_head(heads: Sequence[tuple[int, int]], seed: int) -> dict[tuple[int, int], tuple[int, int]]:
    """A seeded derangement: each head's "other head" for the control (never itself; needs 2+ heads)."""
    if len(heads) < 2:
        return {}
    rng = np.random.default_rng(seed + 1)
    while True:
        perm = rng.permutation(len(heads))
        if not np.any(perm == np.arange(len(heads))):
            return {heads[k]: heads[int(perm[k])] for k in range(len(heads))}


# ---------------------------------------------------------------------------------------------
# One head


@dataclasses.dataclass
class HeadRecord:
    """Everything one head's explainers produced: texts, choices, fits and held-out predictions."""

    layer: int
    head: int
    explanation: str
    explain_mode: str
    rule_choice: RuleChoice
    detector: RuleName
    detector_train: dict[str, dict]  # rule -> {top1, correlation, n_queries} on the train prompts
    probe: dict
    predictions: dict[Explainer, Predictions]  # HEAD_EXPLAINERS
    seconds: float = 0.0  # time its explainers took

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.head)


@dataclasses.dataclass
class SelfExplainer:
    """How the model speaks about a head: write an explanation, simulate one, score rule texts.

    The defaults use the model (`for_model`); tests pass doubles."""

    explain: Callable[[AttentionResult, int, int], tuple[str, str]]  # (result, layer, head) -> (text, mode)
    simulate: Callable[[str, AttentionResult, list[int]], dict[int, np.ndarray]]
    rule_prefix: Callable[[AttentionResult, int, int], str]
    scorer: Scorer

    @classmethod
    def for_model(cls, lm: LoadedModel, mode: ExplainMode, max_new_tokens: int = MAX_NEW_TOKENS) -> SelfExplainer:
        from engine.attention.maps import description_text

        def explain(result, layer, head):
            exp = explain_head(lm, result, layer, head, mode=mode, max_new_tokens=max_new_tokens)
            return exp.text, exp.mode

        def prefix(result, layer, head):
            return rule_prompt(lm, description_text(result, layer, head, max_queries=DESCRIPTION_QUERIES))

        return cls(
            explain=explain,
            simulate=lambda text, result, queries: simulate_shared_prefix(lm, text, result, queries, SIMULATE_TEMPLATE),
            rule_prefix=prefix,
            scorer=lm_scorer(lm),
        )


def train_queries(results: Sequence[AttentionResult]) -> list[list[int]]:
    """Every query row 1..T-1 of each train prompt (the fits see all rows)."""
    return [list(range(1, len(r.token_ids))) for r in results]


def heldout_queries(results: Sequence[AttentionResult], n_queries: int) -> list[list[int]]:
    """The scored query rows of each held-out prompt (self_explain.query_positions)."""
    return [query_positions(len(r.token_ids), n_queries) for r in results]


def study_head(
    layer: int,
    head: int,
    train: Sequence[AttentionResult],
    heldout: Sequence[AttentionResult],
    description: AttentionResult,
    n_queries: int,
    speaker: SelfExplainer | None,
    stop: threading.Event | None = None,
    step: Callable[[str], None] | None = None,
) -> HeadRecord | None:
    """Every explainer of one head, fitted / written on the train side and predicted on held-out prompts.

    Without a `speaker` (no model) the self explainers are left out. None when `stop` is set midway."""
    tq, hq = train_queries(train), heldout_queries(heldout, n_queries)
    patterns = [r.head(layer, head) for r in train]
    ids, toks, raws = [r.token_ids for r in train], [r.tokens for r in train], [r.raw_tokens for r in train]
    fit = fit_rule(patterns, ids, toks, tq)
    probe = fit_probe(patterns, ids, toks, raws, tq)
    preds: dict[Explainer, Predictions] = {
        "detector": [predict(fit.rule, r.token_ids, r.tokens, q) for r, q in zip(heldout, hq)],
        "probe": [probe.predict(r.token_ids, r.tokens, r.raw_tokens, q) for r, q in zip(heldout, hq)],
    }
    explanation, mode, choice = "", "", RuleChoice(fit.rule, {})
    if speaker is not None:
        if step:
            step(f"head {layer}.{head}: writing its explanation")
        explanation, mode = speaker.explain(description, layer, head)
        choice = choose_rule(speaker.rule_prefix(description, layer, head), speaker.scorer)
        preds["self-rule"] = [predict(choice.rule, r.token_ids, r.tokens, q) for r, q in zip(heldout, hq)]
        preds["self-text"] = []
        for n, (r, q) in enumerate(zip(heldout, hq), 1):
            if stop is not None and stop.is_set():
                return None
            if step:
                step(f"head {layer}.{head}: simulating held-out prompt {n} of {len(heldout)}")
            preds["self-text"].append(speaker.simulate(explanation, r, q))
    return HeadRecord(
        layer,
        head,
        explanation,
        mode,
        choice,
        fit.rule,
        {rule: dataclasses.asdict(s) for rule, s in fit.train.items()},
        probe.to_json(),
        preds,
    )


# ---------------------------------------------------------------------------------------------
# Cache


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def prompt_set_key(lm_name: str, train_ids, heldout_ids, description_ids, config: StudyConfig, mode: str) -> str:
    """A hash of everything a head's record depends on besides the head: the prompts' token ids and the
    settings (changing any gives a new cache folder, never a stale record)."""
    payload = {
        "version": STUDY_VERSION,
        "model": lm_name,
        "train": [list(map(int, t)) for t in train_ids],
        "heldout": [list(map(int, t)) for t in heldout_ids],
        "description": list(map(int, description_ids)),
        "max_tokens": config.max_tokens,
        "queries": config.queries,
        "mode": mode,
        "max_new_tokens": config.max_new_tokens,
        "simulate": SIMULATE_TEMPLATE,
        "rules": list(RULES),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def study_dir(lm_name: str, key: str) -> Path:
    """The cache folder of one model and prompt set (not created: a read must leave no empty folder)."""
    return cache_dir("attention_study") / _slug(lm_name) / key


def _flatten(preds: Predictions) -> np.ndarray:
    return np.concatenate([p for d in preds for _, p in sorted(d.items())]) if preds else np.zeros(0)


def _unflatten(flat: np.ndarray, queries: list[list[int]]) -> Predictions:
    out, at = [], 0
    for q in queries:
        d = {}
        for i in q:
            d[i] = flat[at : at + i + 1].astype(np.float64)
            at += i + 1
        out.append(d)
    if at != flat.size:
        raise ValueError("cached predictions do not match the prompts")
    return out


def save_record(folder: Path, record: HeadRecord) -> None:
    """One head's record as an .npz (predictions flat, the rest as JSON), written atomically."""
    meta = {
        "layer": record.layer,
        "head": record.head,
        "explanation": record.explanation,
        "explain_mode": record.explain_mode,
        "rule_choice": {"rule": record.rule_choice.rule, "logprobs": record.rule_choice.logprobs},
        "detector": record.detector,
        "detector_train": record.detector_train,
        "probe": record.probe,
        "explainers": list(record.predictions),
        "seconds": record.seconds,
    }
    arrays = {f"pred_{k}": _flatten(v).astype(np.float32) for k, v in enumerate(record.predictions.values())}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
    atomic_write(folder / f"head_{record.layer}.{record.head}.npz", buffer.getvalue())


def load_record(folder: Path, layer: int, head: int, queries: list[list[int]]) -> HeadRecord | None:
    """A cached head record, or None when absent or unreadable (then the head is run again)."""
    path = folder / f"head_{layer}.{head}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            preds = {name: _unflatten(data[f"pred_{k}"], queries) for k, name in enumerate(meta["explainers"])}
    except (OSError, ValueError, KeyError):
        return None
    choice = meta["rule_choice"]
    return HeadRecord(
        meta["layer"],
        meta["head"],
        meta["explanation"],
        meta["explain_mode"],
        RuleChoice(choice["rule"], choice["logprobs"]),
        meta["detector"],
        meta["detector_train"],
        meta["probe"],
        preds,
        float(meta.get("seconds", 0.0)),
    )


# ---------------------------------------------------------------------------------------------
# Scoring all heads


@dataclasses.dataclass
class StudyScores:
    """Per-prompt score statistics [E, K, P, S] of every explainer on every studied head."""

    heads: list[tuple[int, int]]
    explainers: list[Explainer]
    stats: np.ndarray  # [E, K, P, S]

    def point(self) -> tuple[np.ndarray, np.ndarray]:
        """(top-1, correlation) [E, K] over all held-out prompts."""
        return st.scores_from_stats(self.stats.sum(axis=2))


def score_heads(
    records: Sequence[HeadRecord],
    heldout: Sequence[AttentionResult],
    n_queries: int,
    control: Predictions | None,
    other: dict[tuple[int, int], tuple[int, int]],
) -> StudyScores:
    """Score every explainer's held-out predictions against each head's real patterns (study_stats.STATS)."""
    hq = heldout_queries(heldout, n_queries)
    by_key = {r.key: r for r in records}
    explainers = [e for e in EXPLAINERS if _available(e, records, control, other)]
    stats = np.zeros((len(explainers), len(records), len(heldout), len(st.STATS)))
    for k, rec in enumerate(records):
        for e, name in enumerate(explainers):
            preds = _predictions(name, rec, heldout, hq, control, by_key, other)
            for p, (res, pred) in enumerate(zip(heldout, preds)):
                stats[e, k, p] = st.prompt_stats(res.head(rec.layer, rec.head), pred)
    return StudyScores([r.key for r in records], explainers, stats)


def _available(name: Explainer, records, control, other) -> bool:
    if name in HEAD_EXPLAINERS:
        return all(name in r.predictions for r in records)
    if name == "control: no explanation":
        return control is not None
    if name == "control: other head":
        return bool(other) and all("self-text" in r.predictions for r in records)
    return True


def _predictions(name: Explainer, rec: HeadRecord, heldout, hq, control, by_key, other) -> Predictions:
    if name in HEAD_EXPLAINERS:
        return rec.predictions[name]
    if name == "control: no explanation":
        return control
    if name == "control: other head":
        return by_key[other[rec.key]].predictions["self-text"]
    rule: RuleName = "bos_sink" if name == "baseline: BOS" else "uniform"
    return [predict(rule, r.token_ids, r.tokens, q) for r, q in zip(heldout, hq)]


# ---------------------------------------------------------------------------------------------
# The whole study


@dataclasses.dataclass
class StudyRun:
    """A prepared study: the model's prompts run once, the heads chosen, the cache folder known."""

    lm: LoadedModel | None
    config: StudyConfig
    train: list[AttentionResult]
    heldout: list[AttentionResult]
    description: AttentionResult
    heads: list[tuple[int, int]]
    heads_how: str
    folder: Path
    mode: str
    shape: tuple[int, int]
    control_seconds: float = 0.0


def explain_mode(lm: LoadedModel, config: StudyConfig) -> ExplainMode:
    """What the model is shown of a head: the text description, plus the heatmap PNG on a VLM."""
    if config.explain_mode != "auto":
        return config.explain_mode
    return "text+image" if (lm.is_vlm and lm.processor is not None) else "text"


def _plan(lm: LoadedModel, config: StudyConfig) -> tuple[list[PromptSpec], int, Path, ExplainMode]:
    """The prompts (train, held-out, then the description prompt), how many are train, the cache folder and
    the explanation mode: everything but the forward passes (tokenizing only, so it is quick)."""
    config.validate()
    train_specs, held_specs, desc_spec = study_prompts(lm.tokenizer, config)
    specs = train_specs + held_specs + [desc_spec]
    ids = [list(s.token_ids) if s.token_ids else tokenize_prompt(lm, s.text) for s in specs]
    ids = [t[: config.max_tokens] for t in ids]
    for spec, t in zip(specs, ids):
        if len(t) < 3:
            raise LabError(f"Prompt '{spec.name}' gives {len(t)} tokens: the study needs 3 or more.")
    mode = explain_mode(lm, config)
    n = len(train_specs)
    key = prompt_set_key(lm.name, ids[:n], ids[n:-1], ids[-1], config, mode)
    return specs, n, study_dir(lm.name, key), mode


def model_shape(lm: LoadedModel) -> tuple[int, int]:
    """(layers, query heads) of the model's text stack."""
    cfg = lm.text_config
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


def result_name(heads: Sequence[tuple[int, int]], config: StudyConfig) -> str:
    """The result file of one choice of heads and statistics settings within a prompt-set folder."""
    payload = json.dumps({"heads": [list(h) for h in heads], "n_boot": config.n_boot, "seed": config.seed})
    return f"result_{hashlib.sha256(payload.encode()).hexdigest()[:12]}.json"


def prepare(lm: LoadedModel, config: StudyConfig, progress: ProgressFn | None = None) -> StudyRun:
    """Check the settings, run every prompt once (all heads' maps), choose the heads, find the cache."""
    specs, n_train, folder, mode = _plan(lm, config)
    heads, how = choose_heads(config, *model_shape(lm))
    results = run_prompts(lm, specs, config.max_tokens, progress)
    train, heldout, description = results[:n_train], results[n_train:-1], results[-1]
    shape = (description.n_layers, description.n_heads)
    if shape != model_shape(lm):
        raise LabError(
            f"Model '{lm.name}' gives attention maps of {shape[0]} layers x {shape[1]} heads, not the "
            f"{model_shape(lm)[0]} x {model_shape(lm)[1]} its config names."
        )
    folder.mkdir(parents=True, exist_ok=True)
    return StudyRun(lm, config, train, heldout, description, heads, how, folder, mode, shape)


CONTROL_FILE = "control.npz"


def load_control(run: StudyRun) -> tuple[Predictions, float] | None:
    """The cached no-explanation control of the run's prompt set and its seconds, or None (absent or unreadable)."""
    path = run.folder / CONTROL_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return _unflatten(data["pred"], heldout_queries(run.heldout, run.config.queries)), float(data["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def save_control(folder: Path, preds: Predictions, seconds: float) -> None:
    """The no-explanation control of a prompt set, written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pred=_flatten(preds).astype(np.float32), seconds=np.asarray(seconds))
    atomic_write(folder / CONTROL_FILE, buffer.getvalue())


def simulate_control(
    heldout: Sequence[AttentionResult],
    n_queries: int,
    speaker: SelfExplainer,
    step: Callable[[str], None],
    stop: threading.Event | None = None,
) -> tuple[Predictions, float] | None:
    """The simulator with no explanation on every held-out prompt and the seconds it took; None when
    `stop` is set midway."""
    start = time.perf_counter()
    preds = []
    for n, (res, q) in enumerate(zip(heldout, heldout_queries(heldout, n_queries)), 1):
        if stop is not None and stop.is_set():
            return None
        step(f"control (no explanation): held-out prompt {n} of {len(heldout)}")
        preds.append(speaker.simulate(NO_EXPLANATION, res, q))
    return preds, time.perf_counter() - start


def _control(
    run: StudyRun, speaker: SelfExplainer, step: Callable[[str], None], stop: threading.Event | None
) -> tuple[Predictions, float] | None:
    """The simulator with no explanation on every held-out prompt, cached once per prompt set, and the
    seconds it took when it ran; None when `stop` is set midway (nothing cached)."""
    cached = load_control(run)
    if cached is not None:
        return cached
    made = simulate_control(run.heldout, run.config.queries, speaker, step, stop)
    if made is not None:
        save_control(run.folder, *made)
    return made


def run_study(
    lm: LoadedModel,
    config: StudyConfig,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    speaker: SelfExplainer | None = None,
    report_only: bool = False,
    elsewhere: HeadsElsewhere | None = None,
) -> StudyResult | None:
    """Run (or resume) the study for a loaded model; None when `stop` was set before it finished.

    `progress(done, total, message)` after every unit of work (a held-out prompt simulated, an explanation
    written, a head finished). Finished heads are cached, so a later call continues where this one ended.
    The result (study_result.StudyResult) is written to the cache folder once every head is done;
    `report_only` only reads it (LabError when that run has not finished). `elsewhere` studies the heads
    missing from the cache (and the control) somewhere else first, e.g. on Ray workers, one task per group
    of heads (engine.attention.distributed.on_ray); this process runs the prompts once, and scores."""
    started = time.perf_counter()
    say = progress or (lambda done, total, message: None)
    say(0, 1, "running every prompt once")
    run = prepare(lm, config)
    name = result_name(run.heads, config)
    if report_only:
        result = StudyResult.load(run.folder, name)
        if result is None:
            raise LabError(
                f"No finished study of '{lm.name}' with these settings in {run.folder}: run it without --report-only."
            )
        return result
    speaker = speaker or SelfExplainer.for_model(lm, run.mode, config.max_new_tokens)
    hq = heldout_queries(run.heldout, config.queries)
    records = {key: rec for key in run.heads if (rec := load_record(run.folder, *key, hq)) is not None}
    per_head = len(run.heldout) + 1
    total = len(run.heldout) + per_head * len(run.heads)
    done = [per_head * len(records)]

    def step(message: str) -> None:
        say(min(done[0], total), total, message)
        done[0] += 1

    if elsewhere is not None:

        def came_back(message: str) -> None:
            controlled = len(run.heldout) if load_control(run) is not None else 0
            say(controlled + per_head * len(records), total, message)

        if not elsewhere(run, records, came_back, stop):
            return None
    controlled = _control(run, speaker, step, stop)
    if controlled is None:
        return None
    control, run.control_seconds = controlled
    for layer, head in run.heads:
        if (layer, head) in records:
            continue
        if stop is not None and stop.is_set():
            return None
        done[0] = len(run.heldout) + per_head * len(records)
        t0 = time.perf_counter()
        rec = study_head(layer, head, run.train, run.heldout, run.description, config.queries, speaker, stop, step)
        if rec is None:
            return None
        rec.seconds = time.perf_counter() - t0
        save_record(run.folder, rec)
        records[(layer, head)] = rec
        say(
            len(run.heldout) + per_head * len(records),
            total,
            f"head {layer}.{head} done ({len(records)} of {len(run.heads)})",
        )
    ordered = [records[k] for k in run.heads]
    scores = score_heads(ordered, run.heldout, config.queries, control, other_head(run.heads, config.seed))
    result = build_result(run, ordered, scores, wall_seconds=time.perf_counter() - started)
    result.save(run.folder, name)
    say(total, total, "done")
    return result


def cached_study(lm: LoadedModel, config: StudyConfig) -> StudyResult | None:
    """The finished study of this model, these settings and these heads from the cache, or None (not run
    or not finished). Tokenizes the prompts to find the cache; runs no forward pass."""
    _, _, folder, _ = _plan(lm, config)
    heads, _ = choose_heads(config, *model_shape(lm))
    return StudyResult.load(folder, result_name(heads, config))
