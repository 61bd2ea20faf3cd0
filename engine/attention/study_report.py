"""The attention study's report folder (reports/attention/): summary.md, tables, figures, page data.

Files: summary.md (verdict, contrasts, per-layer table, every head, command, versions, wall time; its
first line says so when the run is smaller than the study), heads.csv, layers.csv, contrasts.csv,
atlas.json (the page's data: `StudyResult.to_json()`), atlas.png (every head coloured by the best
external function, and by whether its self-explanation beats the no-explanation control), layers.png
(mean top-1 of each explainer per layer with 95% intervals). Written into a temporary sibling folder
and swapped in, so a reader never sees a half-written report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from engine.attention.config import SCORE_QUERIES
from engine.attention.rules import RULE_TITLES, RULES
from engine.attention.study_config import HELDOUT_PROMPTS, TRAIN_PROMPTS
from engine.attention.study_result import LAYER_DELTA, StudyResult, _clean
from engine.core.figures import chart_png
from engine.core.provenance import git_commit, machine, machine_line, provenance, utc_now, versions, versions_line

HEAD_COLUMNS = (  # the table of every studied head, in the report and on the page
    "layer.head",
    "detector_rule",
    "self_rule",
    "top1 self-text",
    "top1 self-rule",
    "top1 detector",
    "top1 probe",
    "top1 control: no explanation",
    "top1 control: other head",
    "self_vs_control",
    "explanation",
)
SELF_COLOURS = {
    "beats the control": "#1a9850",
    "no difference": "#bdbdbd",
    "below the control": "#d73027",
    "no self-explanation": "#ffffff",
}


def atlas_chart(result: StudyResult):
    """Two panels of layers x heads: the detector's rule (best external function) and self vs control."""
    import altair as alt

    frame = result.atlas().copy()
    if "explanation" in frame.columns:  # a model's text may hold control characters, which SVG/XML refuses
        frame["explanation"] = frame["explanation"].map(
            lambda text: re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", text) if isinstance(text, str) else text
        )
    frame["self top-1"] = frame.get("top1 self-text")
    n_layers, n_heads = result.shape
    base = alt.Chart(frame).encode(  # every layer and head of the model on the axes, studied or not
        x=alt.X("head:O", title="head", scale=alt.Scale(domain=list(range(n_heads)))),
        y=alt.Y("layer:O", title="layer", scale=alt.Scale(domain=list(range(n_layers)))),
        tooltip=[
            c
            for c in (
                "layer.head",
                "detector_title",
                "self_vs_control",
                "top1 detector",
                "top1 probe",
                "self top-1",
                "explanation",
            )
            if c in frame.columns
        ],
    )
    order = [RULE_TITLES[r] for r in RULES]
    left = (
        base.mark_rect(stroke="white")
        .encode(
            color=alt.Color(
                "detector_title:N",
                title="best external function (detector)",
                legend=alt.Legend(titleLimit=0, labelLimit=0),
                sort=order,
                scale=alt.Scale(domain=order, scheme="tableau10"),
            )
        )
        .properties(title="best-fitting library rule", width=24 * result.shape[1] + 40, height=16 * result.shape[0])
    )
    right = (
        base.mark_rect(stroke="white")
        .encode(
            color=alt.Color(
                "self_vs_control:N",
                title="self-explanation vs no-explanation control",
                legend=alt.Legend(titleLimit=0, labelLimit=0),
                scale=alt.Scale(domain=list(SELF_COLOURS), range=list(SELF_COLOURS.values())),
            )
        )
        .properties(
            title="self-text top-1 vs control (95% CI, per head)",
            width=24 * result.shape[1] + 40,
            height=16 * result.shape[0],
        )
    )
    return (
        alt.hconcat(left, right)
        .resolve_scale(color="independent")
        .properties(title=f"{result.model}: {result.heads_how}")
    )


