"""The study's report (engine.uq.study): summary.md with the answer, the tables and how it was made, and
PNG figures (Altair charts rendered by vl-convert), written from evaluations of cached runs only.

Figures, one facet per question set:
- a1_a2_a3.png: A1 / A2 / A3 with 95% bootstrap intervals under each judge;
- rejection_curves.png: accuracy of the retained answers as the most uncertain are rejected, for the
  usual score behind A2, the semantic score behind A3, the best decomposition score (by AUROC), the
  strongest baselines (answer length, kernel language entropy);
- contrasts.png: the pre-registered contrasts (engine.uq.contrasts) of the primary and same-rank control
  families, ΔAUROC with 95% intervals;
- decomposition_ablation.png: AUROC and accuracy at 50% coverage (A3 of that score) with 95% intervals
  for every decomposition score (spreads, share, subspace probes of the embedding map, the meaning-cluster
  discriminant and the lexical map), the usual score's value as a rule.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.core.figures import chart_png
from engine.core.paths import atomic_write
from engine.core.provenance import git_commit, versions, versions_line
from engine.uq.config import CURVE_BASELINES
from engine.uq.confirmation import PLAN, RESULT
from engine.uq.contrasts import ALPHA, contrasts_markdown
from engine.uq.decompositions import DECOMPOSITIONS
from engine.uq.evaluation import Evaluation
from engine.uq.export import judges_markdown
from engine.uq.marked_contrasts import HandMarkCheck
from engine.uq.metrics import summary_markdown

ATTRIBUTION = (
    'WebQuestions (Berant, Chou, Frostig and Liang, 2013, "Semantic Parsing on Freebase from Question-Answer '
    'Pairs", EMNLP), test split as organised by the brmson/dataset-factoid-webquestions repository; licence '
    "CC-BY 4.0. Its answers come from Freebase and are sometimes incomplete: a right answer can miss them."
)
FIGURES = {
    "a1_a2_a3": "A1 / A2 / A3 under each judge (95% bootstrap intervals)",
    "rejection_curves": "Accuracy-rejection curves (chosen judge)",
    "decomposition_ablation": "Decomposition ablation: AUROC and accuracy at 50% coverage per decomposition score",
}


# ---------------------------------------------------------------- figures


def _ci(values) -> tuple[float, float]:
    low, high = (values or [math.nan, math.nan])[:2]
    return (math.nan if low is None else low), (math.nan if high is None else high)


def a123_frame(evaluations: Sequence[tuple[str, Evaluation]]) -> pd.DataFrame:
    """Rows (set, judge, quantity A1/A2/A3, value, low, high) for the A1/A2/A3 figure."""
    rows = []
    for title, evaluation in evaluations:
        for t in evaluation.summary.judges:
            for quantity, value, ci in (("A1", t.A1, t.A1_ci), ("A2", t.A2, t.A2_ci), ("A3", t.A3, t.A3_ci)):
                low, high = _ci(ci)
                rows.append(
                    {"set": title, "judge": t.judge, "quantity": quantity, "value": value, "low": low, "high": high}
                )
    return pd.DataFrame(rows)


def _best(methods: dict[str, dict], kind: str) -> str | None:
    scored = {n: m["auroc"] for n, m in methods.items() if m["kind"] == kind and not _nan(m["auroc"])}
    return max(scored, key=scored.get) if scored else None


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def curve_methods(evaluation: Evaluation) -> list[str]:
    """The scores drawn in the rejection curves (see the module docstring), those that were computed."""
    s = evaluation.summary
    chosen = [
        s.usual_method,
        s.semantic_method,
        _best(s.methods, "decomposition"),
        *CURVE_BASELINES,
    ]
    computed = set(evaluation.curves["method"]) if not evaluation.curves.empty else set()
    return list(dict.fromkeys(n for n in chosen if n and n in computed))


def curves_frame(evaluations: Sequence[tuple[str, Evaluation]]) -> pd.DataFrame:
    frames = []
    for title, evaluation in evaluations:
        curves = evaluation.curves[evaluation.curves["method"].isin(curve_methods(evaluation))].copy()
        curves["set"] = title
        frames.append(curves)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ablation_frame(evaluations: Sequence[tuple[str, Evaluation]]) -> pd.DataFrame:
    """Rows (set, score, decomposition, metric, value, low, high, usual) for every decomposition score."""
    rows = []
    for title, evaluation in evaluations:
        s = evaluation.summary
        usual = s.methods[s.usual_method]
        for name, m in s.methods.items():
            if m["kind"] != "decomposition":
                continue
            decomposition = next((d for d in DECOMPOSITIONS if d in name), "other")
            for metric, label in (("auroc", "AUROC (wrong answers)"), ("acc50", "accuracy at 50% coverage")):
                low, high = _ci(m[f"{metric}_ci"])
                rows.append(
                    {
                        "set": title,
                        "score": name,
                        "decomposition": decomposition,
                        "metric": label,
                        "value": m[metric],
                        "low": low,
                        "high": high,
                        "usual": usual[metric],
                    }
                )
    return pd.DataFrame(rows)


QUANTITIES = ("A1", "A2", "A3")  # the bars, in this order


def a123_chart(frame: pd.DataFrame, *, by_set: bool = True, order: Sequence[str] | None = None, title: str = ""):
    """A1 / A2 / A3 as bars with their 95% bootstrap intervals (whiskers), one panel per judge (in the
    frame's order), one row per set when `by_set` (sets in `order`). `frame`: a123_frame's rows."""
    import altair as alt

    judges = list(dict.fromkeys(frame["judge"])) if len(frame) else []
    x = alt.X("quantity:N", title=None, sort=list(QUANTITIES), axis=alt.Axis(labelAngle=0, labelLimit=0))
    tooltip = [
        alt.Tooltip("judge:N"),
        alt.Tooltip("quantity:N"),
        alt.Tooltip("value:Q", title="accuracy", format=".3f"),
        alt.Tooltip("low:Q", title="95% CI low", format=".3f"),
        alt.Tooltip("high:Q", title="95% CI high", format=".3f"),
    ]
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("value:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(titleLimit=0)),
            color=alt.Color("quantity:N", legend=None, sort=list(QUANTITIES)),
            tooltip=tooltip,
        )
    )
    whiskers = (
        alt.Chart()
        .mark_errorbar(ticks=True, color="black")
        .encode(x=x, y=alt.Y("low:Q", title="accuracy"), y2="high:Q", tooltip=tooltip)
    )
    labels = (
        alt.Chart()
        .transform_calculate(top="isValid(datum.high) && isFinite(datum.high) ? datum.high : datum.value")
        .mark_text(dy=-6, baseline="bottom", fontSize=11)
        .encode(x=x, y=alt.Y("top:Q"), text=alt.Text("value:Q", format=".2f"))
    )
    column = alt.Column("judge:N", title="judge", sort=judges, header=alt.Header(labelLimit=0))
    layered = alt.layer(bars, whiskers, labels, data=frame).properties(width=120, height=200)
    if by_set:
        chart = layered.facet(column=column, row=alt.Row("set:N", title=None, sort=list(order or [])))
    else:
        chart = layered.facet(column=column)
    return chart.properties(title=title) if title else chart


def curves_chart(
    frame: pd.DataFrame,
    *,
    highlight: Sequence[str] = (),
    by_set: bool = True,
    order: Sequence[str] | None = None,
    width: int | str = 320,
    title: str = "",
):
    """Accuracy of the retained answers as the most uncertain are rejected, one line per score
    (`frame`: method, rejected_fraction, accuracy[, set]). Scores in `highlight` (the usual score behind
    A2, the semantic score behind A3) drawn strong, the others faded; near any point a rule marks the
    nearest rejected fraction and its tooltip gives every score's accuracy there."""
    import altair as alt

    methods = list(dict.fromkeys(frame["method"])) if len(frame) else []
    strong = [m for m in methods if m in highlight]
    groups = ["rejected_fraction", "set"] if by_set else ["rejected_fraction"]
    x = alt.X(
        "rejected_fraction:Q",
        title="fraction rejected (most uncertain first)",
        axis=alt.Axis(format="%", titleLimit=0, tickCount=10),
        scale=alt.Scale(domain=[0, 1]),
    )
    y = alt.Y("accuracy:Q", title="accuracy of the kept answers", axis=alt.Axis(titleLimit=0))
    color = alt.Color(
        "method:N",
        title="score",
        sort=methods,
        legend=alt.Legend(labelLimit=0, titleLimit=0, orient="right", symbolStrokeWidth=3),
    )
    picked = alt.FieldOneOfPredicate(field="method", oneOf=strong) if strong else None
    lines = (
        alt.Chart()
        .mark_line()
        .encode(
            x=x,
            y=y,
            color=color,
            opacity=alt.condition(picked, alt.value(1.0), alt.value(0.3)) if picked else alt.value(0.9),
            strokeWidth=alt.condition(picked, alt.value(3.0), alt.value(1.5)) if picked else alt.value(2.0),
        )
    )
    hover = alt.selection_point(
        name="curve_hover",
        fields=["rejected_fraction"],
        nearest=True,
        on="pointerover",
        clear="pointerout",
        empty=False,
    )
    tooltip = [alt.Tooltip("rejected_fraction:Q", title="rejected", format=".1%")]
    tooltip += [alt.Tooltip(f"{_field(m)}:Q", title=m, format=".3f") for m in methods]
    rule = (
        alt.Chart()
        .transform_pivot("method", value="accuracy", groupby=groups)
        .mark_rule(color="gray", strokeWidth=6)
        .encode(x=x, opacity=alt.condition(hover, alt.value(0.35), alt.value(0.0)), tooltip=tooltip)
        .add_params(hover)
    )
    points = (
        alt.Chart()
        .mark_point(filled=True, size=40)
        .encode(x=x, y=y, color=color, opacity=alt.condition(hover, alt.value(1.0), alt.value(0.0)))
    )
    # (on a page the height is the whole chart's, axes included: Streamlit fits the chart into it)
    layered = alt.layer(lines, points, rule, data=frame).properties(width=width, height=340)
    if by_set:
        chart = layered.facet(column=alt.Column("set:N", title=None, sort=list(order or [])))
    else:
        chart = layered
    return chart.properties(title=title) if title else chart


def _field(name: str) -> str:
    """A column name as a Vega-Lite field reference (dots and brackets escaped)."""
    return re.sub(r"([.\[\]])", r"\\\1", name)


def charts(evaluations: Sequence[tuple[str, Evaluation]]) -> dict[str, Any]:
    """The three Altair charts of the module docstring, by file stem."""
    import altair as alt

    order = [title for title, _e in evaluations]  # the sets in the study's order, not alphabetical
    a123_chart_ = a123_chart(
        a123_frame(evaluations),
        order=order,
        title="A1 (all) / A2 (50% most certain by the usual score) / A3 (by semantic entropy)",
    )
    highlight = {m for _t, e in evaluations for m in (e.summary.usual_method, e.summary.semantic_method)}
    curves = curves_chart(
        curves_frame(evaluations), highlight=sorted(highlight), order=order, title="Accuracy-rejection curves"
    )
    ablation = ablation_frame(evaluations)
    points = (
        alt.Chart()
        .mark_point(filled=True)
        .encode(
            x=alt.X("value:Q", title=None, scale=alt.Scale(zero=False)),
            y=alt.Y("score:N", title=None, sort=None),
            color=alt.Color("decomposition:N"),
        )
    )
    ranges = alt.Chart().mark_rule().encode(x="low:Q", x2="high:Q", y=alt.Y("score:N", sort=None))
    rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(x="mean(usual):Q")
    ablation_chart = (
        alt.layer(ranges, points, rule, data=ablation)
        .properties(width=260, height=max(120, 16 * ablation["score"].nunique()) if len(ablation) else 120)
        .facet(column=alt.Column("metric:N", title=None), row=alt.Row("set:N", title=None, sort=order))
        .resolve_scale(x="independent")
        .properties(title="Decomposition scores (dashed: the usual score behind A2)")
        .configure_axisY(labelLimit=320)
    )
    out = {"a1_a2_a3": a123_chart_, "rejection_curves": curves, "decomposition_ablation": ablation_chart}
    contrasts = contrasts_frame(evaluations)
    if len(contrasts):
        out["contrasts"] = contrasts_chart(contrasts, order=order)
    return out


def contrasts_frame(evaluations: Sequence[tuple[str, Evaluation]]) -> pd.DataFrame:
    """One row per AUROC contrast of the primary and same-rank control families with an estimate: set,
    family, contrast, estimate and its 95% interval, and whether Holm's p is below 0.05 ("holm")."""
    return contrast_rows([(title, evaluation.summary.contrasts) for title, evaluation in evaluations])


def contrast_rows(sets: Sequence[tuple[str, Sequence[dict]]]) -> pd.DataFrame:
    """`contrasts_frame` of (set title, its summary's contrasts) pairs."""
    rows = []
    for title, contrasts in sets:
        for c in contrasts:
            if c["family"] in ("primary", "same-rank control") and not _nan(c.get("estimate")):
                rows.append(
                    {
                        "set": title,
                        "family": c["family"],
                        "contrast": c["name"],
                        "estimate": c["estimate"],
                        "low": c["ci_low"],
                        "high": c["ci_high"],
                        "holm": "Holm p < 0.05" if c["p_holm"] < 0.05 else "Holm p ≥ 0.05",
                    }
                )
    return pd.DataFrame(rows, columns=["set", "family", "contrast", "estimate", "low", "high", "holm"])


def contrasts_chart(frame: pd.DataFrame, *, order: Sequence[str] | None = None):
    """ΔAUROC (enhanced − baseline) with 95% intervals per contrast, one facet per set; zero as a rule."""
    import altair as alt

    y = alt.Y("contrast:N", title=None, sort=None)
    points = (
        alt.Chart()
        .mark_point(filled=True)
        .encode(
            x=alt.X("estimate:Q", title="ΔAUROC (with the decomposition − without / − same-rank control)"),
            y=y,
            color=alt.Color("family:N"),
            shape=alt.Shape("holm:N", title="within its family"),
        )
    )
    ranges = alt.Chart().mark_rule().encode(x="low:Q", x2="high:Q", y=y, color=alt.Color("family:N"))
    zero = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(x=alt.datum(0))
    return (
        alt.layer(ranges, points, zero, data=frame)
        .properties(width=360, height=max(120, 14 * frame["contrast"].nunique()))
        .facet(row=alt.Row("set:N", title=None, sort=list(order) if order else None))
        .properties(title="Pre-registered contrasts: each method with against without the decomposition (AUROC)")
        .configure_axisY(labelLimit=420)
    )


def save_png(chart, path: Path) -> Path:
    """The chart as a PNG (vl-convert, scale 2), written atomically."""
    atomic_write(path, chart_png(chart))
    return path


# ---------------------------------------------------------------- summary.md


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _decomposition_facts(evaluation: Evaluation) -> str:
    """Held-out R^2 of the embedding map and each decomposition's semantic rank, from the scores' info."""
    info = evaluation.summary.score_info.get("decompositions") or {}
    parts = []
    r2 = [f.get("heldout_r2") for f in (info.get("embedding_map") or {}).get("fold_info", []) if f]
    r2 = [v for v in r2 if isinstance(v, (int, float)) and not math.isnan(v)]
    if r2:
        parts.append(f"the embedding map predicts held-out sentence embeddings with R² {np.mean(r2):.2f}")
    ranks = {name: (info.get(name) or {}).get("semantic_ranks") or [] for name in DECOMPOSITIONS}
    ranks = {name: r for name, r in ranks.items() if r}
    if ranks and evaluation.records:
        d = np.asarray(evaluation.records[0].answer_hidden).shape[-1]
        text = ", ".join(f"{name} {min(r)}–{max(r)}" for name, r in ranks.items())
        parts.append(f"semantic subspace ranks per fold: {text} of {d} dimensions")
    return "; ".join(parts)


def honest_paragraph(manifest: dict, evaluations: Sequence[tuple[str, Evaluation]]) -> str:
    """What this model can and cannot show, with this run's own numbers, and what `--model` changes."""
    model = (manifest.get("config") or {}).get("model", "")
    accuracies = ", ".join(f"A1 = {e.summary.A1:.2f} on {title}" for title, e in evaluations)
    facts = "; ".join(filter(None, (_decomposition_facts(e) for _t, e in evaluations[:1])))
    return (
        f"**What this model can and cannot show.** `{model}` is a 270M-parameter base model: it answers few "
        f"open questions right ({accuracies}), its samples at T = 1 often disagree for reasons that have little "
        "to do with knowing the answer, and its hidden states carry a weak, noisy trace of meaning"
        + (f" ({facts})" if facts else "")
        + ". A result here is therefore about this scale: a decomposition that does not beat mean token NLL "
        "here may still help a model whose hidden states encode meaning more cleanly, and a gain here would "
        "still need confirming on a capable model. Two more limits hold at any scale: correctness comes from "
        "automatic judges against references that are sometimes incomplete (hence the table under each "
        "judge), and the meaning clusters come from MiniLM similarity of short answers (an NLI model can "
        "replace it: `--nli-model`).\n\n"
        "**A bigger model.** The same command with `--model <HF id or folder>` (for example "
        "`python -m engine uq-study --model google/gemma-3-1b-it`, or a 7B model on a GPU) makes new runs "
        "(the run id hashes the model), uses the chat template for instruction-tuned models, places the model "
        "on the GPU when there is one and decodes many more questions per step there (`--batch-questions`, "
        "chosen from free memory by default); scoring and the report are the same code. Generation dominates "
        "the cost (see the wall times above)."
    )


def _layers(evaluations) -> str:
    """The stored hidden layers and the one the scores used (from the records and the scores' info)."""
    for _title, evaluation in evaluations:
        if evaluation.records:
            stored = list(evaluation.records[0].hidden_layers)
            return f"{stored} stored, {evaluation.summary.score_info.get('layer')} scored"
    return "n/a"


def _not_computed(evaluation: Evaluation) -> list[str]:
    """One line per score that could not be computed on this set, with its note."""
    s = evaluation.summary
    notes = s.score_info.get("notes") or {}
    return [f"- `{name}`: {notes.get(name, 'not computed')}" for name, m in s.methods.items() if _nan(m["acc50"])]


def _setup(manifest: dict, sets: Sequence, seconds: dict[str, float], report_machine: dict, evaluations) -> list[str]:
    gen = manifest.get("generation") or {}
    lines = [
        "## How this was made",
        "",
        f"- Command: `{manifest.get('command')}` (or `make study-uq`); rerunning it resumes the saved runs, "
        "and `--report-only` rewrites this report from them without the model.",
        f"- Model `{(manifest.get('config') or {}).get('model')}`; K = {gen.get('samples')} samples at "
        f"T = {gen.get('temperature')} (top-p {gen.get('top_p')}), at most {gen.get('max_new_tokens')} new "
        f"tokens, hidden layers {_layers(evaluations)}; seed {gen.get('seed')} (sampling, cross-fitting and "
        f"bootstrap); WebQuestions sample seed {(manifest.get('config') or {}).get('sample_seed')}.",
    ]
    for study_set, (_title, evaluation) in zip(sets, evaluations):
        spent = sum(float(getattr(r, "seconds", 0.0) or 0.0) for r in evaluation.records)
        lines.append(
            f"- {study_set.title}: {study_set.description}; the first {study_set.total} evaluated; run "
            f"`{study_set.run_id}` (cache/uq/); generation wall time {_minutes(spent)} in all (summed over "
            "sessions)."
        )
    generated = manifest.get("machine") or {}
    lines += [
        f"- Wall time of this call: generation {_minutes(seconds.get('generation_this_call', 0.0))}, scoring and "
        f"report {_minutes(seconds.get('scoring_and_report', 0.0))}.",
        "- Generated on: " + ", ".join(f"{k} {v}" for k, v in generated.items()) + f" ({manifest.get('written')}).",
        "- Report written on: " + ", ".join(f"{k} {v}" for k, v in report_machine.items()) + ".",
        f"- Versions: {versions_line(versions(), git_commit())}.",
        "",
    ]
    return lines


def seed_answer(evaluations: Sequence[tuple[str, Evaluation]], plan: dict | None, confirmed: dict | None) -> list[str]:
    """The seed's question in its own words: A1, A2 (usual score), A3 (semantic entropy), A3 with the
    decomposition (the fixed contrast's enhanced score), then the confirmation's one sentence."""
    lines = ["## The answer", ""]
    explore = next((e for t, e in evaluations if e.summary.contrasts), evaluations[0][1] if evaluations else None)
    enhanced = plan["contrast"]["enhanced"] if plan else None
    if confirmed:
        c = confirmed
        lines += [
            f"On the {c['n_graded']} unseen confirmation questions ({c['judge']} judge; probes and subspaces fitted "
            f"on the {c['n_exploration']} exploration questions): **A1** = {c['A1']:.3f} (answering all) · **A2** = "
            f"{c['A2']:.3f} (the 50% most certain by mean token NLL, the usual score) · **A3** = {c['A3']:.3f} (by "
            f"semantic entropy) · **A3 with the decomposition** = {c['A3_decomposition']:.3f} (by `{enhanced}`; the "
            f"same method without it, `{c['contrast']['baseline']}`: {c['A3_baseline']:.3f}).",
            "",
            f"**{c['sentence']}** (the one pre-registered test: {c['contrast']['name']}, fixed from the exploration "
            f"set, hash `{c['hash'][:12]}`.)",
            "",
        ]
        return lines
    if explore is not None:
        s = explore.summary
        a3d = s.methods.get(enhanced, {}).get("acc50") if enhanced else None
        lines += [
            f"Exploration set, n = {s.n} ({s.judge} judge): **A1** = {s.A1:.3f} · **A2** = {s.A2:.3f} (by "
            f"`{s.usual_method}`, the usual score) · **A3** = {s.A3:.3f} (by `{s.semantic_method}`)"
            + (f" · **A3 with the decomposition** = {a3d:.3f} (by `{enhanced}`)" if a3d is not None else "")
            + ".",
            "",
        ]
    if plan:
        lines += [
            f"**Not confirmed yet.** The contrast fixed for confirmation is *{plan['contrast']['name']}* "
            f"(`{plan['contrast']['enhanced']}` against `{plan['contrast']['baseline']}`, hash "
            f"`{plan['hash'][:12]}`); its exploration estimate does not answer the question: run the confirmation "
            "stage (`make study-uq`).",
            "",
        ]
    elif explore is not None:
        lines += [f"Exploration verdict: {explore.summary.verdict.sentence}", ""]
    return lines


MARKER_NOTES = "marker_notes.md"  # beside a marks file: its "**Who marked:**" line names the marker
AGREEMENT_NOTES = "agreement.md"  # beside a marks file: how the marks were made and read


def _marker(marks_path: Path) -> str:
    """Who made the marks, from the "**Who marked:**" line of MARKER_NOTES beside the marks file (up to the
    first parenthesis, comma or full stop); "" when there is none."""
    notes = marks_path.parent / MARKER_NOTES
    text = notes.read_text(encoding="utf-8") if notes.is_file() else ""
    found = re.search(r"\*\*Who marked:\*\*\s*([^(,.;\n]+)", text)
    return found.group(1).strip() if found else ""


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def hand_marks_section(check: HandMarkCheck, out: Path, plan: dict | None, confirmed: dict | None) -> list[str]:
    """The paragraph on a marks file (engine.uq.marked_contrasts.check_hand_marks): the judge that agrees
    best with the marks, then the contrast fixed for confirmation graded by the marks on their random sample
    (beside the chosen judge on the same answers) and whether any other primary contrast passes Holm there."""
    marks_path = Path(check.marks_path)
    notes = marks_path.parent / AGREEMENT_NOTES
    target = notes if notes.is_file() else marks_path
    link = Path(os.path.relpath(target.resolve(), Path(out).resolve())).as_posix()
    marker = _marker(marks_path)
    where = f"{'by ' + marker + ': ' if marker else ''}[{link}]({link})"
    if not check.n_marked:
        return [f"**Against hand marks.** None of the marks in {where} is of this run's answers. {check.note}", ""]
    table = check.agreement.assign(rank=check.agreement["kappa"].fillna(-np.inf))
    best = table.sort_values(["rank", "accuracy"], ascending=False, kind="stable").iloc[0]
    kappa = "" if _nan(best["kappa"]) else f", stratum-weighted Cohen's kappa {best['kappa']:.2f}"
    lines = [
        f"**Against hand marks.** The `{best['judge']}` judge agrees best with {check.n_marked} answers marked "
        f"blind (accuracy {best['accuracy']:.2f}{kappa}; {where})."
    ]
    random_part = check.part("random sample")
    if random_part is None:
        lines[0] += f" The contrasts are not graded by them: {check.error}"
        return [lines[0], ""]
    primary = [r for r in random_part.rows if r["family"] == "primary" and not _nan(r["p_holm"])]
    name = plan["contrast"]["name"] if plan else None
    focal = next((r for r in primary if r["name"] == name), None)
    judged = {r["name"]: r for r in random_part.judge_rows}
    passes = [r for r in primary if r["estimate"] > 0 and r["p_holm"] < ALPHA]
    lead = (
        f" Graded by those marks instead of the judge, on the {random_part.n} of them drawn at random (the "
        "disagreement stratum left out: it over-samples borderline answers), "
    )
    if focal is None:
        lines[0] += lead + random_part.verdict.sentence
        shown = passes
    else:
        which = "confirmed contrast" if confirmed and str(confirmed.get("sentence", "")).startswith("Useful") else (
            "contrast fixed for confirmation"
        )
        holds = "holds" if focal in passes else "does not pass Holm at that n"
        j = judged.get(focal["name"])
        beside = (
            f" (the `{check.judge_name}` judge on the same answers: {j['estimate']:+.3f}, "
            f"Holm p = {_p(j['p_holm'])})"
            if j and not _nan(j["estimate"])
            else ""
        )
        others = [r for r in passes if r is not focal]
        rest = [r for r in primary if r is not focal]
        if others:
            k = len(others)
            tail = f"{k} other primary contrast{'s' if k > 1 else ''} also pass{'' if k > 1 else 'es'} Holm there"
        else:
            mdes = [r["mde"] for r in rest if not _nan(r["mde"])]
            span = f" (minimal detectable effects {min(mdes):.2f}–{max(mdes):.2f})" if mdes else ""
            tail = f"no other primary contrast passes Holm at that n{span}"
        lines[0] += lead + f"the {which} {holds}{beside}; {tail}:"
        shown = [focal, *others]
    lines.append("")
    if shown:
        lines += [
            "| set | label | n (right / wrong) | contrast | ΔAUROC | 95% CI | p | p (Holm) | MDE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        n_text = f"{random_part.n} ({random_part.n_right} / {random_part.n_wrong})"
        for r in shown:
            lines.append(
                f"| exploration, random sample of the marked answers | hand marks | {n_text} | {r['name']} | "
                f"{r['estimate']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p']:.3g} | "
                f"{r['p_holm']:.3g} | {r['mde']:.3f} |"
            )
        lines.append("")
    return lines


def summary_report(
    manifest: dict,
    sets: Sequence,
    evaluations: Sequence[tuple[str, Evaluation]],
    *,
    seconds: dict[str, float],
    report_machine: dict,
    plan: dict | None = None,
    confirmed: dict | None = None,
    hand_marks: HandMarkCheck | None = None,
    out: Path = Path("."),
) -> str:
    """summary.md of the study: the seed's answer first (A1, A2, A3, A3 with the decomposition, the
    confirmation's sentence, the exploration run against hand marks when `hand_marks` is given; links relative
    to `out`), the contrast tables, the tables under each judge, the figures, how it was made."""
    lines = ["# Is decomposition into semantic / surface subspaces useful for reducing errors?", ""]
    lines += seed_answer(evaluations, plan, confirmed)
    if hand_marks is not None:
        lines += hand_marks_section(hand_marks, out, plan, confirmed)
    lines += ["## Pre-registered contrasts (with against without the decomposition)", ""]
    for title, evaluation in evaluations:
        s = evaluation.summary
        if not s.contrasts:
            continue
        lines += [
            f"### {title} ({s.judge} judge, n = {s.n})",
            "",
            "Primary family: each method on the decomposition's semantic subspace against the same method on the "
            "full hidden state, AUROC of wrong-answer detection, DeLong's one-sided paired test, Holm within the "
            "family; beside it acc@50 (tie-averaged, paired bootstrap of "
            f"{s.n_boot_test} resamples). Same-rank controls: the semantic subspace against a random and a PCA "
            "subspace of the same rank per fold through the same method. Exploratory: against the usual score. "
            f"Every cross-fitted score is the mean over {s.n_seeds} fold seeds; the last column is the seed-to-seed "
            "spread of the AUROC difference. MDE: the minimal detectable effect (80% power) at Holm's strictest "
            "level.",
            "",
            contrasts_markdown(s.contrasts),
            "",
        ]
    if any(e.summary.contrasts for _t, e in evaluations):
        lines += ["![contrasts](figures/contrasts.png)", ""]
    for title, evaluation in evaluations:
        s = evaluation.summary
        lines += [f"**{title}, n = {s.n}, {s.judge} judge:** {s.verdict.sentence}", "", s.length.sentence, ""]
    lines += ["## A1 / A2 / A3 under each judge", ""]
    for title, evaluation in evaluations:
        s = evaluation.summary
        lines += [
            f"### {title}",
            "",
            f"A1 = accuracy on all {s.n} questions; A2 = on the 50% most certain by `{s.usual_method}`; A3 = "
            f"by `{s.semantic_method}` (both tie-averaged at the cut). A3 − A2: paired bootstrap difference "
            f"({s.n_boot_test} resamples), Holm-adjusted p over all scores compared with the usual one (exploratory). "
            "Decompositions: the verdict under that judge (the chosen judge: on the primary contrasts; another "
            "judge: its correctness probes from one fold seed).",
            "",
            judges_markdown(s),
            "",
        ]
    lines += ["![A1 / A2 / A3](figures/a1_a2_a3.png)", ""]
    lines += ["## Every score against the usual score", ""]
    for title, evaluation in evaluations:
        s = evaluation.summary
        lines += [f"### {title} ({s.judge} judge)", "", summary_markdown(s.as_dict()), ""]
        missing = _not_computed(evaluation)
        if missing:
            lines += ["Not computed on this set:", "", *missing, ""]
    lines += [
        "## Figures",
        "",
        f"{FIGURES['rejection_curves']}: ![rejection curves](figures/rejection_curves.png)",
        "",
        f"{FIGURES['decomposition_ablation']}: ![ablation](figures/decomposition_ablation.png)",
        "",
        "Per set: `<set>/results.csv` (every question, answer, verdicts and score), `<set>/summary.json` "
        "(every number above, with `diff_vs_usual` per score) and `<set>/summary.md`.",
        "",
    ]
    lines += _setup(manifest, sets, seconds, report_machine, evaluations)
    lines += [honest_paragraph(manifest, evaluations), "", "## Data", "", ATTRIBUTION, ""]
    return "\n".join(lines)


def write_report(
    out: Path,
    manifest: dict,
    evaluations: Sequence[tuple[Any, Evaluation]],
    *,
    seconds: dict[str, float],
    report_machine: dict,
    hand_marks: HandMarkCheck | None = None,
) -> list[Path]:
    """summary.md and figures/*.png in `out` from (StudySet, Evaluation) pairs (and the exploration run's
    hand marks, when given); returns the paths."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    titled = [(s.title, e) for s, e in evaluations]
    paths = [save_png(chart, out / "figures" / f"{stem}.png") for stem, chart in charts(titled).items()]
    plan = json.loads((out / PLAN).read_text(encoding="utf-8")) if (out / PLAN).is_file() else None
    confirmed = json.loads((out / RESULT).read_text(encoding="utf-8")) if (out / RESULT).is_file() else None
    text = summary_report(
        manifest,
        [s for s, _e in evaluations],
        titled,
        seconds=seconds,
        report_machine=report_machine,
        plan=plan,
        confirmed=confirmed,
        hand_marks=hand_marks,
        out=out,
    )
    atomic_write(out / "summary.md", text.encode("utf-8"))
    return [out / "summary.md", *paths]
