"""Pre-registered contrasts: does the decomposition help a method, against the same method without it?

Each method the decomposition can enhance is run on the decomposition's semantic subspace (the enhanced
score) and on the full hidden state (the baseline), with the same folds and the same out-of-fold choice
of regularisation (engine.uq.estimators):
    correctness probe        correctness_probe_<d>_semantic   vs correctness_probe_full_state
    semantic-entropy probe   se_probe_<d>_semantic            vs se_probe_full_state
    spread                   <d>_semantic_spread              vs full_state_spread
for each decomposition d (engine.uq.decompositions.DECOMPOSITIONS). Families (Holm within each):
- "primary": those 9 contrasts, AUROC of wrong-answer detection, DeLong's one-sided paired test
  ("with beats without");
- "primary acc@50": the same pairs, tie-averaged accuracy at 50% coverage, one-sided paired bootstrap;
- "same-rank control": the semantic subspace against a random and a PCA subspace of the same rank in
  each fold through the same method (AUROC, one-sided): a gain from meaning, not from fewer dimensions;
- "exploratory" and "exploratory acc@50": each enhanced score and semantic entropy against the usual
  score (mean token NLL), two-sided.
Every contrast: {name, enhanced, baseline, metric, estimate, ci_low, ci_high, p, p_holm, family,
one_sided, method, se, mde, n, missing} where enhanced / baseline are results.csv columns; for AUROC
contrasts of cross-fitted scores also the seed-to-seed spread of the estimate (each fold seed's
columns: seed_sd, seed_min, seed_max, n_seeds). Verdict on the primary family (`contrast_verdict`):
    "useful"          some primary contrast has estimate > 0 and p_holm < alpha;
    "not useful"      every primary contrast's 95% interval lies below +margin (0.02 AUROC);
    "inconclusive"    otherwise.
The contrast fixed for confirmation (`choose_contrast`): the primary contrast with the smallest
p_holm, then the largest estimate (exploration data only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.config import SEMANTIC_SCORE, USUAL_SCORE
from engine.uq.decompositions import CONTROLS, DECOMPOSITIONS
from engine.uq.estimators import FULL_STATE, correctness_probe_name, se_probe_name, spread_name
from engine.uq.paired import (
    ALPHA,
    Acc50Bootstrap,
    PairedDifference,
    delong_difference,
    holm,
    mde,
    require_reachable,
)

Method = Literal["correctness probe", "semantic-entropy probe", "spread"]
Family = Literal["primary", "primary acc@50", "same-rank control", "exploratory", "exploratory acc@50"]
METHODS: dict[Method, Callable[[str], str]] = {  # method -> its score's name on a subspace (estimators)
    "correctness probe": correctness_probe_name,
    "semantic-entropy probe": se_probe_name,
    "spread": spread_name,
}
MARGIN = 0.02  # an AUROC gain the study wants to rule out or find


@dataclasses.dataclass(frozen=True)
class ContrastSpec:
    """One planned comparison: `enhanced` against `baseline` (results.csv columns) on `metric`."""

    name: str
    enhanced: str
    baseline: str
    metric: Literal["auroc", "acc50"]
    family: Family
    one_sided: bool

    def key(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def planned(usual: str = USUAL_SCORE, semantic: str = SEMANTIC_SCORE) -> list[ContrastSpec]:
    """Every contrast of the module docstring, in a fixed order."""
    specs: list[ContrastSpec] = []
    pairs = []
    for method, score in METHODS.items():
        for d in DECOMPOSITIONS:
            pairs.append((f"{method}, {d}: semantic subspace vs full state", score(f"{d}_semantic"), score(FULL_STATE)))
    specs += [ContrastSpec(n, e, b, "auroc", "primary", True) for n, e, b in pairs]
    specs += [ContrastSpec(n, e, b, "acc50", "primary acc@50", True) for n, e, b in pairs]
    for method, score in METHODS.items():
        for d in DECOMPOSITIONS:
            for c in CONTROLS:
                name = f"{method}, {d}: semantic subspace vs {c} subspace of the same rank"
                specs.append(
                    ContrastSpec(name, score(f"{d}_semantic"), score(f"{d}_{c}"), "auroc", "same-rank control", True)
                )
    against = [(f"{e} vs {usual}", e) for _n, e, _b in pairs] + [(f"{semantic} vs {usual}", semantic)]
    specs += [ContrastSpec(n, e, usual, "auroc", "exploratory", False) for n, e in against]
    specs += [ContrastSpec(n, e, usual, "acc50", "exploratory acc@50", False) for n, e in against]
    return specs


def missing_columns(spec: ContrastSpec, columns) -> list[str]:
    """The contrast's columns that `columns` lacks."""
    return [c for c in (spec.enhanced, spec.baseline) if c not in columns]