def layers_chart(result: StudyResult):
    """Mean held-out top-1 per layer for each explainer, with 95% bootstrap intervals."""
    import altair as alt

    frame = result.layers()
    frame = frame[frame["explainer"] != LAYER_DELTA]
    x = alt.X("layer:O", title="layer")
    colour = alt.Color("explainer:N", title="explainer")
    lines = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("top1:Q", title="top-1 agreement (held-out)", scale=alt.Scale(domain=[0, 1])),
            color=colour,
            tooltip=["layer", "explainer", alt.Tooltip("top1:Q", format=".3f"), "n_heads"],
        )
    )
    bands = (
        alt.Chart(frame)
        .mark_errorbar(opacity=0.6)
        .encode(x=x, y=alt.Y("ci_low:Q", title="top-1 agreement (held-out)"), y2="ci_high:Q", color=colour)
    )
    return (bands + lines).properties(width=560, height=280, title="Per layer: mean top-1 of each explainer")


def command_line(config: dict) -> str:
    """`python -m engine attention-study` with the non-default flags of this run."""
    from engine.attention.study_config import StudyConfig
    from engine.core.options import default_of

    parts = ["python -m engine attention-study"]
    for name, value in config.items():
        default = default_of(StudyConfig, name)
        if (list(default) if isinstance(default, tuple) else default) == value or name == "report_only":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _cell(value, floats: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return floats.format(value)
    return str(value).replace("\n", " ").replace("|", "\\|")


def _md_table(frame: pd.DataFrame, floats: str = "{:.3f}") -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floats) for v in row) + " |")
    return "\n".join(lines)


def summary_markdown(result: StudyResult, reduced: bool, command: str) -> str:
    """summary.md (module docstring)."""
    lines = []
    full_prompts = (
        result.n_train >= TRAIN_PROMPTS
        and result.n_heldout >= HELDOUT_PROMPTS
        and int(result.config["queries"]) >= SCORE_QUERIES
    )
    if reduced and full_prompts:
        lines.append(
            f"**A SAMPLE of heads, not every head:** {result.heads_how}, at the study's sizes ({result.n_train} "
            f"train / {result.n_heldout} held-out prompts, {result.config['queries']} queries per prompt); the "
            "verdict is about the sampled heads."
        )
        lines.append("")
    elif reduced:
        lines.append(
            f"**REDUCED RUN, not the study:** {result.n_train} train / {result.n_heldout} held-out prompts, "
            f"{result.config['queries']} queries per prompt, {result.heads_how}; it proves the command end to end. "
            "Run `make study-attention` for the study."
        )
        lines.append("")
    lines += [
        "# Can the model explain its own attention heads better than external methods?",
        "",
        f"**Verdict.** {result.verdict}",
        "",
        f"Model `{result.model}` ({result.shape[0]} layers x {result.shape[1]} heads); {result.heads_how}; "
        f"{result.n_train} train and {result.n_heldout} held-out prompts (disjoint), {result.config['queries']} "
        f"scored query tokens per held-out prompt; the model is shown the head as `{result.mode}`. Wall time "
        f"{result.wall_seconds / 60:.1f} min in the last call ({result.compute_seconds / 60:.1f} min of head work "
        "summed over calls, resumed heads included).",
        "",
        f"Cost: {result.head_seconds:.0f} s per studied head on average (explanation, rule pick, fits and "
        f"{result.n_heldout} held-out simulations), {result.control_seconds:.0f} s for the no-explanation control; "
        f"at this speed every head of the model with {HELDOUT_PROMPTS} held-out prompts would take about "
        f"{result.full_study_seconds(HELDOUT_PROMPTS) / 3600:.1f} h (StudyResult.full_study_seconds).",
        "",
        "## Contrasts (top-1 agreement on held-out prompts; Holm within this family)",
        "",
        f"Bootstrap over the {result.n_heldout} held-out prompts, {result.n_boot} resamples applied jointly to "
        f"all heads; smallest attainable p x family size = 2/(B+1) x {len(result.family)} = "
        f"{result.min_p_times_family:.4f} (below alpha = 0.05). The self-rule agreement's p is a permutation "
        "test over heads.",
        "",
    ]
    if result.contrasts:
        lines.append(
            _md_table(pd.DataFrame(result.contrasts)[["name", "estimate", "ci_low", "ci_high", "p", "p_holm"]])
        )
    else:
        lines.append("No self-explanation was run: no contrast.")
    if result.correlation_contrasts:
        lines += ["", "Correlation of predicted and real weights (descriptive, unadjusted):", ""]
        lines.append(_md_table(pd.DataFrame(result.correlation_contrasts)[["name", "estimate", "ci_low", "ci_high"]]))
    if result.agreement:
        a = result.agreement
        lines += [
            "",
            f"Self-rule: the model picks the detector's rule for {a['agreement']:.1%} of {a['n_heads']} heads; "
            f"chance from the two pickings' rule shares {a['chance']:.1%}, uniform over the {len(RULES)} rules "
            f"{a['uniform_chance']:.1%}; one-sided permutation p = {a['p']:.3g}.",
        ]
    table = result.table()
    means = {c[5:]: table[c].mean() for c in table.columns if c.startswith("top1 ")}
    lines += [
        "",
        "## Mean over heads",
        "",
        _md_table(pd.DataFrame([{"explainer": k, "top-1": v, "r": table[f"r {k}"].mean()} for k, v in means.items()])),
    ]
    lines += ["", "## Per layer", "", "![per layer](layers.png)", ""]
    layers = result.layers()
    wide = layers.pivot_table(index="layer", columns="explainer", values="top1").reset_index()
    lines.append(_md_table(wide))
    delta = layers[layers["explainer"] == LAYER_DELTA]
    if len(delta):
        lines += ["", f"Per layer, {LAYER_DELTA} (top-1, 95% bootstrap interval, unadjusted):", ""]
        lines.append(_md_table(delta[["layer", "top1", "ci_low", "ci_high", "n_heads"]]))
    lines += ["", "## Head atlas", "", "![atlas](atlas.png)", "", "## Every head", ""]
    show = [c for c in HEAD_COLUMNS if c in table.columns]
    lines.append(_md_table(table[show]))
    lines += [
        "",
        "## Reproduce",
        "",
        f"`{command}` (resumes from cache/attention_study/; `make study-attention` runs the defaults).",
        "",
        f"Versions: {versions_line(versions(), git_commit())}; {machine_line(machine())}. Written {utc_now()}.",
        "",
    ]
    return "\n".join(lines)


