"""How well an uncertainty score separates right from wrong answers: A1 / A2 / A3 and their evidence.

Conventions: `unc` higher = more uncertain; `correct` 1/0 per question. A NaN score counts as the most
uncertain (rejected first). Rejecting the most uncertain questions first gives the accuracy-rejection
curve; ties in `unc` are averaged there (expected accuracy over a random order inside a tie), as
sklearn's AUROC does. Accuracy at 50% coverage (A2, A3) is that curve at k = ceil(n/2):
    acc50 = (1/k) [ sum_{blocks b before the cut} R_b + (k - N_<) R_c / N_c ],
with tie blocks of equal `unc` in ascending order, R_b the right answers and N_b the size of block b,
c the block holding the k-th position and N_< the questions before it: the expected accuracy when ties
at the cut are broken in a random order (not by file order). `retained_mask` is one definite set.
Intervals: percentile bootstrap (95%) resampling questions with a seeded generator, the same
resamples for every score (paired); resamples where a metric is undefined are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.config import SEMANTIC_SCORE, USUAL_SCORE

METRICS = ("acc50", "auroc", "prr", "auarc")
DIFF_METRICS = ("acc50", "auroc")  # tested against another score, paired (engine.uq.paired)


def _unc(unc) -> np.ndarray:
    u = np.asarray(unc, dtype=np.float64).copy()
    u[np.isnan(u)] = np.inf
    return u


def retained_mask(unc) -> np.ndarray:
    """The 50% most certain questions: a stable sort by (unc, position), keeping the first ceil(n/2).

    Every kept question has unc <= quantile(unc, 0.5); at a tie across the cut the questions earlier in
    the list are kept, so exactly ceil(n/2) are kept whatever the ties. NaN scores sort last.
    """
    u = _unc(unc)
    keep = np.zeros(u.size, dtype=bool)
    keep[np.argsort(u, kind="stable")[: math.ceil(u.size / 2)]] = True
    return keep


class _Sorted:
    """Rows of (unc, correct) sorted by (unc, position), with tie blocks numbered across all rows."""

    def __init__(self, unc: np.ndarray, correct: np.ndarray):
        order = np.argsort(unc, axis=1, kind="stable")
        u = np.take_along_axis(unc, order, 1)
        self.correct = np.take_along_axis(correct, order, 1)
        self.rows, self.n = u.shape
        new = np.ones(u.shape, dtype=bool)
        new[:, 1:] = u[:, 1:] != u[:, :-1]
        self.block = np.cumsum(new.ravel()) - 1  # global tie-block id of each sorted entry
        self.block_size = np.bincount(self.block)
        self.block_row = np.repeat(np.arange(self.rows), self.n)[new.ravel()]

    def block_sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.block, weights=values.ravel(), minlength=self.block_size.size)

    def accuracy_curves(self) -> np.ndarray:
        """[rows, n]: expected accuracy on the m most certain (column m - 1), correctness averaged in ties."""
        averaged = (self.block_sum(self.correct) / self.block_size)[self.block].reshape(self.rows, self.n)
        return np.cumsum(averaged, axis=1) / np.arange(1, self.n + 1)

    def auroc(self) -> np.ndarray:
        """P(unc_wrong > unc_right) + P(tie) / 2 per row: the Mann-Whitney form sklearn's AUROC equals."""
        right = self.block_sum(self.correct)
        wrong = self.block_size - right
        before = np.cumsum(right) - right  # right answers in earlier blocks (all rows)
        row_start = np.flatnonzero(np.r_[True, self.block_row[1:] != self.block_row[:-1]])
        before -= np.repeat(before[row_start], np.diff(np.r_[row_start, right.size]))
        pairs = np.bincount(self.block_row, weights=wrong * (before + right / 2), minlength=self.rows)
        n_right = self.correct.sum(axis=1)
        denom = n_right * (self.n - n_right)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, pairs / denom, np.nan)