def require_columns(spec: ContrastSpec, columns) -> None:
    """LabError naming the contrast's missing columns."""
    missing = missing_columns(spec, columns)
    if missing:
        raise LabError(f"The contrast '{spec.name}' needs the column(s) {', '.join(missing)}, which the results lack.")


def _seed_spread(spec: ContrastSpec, scores: pd.DataFrame, correct: np.ndarray, seed_scores: dict) -> dict:
    """The AUROC difference recomputed on each fold seed's columns: its SD, min and max over seeds."""
    from engine.uq.metrics import _auroc

    seeded = [c for c in (spec.enhanced, spec.baseline) if c in seed_scores]
    if spec.metric != "auroc" or not seeded:
        return {}
    n_seeds = min(len(seed_scores[c]) for c in seeded)

    def column(name: str, k: int) -> np.ndarray:
        return np.asarray(seed_scores[name][k]) if name in seed_scores else scores[name].to_numpy(dtype=np.float64)

    diffs = np.array(
        [_auroc(column(spec.enhanced, k), correct) - _auroc(column(spec.baseline, k), correct) for k in range(n_seeds)]
    )
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return {}
    return {
        "n_seeds": int(diffs.size),
        "seed_sd": float(np.std(diffs, ddof=1)) if diffs.size > 1 else 0.0,
        "seed_min": float(diffs.min()),
        "seed_max": float(diffs.max()),
    }


def _nan_row(spec: ContrastSpec, missing: list[str], why: str) -> dict[str, Any]:
    nan = float("nan")
    row = {**spec.key(), "estimate": nan, "ci_low": nan, "ci_high": nan, "p": nan, "p_holm": nan}
    row.update(method="", se=nan, mde=nan, n=0, missing=missing, note=why)
    return row


def run_contrasts(
    scores: pd.DataFrame,
    correct,
    specs: Sequence[ContrastSpec] | None = None,
    *,
    n_boot: int = 20_000,
    seed: int = 0,
    alpha: float = ALPHA,
    seed_scores: dict | None = None,
    boot: Acc50Bootstrap | None = None,
) -> list[dict[str, Any]]:
    """Each contrast of `specs` (default `planned()`) on the graded questions: `scores` has one column per
    score, `correct` 1/0 in its row order. Holm within each family over the contrasts with a p-value; the
    MDE at that family's size. A bootstrap family that cannot reach `alpha` is refused (paired.
    require_reachable). A contrast with a missing or all-NaN column gets NaN numbers and says why."""
    specs = list(planned() if specs is None else specs)
    y = np.asarray(correct, dtype=np.float64)
    if y.shape != (len(scores),):
        raise LabError(f"Got {y.size} correctness values for {len(scores)} scored questions.")
    seed_scores = seed_scores or {}
    rows: list[dict[str, Any]] = []
    tested: dict[int, PairedDifference] = {}
    for i, spec in enumerate(specs):
        missing = missing_columns(spec, scores.columns)
        if missing:
            rows.append(_nan_row(spec, missing, f"missing column(s): {', '.join(missing)}"))
            continue
        empty = [c for c in (spec.enhanced, spec.baseline) if scores[c].isna().all()]
        if empty:
            rows.append(_nan_row(spec, [], f"not computed on this data: {', '.join(empty)}"))
            continue
        rows.append({})
        tested[i] = spec
    families = list(dict.fromkeys(spec.family for spec in tested.values()))  # in planned order
    for family in families:
        members = [i for i, spec in tested.items() if spec.family == family]
        one_sided = tested[members[0]].one_sided
        alternative = "greater" if one_sided else "two-sided"
        if tested[members[0]].metric == "acc50":
            n_boot_used = boot.n_boot if boot is not None else n_boot
            require_reachable(
                family, len(members), method="bootstrap", n_boot=n_boot_used, alternative=alternative, alpha=alpha
            )
            boot = boot if boot is not None else Acc50Bootstrap(y, n_boot, seed)
        diffs = {}
        for i in members:
            spec = tested[i]
            enh, base = (
                scores[spec.enhanced].to_numpy(dtype=np.float64),
                scores[spec.baseline].to_numpy(dtype=np.float64),
            )
            if spec.metric == "auroc":
                diffs[i] = delong_difference(enh, base, y, alternative)
            else:
                diffs[i] = boot.difference(spec.enhanced, enh, spec.baseline, base, alternative)
        adjusted = holm([diffs[i].p for i in members])
        for i, p_adj in zip(members, adjusted):
            d, spec = diffs[i], tested[i]
            rows[i] = {
                **spec.key(),
                "estimate": d.estimate,
                "ci_low": d.ci_low,
                "ci_high": d.ci_high,
                "p": d.p,
                "p_holm": float(p_adj),
                "method": d.method,
                "se": d.se,
                "mde": mde(d.se, family_size=len(members), alternative=alternative, alpha=alpha),
                "n": int(y.size),
                "missing": [],
                **_seed_spread(spec, scores, y, seed_scores),
            }
    return rows