def write_report(result: StudyResult, out: str | Path, reduced: bool) -> list[Path]:
    """Every report file into `out` (module docstring), replaced at once; subfolders of `out` (other reports)
    are kept. Returns the paths in `out`."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    command = command_line(result.config)
    (tmp / "summary.md").write_text(summary_markdown(result, reduced, command), encoding="utf-8")
    result.table().to_csv(tmp / "heads.csv", index=False)
    result.layers().to_csv(tmp / "layers.csv", index=False)
    pd.DataFrame(result.contrasts + result.correlation_contrasts).to_csv(tmp / "contrasts.csv", index=False)
    data = _clean({**result.to_json(), "reduced": reduced, "command": command, **provenance()})
    (tmp / "atlas.json").write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    (tmp / "atlas.png").write_bytes(chart_png(atlas_chart(result)))
    (tmp / "layers.png").write_bytes(chart_png(layers_chart(result)))
    if out.exists():
        for child in out.iterdir():  # other reports kept in subfolders (e.g. a second model's) stay
            if child.is_dir() and not (tmp / child.name).exists():
                os.replace(child, tmp / child.name)
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return sorted(out.iterdir())


def load_report(out: str | Path) -> StudyResult | None:
    """The StudyResult of a report folder (its atlas.json), or None when there is none."""
    try:
        data = json.loads((Path(out) / "atlas.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fields = {f for f in StudyResult.__dataclass_fields__}
    data = {k: v for k, v in data.items() if k in fields}
    data["shape"] = tuple(data["shape"])
    return StudyResult(**data)