def _batch_metrics(unc: np.ndarray, correct: np.ndarray) -> dict:
    """acc50, AUROC, PRR, AUARC for each row of unc / correct [rows, n] (NaN unc: most uncertain)."""
    unc = np.where(np.isnan(unc), np.inf, unc)
    rows = _Sorted(unc, correct)
    curves = rows.accuracy_curves()
    auarc = curves.mean(axis=1)
    n = rows.n
    n_correct = correct.sum(axis=1)
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, n + 1))]
    oracle = (n_correct + n_correct * (harmonic[n] - harmonic[n_correct.astype(int)])) / n  # right first
    acc = n_correct / n
    with np.errstate(invalid="ignore", divide="ignore"):
        prr = np.where(oracle - acc > 1e-12, (auarc - acc) / (oracle - acc), np.nan)
    return {"acc50": curves[:, math.ceil(n / 2) - 1], "auroc": rows.auroc(), "prr": prr, "auarc": auarc}


def accuracy_curve(unc, correct) -> np.ndarray:
    """acc[m - 1] = expected accuracy on the m most certain questions (m = 1..n), ties averaged."""
    u = np.asarray(unc, dtype=np.float64)
    u = np.where(np.isnan(u), np.inf, u)
    return _Sorted(u[None], np.asarray(correct, dtype=np.float64)[None]).accuracy_curves()[0]


def _auroc(unc, correct) -> float:
    """sklearn roc_auc_score with wrong = positive, score = unc; NaN with one class; NaN unc ranked highest."""
    from sklearn.metrics import roc_auc_score

    wrong = 1 - np.asarray(correct, dtype=int)
    if wrong.min() == wrong.max():
        return float("nan")
    u = _unc(unc)
    finite = np.isfinite(u)
    if not finite.all():
        u[~finite] = (u[finite].max() + 1.0) if finite.any() else 0.0
    return float(roc_auc_score(wrong, u))


def _nan_metrics(n_tied: int = 0) -> dict:
    nan = float("nan")
    out = {}
    for name in METRICS:
        out[name], out[f"{name}_ci"] = nan, [nan, nan]
    out["n_tied_at_cutoff"] = n_tied
    return out


def _tied_at_cutoff(unc: np.ndarray) -> int:
    """How many questions share the score at the 50% cut while some of them are kept and some not."""
    u, keep = _unc(unc), retained_mask(unc)
    if keep.all() or not keep.any():
        return 0
    cut = u[keep].max()
    tied = u == cut
    return int(tied.sum()) if (~keep & tied).any() else 0


def resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap's question resamples [n_boot, n]: the same for every score (paired comparisons)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resample_counts(n: int, n_boot: int, seed: int, chunk: int = 2000) -> np.ndarray:
    """Seeded question resamples as counts [n_boot, n]: how often each question is drawn (n with
    replacement) in each resample (uint16 for n < 65536), the form the fast acc50 bootstrap reads
    (`acc50_draws`); every score compared on the same counts is paired."""
    dtype = np.uint16 if n < 2**16 else np.uint32
    out = np.zeros((n_boot, n), dtype=dtype)
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        flat = idx + (np.arange(rows) * n)[:, None]
        out[start : start + rows] = np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n)
    return out


