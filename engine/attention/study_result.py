"""The attention study's answer: per-head scores, contrasts with intervals, per-layer breakdown, atlas data.

`build_result` turns the scored heads (study.StudyScores) into a `StudyResult` with the statistics of
study_stats: a bootstrap over the held-out prompts applied jointly to all heads, and Holm's adjustment
within one family of top-1 contrasts:
  1. self-text - the better external method: mean over heads of top-1(self-text) minus the larger of the
     detector's and the probe's mean top-1, the larger one chosen again in every resample (the verdict);
  2. self-text - control: no explanation (what the explanation adds to the simulator's prior);
  3. self-text - control: other head (what is specific to this head);
  4. self-rule agreement with the detector's rule - chance (a permutation test over heads).
The correlation contrasts come with intervals, unadjusted (descriptive). A head "beats the control" when
the 95% bootstrap interval of its own top-1(self-text) - top-1(no explanation) lies above 0 (per head,
unadjusted: a colour of the atlas, not a test).

`StudyResult` is what the page shows: `table()` (one row per head), `atlas()` (one cell per head),
`layers()` (per-layer breakdown), `contrasts`, `verdict`; `save` / `load` as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.attention import study_stats as st
from engine.attention.rules import RULE_TITLES, RULES
from engine.attention.study_config import ALPHA, N_PERM
from engine.core.paths import atomic_write

RESULT_FILE = "result.json"
RESULT_VERSION = 1
SelfVsControl = str  # "beats the control" | "no difference" | "below the control" | "no self-explanation"


@dataclasses.dataclass
class StudyResult:
    """A finished study (plain data: JSON round trip)."""

    model: str
    config: dict
    heads_how: str
    shape: tuple[int, int]  # (layers, heads) of the model
    mode: str
    n_train: int
    n_heldout: int
    heads: list[dict]  # one row per studied head (table())
    layer_rows: list[dict]
    contrasts: list[dict]
    correlation_contrasts: list[dict]
    agreement: dict
    verdict: str
    n_boot: int
    family: list[str]
    wall_seconds: float
    compute_seconds: float
    control_seconds: float = 0.0  # the no-explanation control on every held-out prompt
    head_seconds: float = 0.0  # mean over studied heads: explanation, rule pick, fits, held-out simulations

    def full_study_seconds(self, n_heldout: int) -> float:
        """The time a study of every head of the model with `n_heldout` held-out prompts would take at this
        run's measured speed: a simulator run costs s = control_seconds / n_heldout (the same prompts
        with no explanation), a head's fixed part (explanation, rule pick, fits) E = head_seconds - n s,
        so the total is H (E + n' s) + n' s for H heads and n' = `n_heldout` prompts."""
        if self.n_heldout == 0 or self.control_seconds <= 0:
            return float("nan")
        s = self.control_seconds / self.n_heldout
        fixed = max(self.head_seconds - self.n_heldout * s, 0.0)
        return self.shape[0] * self.shape[1] * (fixed + n_heldout * s) + n_heldout * s

    def table(self) -> pd.DataFrame:
        """One row per head: layer, head, detector rule, self-rule pick, top-1 / r of every explainer,
        self vs control, explanation."""
        return pd.DataFrame(self.heads)

    def atlas(self) -> pd.DataFrame:
        """One row per head for the atlas: layer, head, best external function (the detector's rule),
        whether the self-explanation beats the control, and the top-1 scores beside them."""
        cols = [
            "layer",
            "head",
            "layer.head",
            "detector_rule",
            "detector_title",
            "self_vs_control",
            "top1 self-text",
            "top1 control: no explanation",
            "top1 detector",
            "top1 probe",
            "explanation",
        ]
        frame = self.table()
        return frame[[c for c in cols if c in frame.columns]]

    def layers(self) -> pd.DataFrame:
        return pd.DataFrame(self.layer_rows)

    @property
    def min_p_times_family(self) -> float:
        """The smallest attainable bootstrap p (2 / (B + 1)) times the family size: below ALPHA means a
        contrast can be significant after Holm."""
        return 2.0 / (self.n_boot + 1) * max(len(self.family), 1)

    def to_json(self) -> dict:
        return {"version": RESULT_VERSION, **dataclasses.asdict(self)}

    def save(self, folder: Path, name: str = RESULT_FILE) -> Path:
        path = Path(folder) / name
        atomic_write(path, json.dumps(_clean(self.to_json()), indent=1, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, folder: Path, name: str = RESULT_FILE) -> StudyResult | None:
        """The result saved as `name` in `folder`, or None (absent, unreadable or from another version)."""
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.pop("version", None) != RESULT_VERSION:
            return None
        data["shape"] = tuple(data["shape"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _clean(node: Any) -> Any:
    """JSON-safe: NaN / inf become None, numpy scalars plain numbers."""
    if isinstance(node, dict):
        return {str(k): _clean(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_clean(v) for v in node]
    if isinstance(node, (np.floating, float)):
        return None if not math.isfinite(float(node)) else float(node)
    if isinstance(node, np.integer):
        return int(node)
    return node


def _mean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=axis)


def contrasts_of(scores, n_boot: int, seed: int) -> tuple[list[st.Contrast], list[st.Contrast], dict]:
    """The family of top-1 contrasts (Holm-adjusted), the correlation contrasts (descriptive) and the
    per-head bootstrap draws {"top1": [B, E, K], "corr": [B, E, K]} (module docstring)."""
    top1, corr = scores.point()  # [E, K]
    counts = st.resample_counts(scores.stats.shape[2], n_boot, seed)
    bt, bc = st.boot_scores(scores.stats, counts)  # [B, E, K]
    idx = {name: e for e, name in enumerate(scores.explainers)}
    family, described = [], []
    if "self-text" not in idx:
        return family, described, {"top1": bt, "corr": bc}
    s = idx["self-text"]
    for metric, point, draws, out in (("top-1", top1, bt, family), ("r", corr, bc, described)):
        ext = [idx[e] for e in ("detector", "probe") if e in idx]
        if ext:
            best_point = max(_mean(point[e]) for e in ext)
            best_draws = np.max(np.stack([_mean(draws[:, e], axis=-1) for e in ext]), axis=0)
            out.append(
                st.bootstrap_contrast(
                    f"{metric}: self-text - better external",
                    _mean(point[s]) - best_point,
                    _mean(draws[:, s], axis=-1) - best_draws,
                )
            )
        for ref in ("control: no explanation", "control: other head"):
            if ref in idx:
                r = idx[ref]
                out.append(
                    st.bootstrap_contrast(
                        f"{metric}: self-text - {ref}",
                        _mean(point[s] - point[r]),
                        _mean(draws[:, s] - draws[:, r], axis=-1),
                    )
                )
    return family, described, {"top1": bt, "corr": bc}


def build_result(run, records, scores, wall_seconds: float) -> StudyResult:
    """The study's answer from its records (study.HeadRecord) and scores (study.StudyScores)."""
    config = run.config
    top1, corr = scores.point()
    idx = {name: e for e, name in enumerate(scores.explainers)}
    family, described, draws = contrasts_of(scores, config.n_boot, config.seed)
    has_self = "self-text" in idx
    agreement: dict = {}
    if has_self and "self-rule" in idx:
        agreement = st.agreement_vs_chance(
            [r.rule_choice.rule for r in records], [r.detector for r in records], N_PERM, config.seed
        )
        agreement["uniform_chance"] = 1.0 / len(RULES)
        family.append(
            st.Contrast(
                "self-rule agreement with the detector - chance",
                agreement["agreement"] - agreement["chance"],
                float("nan"),
                float("nan"),
                agreement["p"],
                n_boot=N_PERM,
            )
        )
    st.adjust(family)
    heads = []
    for k, rec in enumerate(records):
        row: dict[str, Any] = {
            "layer.head": f"{rec.layer}.{rec.head}",
            "layer": rec.layer,
            "head": rec.head,
            "detector_rule": rec.detector,
            "detector_title": RULE_TITLES[rec.detector],
            "detector_train_top1": rec.detector_train[rec.detector]["top1"],
            "self_rule": rec.rule_choice.rule if has_self else None,
        }
        for name, e in idx.items():
            row[f"top1 {name}"] = float(top1[e, k])
            row[f"r {name}"] = float(corr[e, k])
        row["self_vs_control"] = _self_vs_control(draws["top1"], idx, k) if has_self else "no self-explanation"
        row["explanation"] = rec.explanation
        heads.append(row)
    layer_rows = _layer_rows(records, scores, draws["top1"], top1)
    verdict = _verdict(run.lm.name if run.lm is not None else config.model, family, idx, top1, agreement)
    return StudyResult(
        model=run.lm.name if run.lm is not None else config.model,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        heads_how=run.heads_how,
        shape=tuple(run.shape),
        mode=run.mode,
        n_train=len(run.train),
        n_heldout=len(run.heldout),
        heads=heads,
        layer_rows=layer_rows,
        contrasts=[c.as_dict() for c in family],
        correlation_contrasts=[c.as_dict() for c in described],
        agreement=agreement,
        verdict=verdict,
        n_boot=config.n_boot,
        family=[c.name for c in family],
        wall_seconds=float(wall_seconds),
        compute_seconds=float(sum(getattr(r, "seconds", 0.0) for r in records) + getattr(run, "control_seconds", 0.0)),
        control_seconds=float(getattr(run, "control_seconds", 0.0)),
        head_seconds=float(np.mean([getattr(r, "seconds", 0.0) for r in records])) if records else 0.0,
    )


def _self_vs_control(bt: np.ndarray, idx: dict, k: int) -> SelfVsControl:
    if "control: no explanation" not in idx:
        return "no control"
    d = bt[:, idx["self-text"], k] - bt[:, idx["control: no explanation"], k]
    d = d[~np.isnan(d)]
    if d.size == 0:
        return "no difference"
    low, high = np.percentile(d, [2.5, 97.5])
    return "beats the control" if low > 0 else "below the control" if high < 0 else "no difference"


LAYER_DELTA = "self-text - better external"  # the verdict's contrast within one layer (a row of layers())


def _interval(draws: np.ndarray) -> tuple[float, float]:
    d = draws[~np.isnan(draws)]
    return tuple(float(v) for v in np.percentile(d, [2.5, 97.5])) if d.size else (float("nan"), float("nan"))


def _layer_rows(records, scores, bt: np.ndarray, top1: np.ndarray) -> list[dict]:
    """Per layer: each explainer's mean top-1 over the layer's studied heads, and the verdict's contrast
    (self-text minus the better of detector and probe in that layer, chosen again in each resample),
    each with its 95% bootstrap interval."""
    layers = np.asarray([r.layer for r in records])
    idx = {name: e for e, name in enumerate(scores.explainers)}
    ext = [idx[e] for e in ("detector", "probe") if e in idx]
    rows = []
    for layer in sorted(set(layers.tolist())):
        mask = layers == layer
        entries = [(name, _mean(top1[e, mask]), _mean(bt[:, e, mask], axis=-1)) for name, e in idx.items()]
        if "self-text" in idx and ext:
            s = idx["self-text"]
            point = _mean(top1[s, mask]) - max(_mean(top1[e, mask]) for e in ext)
            draws = _mean(bt[:, s, mask], axis=-1) - np.max(np.stack([_mean(bt[:, e, mask], axis=-1) for e in ext]), 0)
            entries.append((LAYER_DELTA, point, draws))
        for name, point, draws in entries:
            low, high = _interval(draws)
            rows.append(
                {
                    "layer": int(layer),
                    "explainer": name,
                    "top1": float(point),
                    "ci_low": low,
                    "ci_high": high,
                    "n_heads": int(mask.sum()),
                }
            )
    return rows


def _fmt(c: dict | st.Contrast) -> str:
    c = c if isinstance(c, dict) else c.as_dict()
    return (
        f"{c['estimate']:+.3f} (95% CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], Holm-adjusted p = {c['p_holm']:.3g})"
    )


def _verdict(model: str, family: list[st.Contrast], idx: dict, top1: np.ndarray, agreement: dict) -> str:
    """One sentence on self-text against the better external method, then one on the controls."""
    by = {c.name: c for c in family}
    main = by.get("top-1: self-text - better external")
    if main is None:
        return f"{model}: no self-explanation was run, so the study has no verdict (external methods only)."
    better = max(("detector", "probe"), key=lambda e: _mean(top1[idx[e]]) if e in idx else -1.0)
    at = f"At this model size ({model}), "
    if main.p_holm < ALPHA and main.estimate > 0:
        head = at + f"the model's own explanations predict its heads' attention better than the {better}"
    elif main.p_holm < ALPHA:
        head = at + f"the model's own explanations predict its heads' attention worse than the {better}"
    else:
        head = at + f"no difference is shown between the model's own explanations and the {better}"
    text = f"{head}: top-1 agreement on held-out prompts, self-text minus {better}, {_fmt(main)}."
    ctrl = by.get("top-1: self-text - control: no explanation")
    if ctrl is not None:
        adds = "adds to" if ctrl.p_holm < ALPHA and ctrl.estimate > 0 else "does not add to"
        text += f" The explanation {adds} the simulator's prior (self-text minus no explanation {_fmt(ctrl)})."
    if agreement:
        text += (
            f" Choosing from the rule library, the model picks the detector's rule for "
            f"{agreement['agreement']:.0%} of heads (chance {agreement['chance']:.0%})."
        )
    return text