def decomposition_ran(scores: pd.DataFrame) -> bool:
    """Whether any decomposition's enhanced score was computed (then `contrasts` is written)."""
    columns = {spec.enhanced for spec in planned() if spec.family == "primary"}
    return any(c in scores.columns and scores[c].notna().any() for c in columns)


@dataclasses.dataclass
class ContrastVerdict:
    answer: str  # "useful" | "not useful" | "inconclusive at n = N"
    sentence: str
    best: str | None = None  # the contrast the sentence quotes


def _quote(c: dict) -> str:
    return (
        f"{c['name']}: ΔAUROC {c['estimate']:+.3f} (95% CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], one-sided "
        f"DeLong p = {c['p']:.3g}, Holm-adjusted p = {c['p_holm']:.3g}, minimal detectable effect {c['mde']:.3f})"
    )


def contrast_verdict(
    contrasts: Sequence[dict], n: int, *, alpha: float = ALPHA, margin: float = MARGIN
) -> ContrastVerdict:
    """The rule of the module docstring on the primary family."""
    rows = [c for c in contrasts if c["family"] == "primary" and not _nan(c["estimate"]) and not _nan(c["p_holm"])]
    if not rows:
        return ContrastVerdict(
            f"inconclusive at n = {n}", f"Inconclusive at n = {n}: no primary contrast was computed."
        )
    winners = [c for c in rows if c["estimate"] > 0 and c["p_holm"] < alpha]
    if winners:
        best = max(winners, key=lambda c: c["estimate"])
        return ContrastVerdict("useful", f"Useful at n = {n}: {_quote(best)}.", best["name"])
    highest = max(rows, key=lambda c: c["ci_high"])
    if highest["ci_high"] < margin:
        sentence = (
            f"Not useful at n = {n}: for every method the decomposition's semantic subspace does not beat the full "
            f"state; every 95% interval lies below +{margin:g} AUROC (highest upper bound {highest['ci_high']:+.3f}, "
            f"{highest['name']})."
        )
        return ContrastVerdict("not useful", sentence, highest["name"])
    best = max(rows, key=lambda c: c["estimate"])
    sentence = (
        f"Inconclusive at n = {n}: no method gains from the decomposition after Holm adjustment "
        f"(best: {_quote(best)}), and a gain of {margin:g} AUROC or more is not ruled out."
    )
    return ContrastVerdict(f"inconclusive at n = {n}", sentence, best["name"])


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def choose_contrast(contrasts: Sequence[dict]) -> dict:
    """The primary contrast fixed for confirmation (module docstring); LabError when none was computed."""
    rows = [c for c in contrasts if c["family"] == "primary" and not _nan(c["p_holm"])]
    if not rows:
        raise LabError("No primary contrast was computed on the exploration set: nothing to confirm.")
    best = min(rows, key=lambda c: (c["p_holm"], -c["estimate"]))
    return {k: best[k] for k in ("name", "enhanced", "baseline", "metric", "family", "one_sided")}


def contrasts_markdown(contrasts: Sequence[dict]) -> str:
    """The contrast table: family, contrast, Δ with 95% interval, p, Holm p, MDE, seed-to-seed spread."""
    lines = [
        "| family | contrast | metric | Δ (enhanced − baseline) | 95% CI | p | p (Holm) | MDE | seed SD [min, max] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        if _nan(c["estimate"]):
            lines.append(f"| {c['family']} | {c['name']} | {c['metric']} | n/a ({c.get('note', '')}) | | | | | |")
            continue
        spread = (
            f"{c['seed_sd']:.3f} [{c['seed_min']:+.3f}, {c['seed_max']:+.3f}] ({c['n_seeds']} seeds)"
            if "seed_sd" in c
            else ""
        )
        lines.append(
            f"| {c['family']} | {c['name']} | {c['metric']} | {c['estimate']:+.3f} | [{c['ci_low']:+.3f}, "
            f"{c['ci_high']:+.3f}] | {c['p']:.3g} | {c['p_holm']:.3g} | {c['mde']:.3f} | {spread} |"
        )
    return "\n".join(lines)