def acc50_draws(unc, correct, counts: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """Tie-averaged acc50 (module docstring) of one score on each resample given by `counts` [B, n]
    (`resample_counts`; a row of ones is the data itself): [B]. A question drawn c times counts c times."""
    u = _unc(unc)
    y = np.asarray(correct, dtype=np.float64)
    order = np.argsort(u, kind="stable")
    u_sorted = u[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    ties = starts.size < u_sorted.size  # without ties every question is its own block
    right = (y[order] > 0.5).astype(np.int32)
    out = np.empty(counts.shape[0])
    k = math.ceil(counts.shape[1] / 2)
    for lo in range(0, counts.shape[0], chunk):
        c = counts[lo : lo + chunk][:, order].astype(np.int32)  # [rows, n] in score order
        hits = c * right
        size = np.add.reduceat(c, starts, axis=1) if ties else c  # [rows, blocks]
        hits = np.add.reduceat(hits, starts, axis=1) if ties else hits
        cum_size, cum_hits = np.cumsum(size, axis=1), np.cumsum(hits, axis=1)
        rows = np.arange(c.shape[0])
        cut = np.sum(cum_size < k, axis=1)  # the block holding position k
        at_size, at_hits = size[rows, cut], hits[rows, cut]
        before = cum_size[rows, cut] - at_size
        out[lo : lo + chunk] = (cum_hits[rows, cut] - at_hits + (k - before) * at_hits / at_size) / k
    return out


def acc50(unc, correct) -> float:
    """Tie-averaged accuracy on the ceil(n/2) least uncertain questions (module docstring)."""
    unc = np.asarray(unc, dtype=np.float64)
    if unc.size == 0:
        return float("nan")
    return float(acc50_draws(unc, correct, np.ones((1, unc.size), dtype=np.uint16))[0])


def metric_draws(unc, correct, idx: np.ndarray) -> tuple[dict, dict]:
    """(point metrics, bootstrap metrics [len(idx)] per name in METRICS) of one score on the resamples `idx`
    (`resamples`); NaN unc counts as most uncertain. The point AUROC is sklearn's (the same value)."""
    unc = np.asarray(unc, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    point = {name: float(v[0]) for name, v in _batch_metrics(unc[None], correct[None]).items()}
    point["auroc"] = _auroc(unc, correct)  # the headline AUROC is sklearn's; the resamples use the same formula
    boot = _batch_metrics(unc[idx], correct[idx]) if len(idx) else {name: np.zeros(0) for name in METRICS}
    return point, boot


def _from_draws(unc: np.ndarray, point: dict, boot: dict) -> dict:
    out = {"n_tied_at_cutoff": _tied_at_cutoff(unc)}
    for name in METRICS:
        values = boot[name][~np.isnan(boot[name])]
        ci = np.percentile(values, [2.5, 97.5]) if values.size and not np.isnan(point[name]) else [np.nan, np.nan]
        out[name], out[f"{name}_ci"] = point[name], [float(ci[0]), float(ci[1])]
    return out


def method_metrics(unc, correct, *, n_boot: int = 1000, seed: int = 0, draws: dict | None = None) -> dict:
    """Accuracy at 50% coverage, AUROC for wrong answers, PRR (Malinin et al.), AUARC; 95% bootstrap CIs.

    Returns {"acc50", "acc50_ci", "auroc", "auroc_ci", "prr", "prr_ci", "auarc", "auarc_ci",
    "n_tied_at_cutoff"}; NaN where undefined (all answers right or all wrong: AUROC and PRR; a score
    that is NaN everywhere: all). CIs: 2.5 / 97.5 percentiles of `n_boot` question resamples (seeded,
    `resamples`). `draws`: the (point, bootstrap) metrics of this score on those resamples when already
    computed (`metric_draws`).
    """
    unc = np.asarray(unc, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if unc.shape != correct.shape or unc.ndim != 1:
        raise LabError(f"Scores ({unc.shape}) and correctness ({correct.shape}) must be two equal-length lists.")
    if unc.size == 0 or np.isnan(unc).all():
        return _nan_metrics()
    point, boot = draws if draws is not None else metric_draws(unc, correct, resamples(unc.size, n_boot, seed))
    return _from_draws(unc, point, boot)


def _aligned_correct(scores_df: pd.DataFrame, correct) -> np.ndarray:
    if isinstance(correct, pd.Series):
        missing = scores_df.index.difference(correct.index)
        if len(missing):
            raise LabError(f"No correctness for {len(missing)} question(s), e.g. {missing[0]!r}.")
        correct = correct.reindex(scores_df.index)
    values = np.asarray(correct, dtype=np.float64)
    if values.shape != (len(scores_df),):
        raise LabError(f"Got {values.size} correctness values for {len(scores_df)} scored questions.")
    if np.isnan(values).any():
        raise LabError("Some answers are not graded (correctness is missing).")
    return values


def comparison(
    scores_df: pd.DataFrame,
    correct,
    *,
    usual: str = USUAL_SCORE,
    semantic: str = SEMANTIC_SCORE,
    kinds: dict[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    draws: dict | None = None,
) -> dict:
    """A1 (accuracy on all), A2 (on the 50% most certain by `usual`), A3 (same by `semantic`), and
    `method_metrics` for every column of `scores_df` (JSON-serialisable; NaN where undefined); "A1_ci": the
    95% interval of A1 on the same resamples.

    `correct`: bools in the row order of scores_df, or a Series indexed by question id. `draws`: a dict that
    receives each score's `metric_draws` (for engine.uq.paired to reuse the same resamples' metrics).
    """
    from engine.uq.estimators import ESTIMATORS

    for role, name in (("usual", usual), ("semantic", semantic)):
        if name not in scores_df.columns:
            raise LabError(f"The {role} score '{name}' is not among the scores: {list(scores_df.columns)}.")
    values = _aligned_correct(scores_df, correct)
    kinds = dict(kinds or {})
    idx = resamples(values.size, n_boot, seed)
    draws = {} if draws is None else draws
    methods = {}
    for name in scores_df.columns:
        kind = kinds.get(name) or (ESTIMATORS[name].kind if name in ESTIMATORS else "other")
        unc = scores_df[name].to_numpy(dtype=np.float64)
        if values.size and not np.isnan(unc).all():
            draws[name] = metric_draws(unc, values, idx)
        methods[name] = {"kind": kind, **method_metrics(unc, values, draws=draws.get(name))}
    a1_boot = values[idx].mean(axis=1) if values.size and n_boot > 0 else np.zeros(0)
    a1_ci = np.percentile(a1_boot, [2.5, 97.5]).tolist() if a1_boot.size else [float("nan")] * 2
    return {
        "n": int(values.size),
        "A1": float(np.mean(values)) if values.size else float("nan"),
        "A1_ci": [float(v) for v in a1_ci],
        "A2": methods[usual]["acc50"],
        "A3": methods[semantic]["acc50"],
        "usual_method": usual,
        "semantic_method": semantic,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "methods": methods,
    }


def rejection_curves(scores_df: pd.DataFrame, correct) -> pd.DataFrame:
    """Accuracy-rejection curves: (method, rejected_fraction, accuracy), rejecting the most uncertain first."""
    values = _aligned_correct(scores_df, correct)
    n = values.size
    rejected = np.arange(n) / n if n else np.zeros(0)
    frames = [
        pd.DataFrame(
            {"method": name, "rejected_fraction": rejected, "accuracy": accuracy_curve(scores_df[name], values)[::-1]}
        )
        for name in scores_df.columns
        if n and not scores_df[name].isna().all()
    ]
    if not frames:
        return pd.DataFrame({"method": [], "rejected_fraction": [], "accuracy": []})
    return pd.concat(frames, ignore_index=True)


def format_value(value: float | None, ci: list[float] | None = None) -> str:
    """ "0.712 [0.650, 0.770]" (3 decimals, the interval when given); "n/a" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3f}"
    if ci and not any(x is None or math.isnan(x) for x in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def format_difference(d: dict | None) -> str:
    """A paired difference {estimate, ci_low, ci_high, p, p_holm} as "+0.012 [-0.010, +0.034], p_Holm 0.41"."""
    if not d or d.get("estimate") is None or math.isnan(d["estimate"]):
        return "n/a"
    text = f"{d['estimate']:+.3f}"
    if d.get("ci_low") is not None and not math.isnan(d["ci_low"]):
        text += f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    if d.get("p_holm") is not None and not math.isnan(d["p_holm"]):
        text += f", p_Holm {d['p_holm']:.2g}"
    return text


def summary_markdown(comparison_dict: dict) -> str:
    """A1 / A2 / A3 in one line and a Markdown table of every score's metrics with 95% intervals (and, when
    the methods carry "diff_vs_usual", each score's paired difference from the usual score)."""
    c = comparison_dict
    diffs = any(m.get("diff_vs_usual") for m in c["methods"].values())
    header = "| score | kind | accuracy at 50% | AUROC (wrong) | PRR | AUARC |"
    rule = "|---|---|---|---|---|---|"
    if diffs:
        header += " Δ accuracy at 50% | Δ AUROC | Δ AUARC |"
        rule += "---|---|---|"
    lines = [
        f"**A1** = {format_value(c['A1'])} (all {c['n']} questions) · "
        f"**A2** = {format_value(c['A2'])} (50% most certain by `{c['usual_method']}`) · "
        f"**A3** = {format_value(c['A3'])} (50% most certain by `{c['semantic_method']}`)",
        "",
        header,
        rule,
    ]
    for name, m in c["methods"].items():
        cells = [format_value(m[k], m[f"{k}_ci"]) for k in METRICS]
        if diffs:
            cells += [format_difference((m.get("diff_vs_usual") or {}).get(k)) for k in DIFF_METRICS]
        lines.append(f"| {name} | {m['kind']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Brackets: 95% bootstrap intervals ({c.get('n_boot', '?')} resamples of the questions).")
    if diffs:
        lines.append(
            f"Δ: the score minus `{c['usual_method']}` on the same resamples (paired), Holm-adjusted p over all "
            "scores compared (one family per metric)."
        )
    return "\n".join(lines)
