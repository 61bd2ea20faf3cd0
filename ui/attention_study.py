"""The attention page's "Whole model" view: the attention study of the loaded model (engine.attention.study)
— can the model explain its own heads better than external methods? — as the head atlas, the verdict,
the contrasts with intervals, the per-layer breakdown and every head's scores.

What it shows, first found first: the finished run of the settings below (cached under
cache/attention_study/, by this page or the command line), else the person's study job that just
finished with other settings, else the committed report (reports/attention/) when it is of this model.
A run smaller than the study says so in a label above everything (`reduced`). The button runs the
study as the person's background job (engine.attention.jobs) under this server's limits (study_heads,
study_prompts, jobs_per_person; a request over one is refused naming it, never clamped), with progress,
ETA and Stop (ui.job_panel); a reload finds the job again. A click on an atlas cell selects that head
for the page's other tabs (and the URL) and opens its view.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.attention import jobs as study_jobs
from engine.attention.config import SCORE_QUERIES
from engine.attention.study import cached_study
from engine.attention.study_config import StudyConfig
from engine.attention.study_report import HEAD_COLUMNS as HEAD_COLUMNS_OF_REPORT
from engine.attention.study_report import layers_chart, load_report
from engine.attention.study_result import StudyResult
from engine.core.errors import LabError
from engine.core.jobs import Job
from engine.core.model import LoadedModel
from engine.core.paths import REPO_ROOT
from ui import access
from ui.attention_atlas import atlas_chart, atlas_frame
from ui.attention_charts import HEAD_PICK, head_from_selection
from ui.attention_common import HEAD_TAB, Shape, select_head
from ui.fields import between, number_field
from ui.figures import show_chart
from ui.job_panel import job_panel
from ui.model_queue import watch_job_queue
from ui.state import model_key, recall, remember
from ui.tables import readable

REPORT_DIR = REPO_ROOT / "reports" / "attention"  # the committed report the view falls back on
SLOT = "attn_study"  # ui.state: the finished study of (model key, settings)
ATLAS_KEY = "att_atlas"
SEED_MAX = 2**31 - 1
# The page's defaults: the committed reduced run's settings (so its cached run is found as is).
PAGE_DEFAULTS = {"train": 12, "heldout": 8, "random": 2, "queries": SCORE_QUERIES, "heads": 6, "seed": 0}
PAGE_BOOT = 2000  # bootstrap resamples of a page run (the committed reduced run's)
FIXED: dict = {}  # further StudyConfig settings of page runs (their defaults unless set here)
CONTRAST_COLUMNS = {  # column -> label shown
    "name": "contrast",
    "estimate": "Δ top-1",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "p": "p",
    "p_holm": "p (Holm)",
}
HEAD_COLUMNS = [  # the report's head table, the detector's rule by its title
    "detector_title" if c == "detector_rule" else c for c in HEAD_COLUMNS_OF_REPORT
]
INTRO = (
    "Every studied head is explained five ways, each turned into a prediction of the head's attention on "
    "held-out prompts and scored by top-1 agreement with the real argmax: the model's own free-text explanation "
    "(simulated by the model), the library rule the model picks for itself, the external detector (best library "
    "rule on train prompts), an external probe on token features, and controls (no explanation, another head's "
    "explanation, BOS, uniform). Intervals come from a bootstrap over held-out prompts applied to all heads "
    "jointly; Holm within the family. `python -m engine attention-study` runs the same without the server's limits."
)


@dataclasses.dataclass(frozen=True)
class Found:
    """A finished study to show, where it came from, and whether it is smaller than the study."""

    result: StudyResult
    source: str
    reduced: bool


def whole_model(lm: LoadedModel, shape: Shape, selected: tuple[int, int]) -> None:
    """The view (module docstring); `selected` is the head the page's pickers hold."""
    st.caption(INTRO)
    person, model = access.me(), model_key(lm)
    mine = study_jobs.latest_job_of(person, model)
    panel, results = st.container(), st.container()
    st.subheader("Run the study on this model")
    config = _settings(lm, shape)
    _run_button(lm, person, config, shape, running=mine is not None and mine.running)
    with panel:
        if mine is not None:
            _job_panel(mine, person)
    with results:
        found = _find(lm, config, mine)
        if found is None:
            st.info(
                f"No study for this model yet ({lm.name}): neither a committed report nor a finished run of the "
                "settings below. Press **Run the study** below to run it here.",
                icon=":material/science:",
            )
        else:
            _show(found, shape, selected)


def atlas_click(shape: Shape) -> None:
    """The atlas's on_select: the clicked head becomes the page's selected head (the pickers and the URL),
    and the page opens its view (HEAD_TAB)."""
    if select_head(head_from_selection(st.session_state.get(ATLAS_KEY)), shape):
        st.session_state["att_tab"] = HEAD_TAB


def report_for(lm: LoadedModel, folder: Path | None = None) -> Found | None:
    """The committed report of this model: atlas.json of `folder`, default REPORT_DIR or one of its subfolders
    (e.g. reports/attention/smollm2 for a second model)."""
    if folder is None:
        subfolders = sorted(p for p in REPORT_DIR.iterdir() if p.is_dir()) if REPORT_DIR.is_dir() else []
        return next((f for f in (report_for(lm, d) for d in [REPORT_DIR, *subfolders]) if f is not None), None)
    folder = Path(folder)
    try:
        data = json.loads((folder / "atlas.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("model") != lm.name:
        return None
    result = load_report(folder)
    if result is None:
        return None
    where = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
    command = f" (`{data['command']}`)" if data.get("command") else ""
    return Found(result, f"the committed report {where}/{command}", bool(data.get("reduced")))


def cached_for(lm: LoadedModel, config: StudyConfig) -> Found | None:
    """The finished run of exactly these settings (ui.state, else the study's cache), or None."""
    inputs = (model_key(lm), config)
    result = recall(SLOT, inputs, keep=4, shared=True)
    if result is None:
        try:
            result = cached_study(lm, config)
        except LabError:
            return None
        if result is None:
            return None
        remember(SLOT, inputs, result, keep=4, shared=True)
    return Found(result, "the finished run of the settings below (cache/attention_study/)", config.reduced)


def _find(lm: LoadedModel, config: StudyConfig | None, mine: Job | None) -> Found | None:
    if config is not None and (found := cached_for(lm, config)) is not None:
        return found
    if mine is not None and not mine.running and isinstance(mine.result, StudyResult):
        ran = study_jobs.study_of(mine)
        reduced = ran.config.reduced if ran is not None else True
        return Found(mine.result, "your study job that just finished (its settings differ from those below)", reduced)
    return report_for(lm)


def reduced_label(result: StudyResult) -> str:
    """The label over a run smaller than the study: what it ran, and that it is not the study."""
    queries = result.config.get("queries", "?")
    return (
        f"**REDUCED RUN, not the study:** {result.n_train} train / {result.n_heldout} held-out prompts, "
        f"{queries} queries per prompt, {result.heads_how}. Its numbers show the method end to end; "
        "`make study-attention` runs the study."
    )


def _show(found: Found, shape: Shape, selected: tuple[int, int]) -> None:
    result = found.result
    if found.reduced:
        st.warning(reduced_label(result), icon=":material/warning:")
    st.caption(
        f"From {found.source}. Model `{result.model}` ({result.shape[0]} layers x {result.shape[1]} heads); "
        f"{result.heads_how}; {result.n_train} train and {result.n_heldout} held-out prompts; the model was shown "
        f"the head as `{result.mode}`; {result.wall_seconds / 60:.1f} min in its last call."
    )
    st.markdown(f"**Verdict.** {result.verdict}")
    if tuple(result.shape) != (shape.n_layers, shape.n_heads):
        st.error(
            f"This study is of a model with {result.shape[0]} layers x {result.shape[1]} heads, the loaded one has "
            f"{shape.n_layers} x {shape.n_heads}: its atlas cannot select heads here.",
            icon=":material/error:",
        )
        return
    frame = atlas_frame(result, shape.n_layers, shape.n_heads)
    show_chart(
        atlas_chart(frame, selected),
        "attention_head_atlas",
        key=ATLAS_KEY,
        data=frame,
        on_select=lambda: atlas_click(shape),
        selection_mode=HEAD_PICK,
    )
    studied = int((frame["best external function"] != "not studied").sum())
    st.caption(
        f"{studied} of {len(frame)} heads studied (the others are drawn as not studied). Colour: the detector's "
        "best-fitting library rule on train prompts. Mark: the head's self-text top-1 minus the no-explanation "
        "control, 95% bootstrap interval per head (unadjusted): ▲ above 0, ● includes 0, ▼ below 0. Click a cell "
        "to open that head (the All heads tab; the other tabs use it too)."
    )
    st.markdown("**Contrasts** (top-1 agreement on held-out prompts; Holm within this family)")
    if result.contrasts:
        contrasts = pd.DataFrame(result.contrasts)
        shown = contrasts[[c for c in CONTRAST_COLUMNS if c in contrasts.columns]]
        st.dataframe(readable(shown, CONTRAST_COLUMNS), hide_index=True)
    else:
        st.caption("No self-explanation was run: no contrast.")
    if result.agreement:
        a = result.agreement
        st.caption(
            f"Self-rule: the model picks the detector's rule for {a['agreement']:.0%} of {a['n_heads']} heads "
            f"(chance {a['chance']:.0%}; one-sided permutation p = {a['p']:.3g})."
        )
    layers = result.layers()
    if len(layers):
        show_chart(layers_chart(result), "attention_study_layers", key="att_study_layers", data=layers)
    table = result.table()
    st.markdown("**Every studied head**")
    heads = table[[c for c in HEAD_COLUMNS if c in table.columns]]
    st.dataframe(readable(heads, {}), hide_index=True, key="att_study_heads")


def _settings(lm: LoadedModel, shape: Shape) -> StudyConfig | None:
    """The run's settings (fields bound to the URL, checked against the study's bounds and the server's
    limits, the reason under the field): the StudyConfig, or None while a field is refused."""
    total = shape.n_layers * shape.n_heads
    limits = access.limits()
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    heads, ok1 = number_field(
        c1,
        "Heads",
        min(PAGE_DEFAULTS["heads"], total),
        "att_study_heads_n",
        between("Heads", 1, total, integer=True, limit="study_heads", note=f" (this model has {total} heads)"),
        step=1,
        help=f"A seeded random sample of this many heads; {total} = every head."
        + access.limit_note("study_heads", "heads"),
    )
    fields = (
        (c2, "Train prompts", "train", "att_study_train", 2),
        (c3, "Held-out prompts", "heldout", "att_study_heldout", 4),
        (c4, "Random sequences", "random", "att_study_random", 0),
        (c5, "Queries per prompt", "queries", "att_study_queries", 1),
    )
    values, oks = {}, [ok1]
    for column, label, name, key, low in fields:
        limit = "study_prompts" if name in ("train", "heldout") else None
        high = limits.study_prompts if limit else 64
        value, ok = number_field(
            column,
            label,
            PAGE_DEFAULTS[name],
            key,
            between(label, low, high, integer=True, limit=limit),
            step=1,
            help=StudyConfig.__dataclass_fields__[name].metadata.get("help", "").capitalize() + ".",
        )
        values[name], oks = value, oks + [ok]
    seed, ok = number_field(
        c6, "Seed", PAGE_DEFAULTS["seed"], "att_study_seed", between("Seed", 0, SEED_MAX, integer=True)
    )
    if not (all(oks) and ok):
        return None
    n_prompts = int(values["train"]) + int(values["heldout"])
    if access.refuse_over("study_prompts", n_prompts, "Prompts of this study (train + held-out)"):
        return None
    config = StudyConfig(
        model=lm.name,
        **{name: int(v) for name, v in values.items()},
        max_heads=None if int(heads) >= total else int(heads),
        seed=int(seed),
        n_boot=PAGE_BOOT,
        **FIXED,
    )
    try:
        config.validate()
    except LabError as err:
        st.error(str(err), icon=":material/block:")
        return None
    return config


def _run_button(lm: LoadedModel, person: str, config: StudyConfig | None, shape: Shape, running: bool) -> None:
    clicked = st.button(
        "Run the study",
        key="att_study_run",
        type="primary",
        icon=":material/play_arrow:",
        disabled=config is None or running,
        help="Runs in the background as your job; finished heads are cached, so a stopped run resumes. "
        + ("Your study job is running: its progress is above." if running else ""),
    )
    if not clicked or config is None:
        return
    try:
        n_heads = config.max_heads or shape.n_layers * shape.n_heads
        access.limits().check("study_heads", n_heads, "Heads of this study")
        access.limits().check(
            "study_prompts", config.train + config.heldout, "Prompts of this study (train + held-out)"
        )
        job, joined = study_jobs.start(lm, person, config)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return
    watch_job_queue(job.key, lm.lock)
    st.toast("This study is already running: its progress is above." if joined else "Study started.")
    st.rerun()


def _job_panel(job: Job, person: str) -> None:
    ran = study_jobs.study_of(job)

    def status(_job: Job | None) -> str:
        if ran is None:
            return "Your study job."
        c = ran.config
        heads = f"{c.max_heads} sampled heads" if c.max_heads else "every head"
        return (
            f"Your study of {ran.model[0]}: {heads}, {c.train} train / {c.heldout} held-out prompts "
            f"({c.random} random each), {c.queries} queries per prompt, seed {c.seed}."
        )

    job_panel(
        job.key, what="The study", unit="steps", can_stop=job.owner == person, widget_key="att_study", status=status
    )
