"""Sections 4 and 5 of the super-weights tab: ablate the super weight(s) and measure, side by side, and
super-weight-aware round-to-nearest quantization.

The ablation and the quantization run as background jobs of the person who pressed Run
(engine.superweights.jobs, ui.job_panel): progress with an ETA once a pace is measured, Stop, and a reload
finds them again (the address bar holds their settings and `sw_ablated=1` / `sw_quantized=1`): the
progress while one runs, its result when it is done. A tab opened without its link shows the person's
latest job of the tab (`render_found_again`).
A changed setting, valid or not, keeps the last result on screen, marked as from other settings, until
the person runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.model import LoadedModel
from engine.core.weight_edits import weights_edit_problem
from engine.superweights import ablation, detect
from engine.superweights import jobs as sw_jobs
from engine.superweights.config import (
    CLIP_FRACTION,
    DEFAULT_BITS,
    DEFAULT_SCALE,
    EVAL_TOKENS,
    METHODS,
    PAPER_TOPK_FRACTION,
    SCALE_RANGE,
    number,
)
from ui import jobs as person_jobs
from ui import superweights_tables as tables
from ui.fields import range_problem
from ui.figures import identical_curves, show_chart
from ui.job_panel import job_panel
from ui.people import me
from ui.state import Shown, keeper, latest, model_key, process_result, shown
from ui.superweights_charts import ablation_chart, quantization_chart
from ui.superweights_form import ABLATION_FLAG, CONDITIONS_HELP, QUANT_FLAG, flag, refuse, set_flag
from ui.superweights_sections import candidate_labels

ABLATION_SLOT = "sw_ablation"
QUANT_SLOT = "sw_quantization"
TOKEN_CHOICES = [256, 512, 1024, 2048, EVAL_TOKENS]
K_RANGE = (0, 100_000)
FRACTION_RANGE = (0.0, 0.01)


def candidates_key(cands: list[detect.Candidate]) -> tuple:
    """What an ablation or quantization depends on in the candidates (coordinates, weight, activation)."""
    return tuple((c.coord, c.weight, c.super_activation) for c in cands)


def _previous_note(what: str, result: Shown, button: str) -> None:
    """The note over a result that is not for the settings above (a field is invalid, or it changed)."""
    st.info(
        f"Showing the last {what}, computed with other settings than the fields above: press **{button}** to "
        "run these.",
        icon=":material/history:",
    )


def _start(lm: LoadedModel, key: str, begin) -> Job | None:
    """Start a job as this person's (their jobs and quota, the model's queue); a LabError is shown (None)."""
    try:
        return person_jobs.start_job(key, begin, label=f"super-weight {sw_jobs.kind_of(key)}", lock=lm.lock)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return None


def _job_section(
    kind: sw_jobs.Kind, slot: str, link_flag: str, inputs: Hashable | None, clicked: bool, start: Callable[[], object]
) -> None:
    """The job of `kind` for exactly these inputs: started by a click, or by a reload / link showing it
    (`link_flag`) when its result is not in the process; its panel while it runs (Stop for its starter)."""
    if inputs is None:
        return
    key = sw_jobs.job_key(kind, inputs)
    done = process_result(slot, inputs) is not None
    restore = flag(link_flag) and latest(slot) is None and RUNNER.get(key) is None  # a reload, a link; not one
    if (clicked or restore) and not done and RUNNER.running(key) is None:  # that stopped or failed here
        start()
    if clicked:
        set_flag(link_flag, True)  # a reload finds this job again: running or done
    if not done and RUNNER.get(key) is not None:
        what = f"The {kind}"
        job = job_panel(key, what=what, unit="steps", can_stop=person_jobs.is_my_job(key), widget_key=f"sw_{kind}")
        if job is not None and job.state in ("failed", "stopped"):
            set_flag(link_flag, False)  # a reload would run it again


def render_ablation(lm: LoadedModel, detection: detect.Detection) -> None:
    st.subheader("4. Ablate and measure, side by side")
    problem = weights_edit_problem(lm)
    if problem:
        st.info(problem, icon=":material/block:")
        return
    if not detection.candidates:
        st.info("Nothing to ablate: no candidate was detected.")
        return
    labels = candidate_labels(detection)
    fraction = number(PAPER_TOPK_FRACTION)
    low, high = SCALE_RANGE
    chosen = st.multiselect(  # a row of its own: in a quarter column the labels were cut
        "Super weights to ablate",
        labels,
        default=labels,
        key="sw_ablate_cands",
        bind="query-params",
        help="All detected candidates by default, as the CLI does.",
    )
    bad = refuse(st, None if chosen else "Pick at least one super weight to ablate.")
    c2, c3, c4 = st.columns(3)
    k = c2.number_input(
        f"k other weights (0 = paper's {fraction})",
        value=0,
        step=1,
        key="sw_k",
        bind="query-params",
        help=f"0 to {K_RANGE[1]:,}. 0: k = {fraction} x the decoder linear weights = {ablation.paper_k(lm)} "
        "for this model.",
    )
    bad |= refuse(c2, range_problem("k", k, *K_RANGE, integer=True))
    scale = c3.slider(
        "Scale s",
        low,
        high,
        DEFAULT_SCALE,
        0.1,
        key="sw_scale",
        bind="query-params",
        help=f"W[r, c] <- s W[r, c]; s in [{number(low)}, {number(high)}].",
    )
    tokens = c4.selectbox(
        "Evaluation tokens",
        TOKEN_CHOICES,
        index=1,
        key="sw_eval_tokens",
        bind="query-params",
        help=f"Tokens of the bundled CC0 text ({EVAL_TOKENS:,} ~ the whole text); fewer is faster.",
    )
    with st.expander("Conditions and metrics", icon=":material/functions:"):
        st.markdown(CONDITIONS_HELP)
    cands = [detection.candidates[labels.index(lab)] for lab in chosen]
    inputs = None if bad else (model_key(lm), candidates_key(cands), int(k), float(scale), int(tokens))
    clicked = st.button("Run ablation", key="sw_ablate", icon=":material/science:", disabled=bad)
    _job_section(
        "ablation",
        ABLATION_SLOT,
        ABLATION_FLAG,
        inputs,
        clicked,
        lambda: sw_jobs.start_ablation(
            lm,
            inputs,
            cands,
            k=int(k),
            scale=float(scale),
            max_tokens=int(tokens),
            keep=keeper(ABLATION_SLOT, inputs),
            start=lambda key, begin: _start(lm, key, begin),
        ),
    )
    result = shown(ABLATION_SLOT, inputs, shared=True)
    if result is None:
        return
    if not result.current:
        set_flag(ABLATION_FLAG, False)  # a reload would run these settings, not show the last result
        _previous_note("ablation", result, "Run ablation")
    show_ablation(result.result)


def show_ablation(table: ablation.AblationResult) -> None:
    """An ablation's figure, its table and the greedy continuations, every column in words."""
    show_chart(ablation_chart(table.table), "superweight_ablation", key="sw_ablation_chart", data=table.table)
    st.caption(f"{table.eval_tokens} evaluation tokens, k = {table.k}, {table.seconds:.0f} s.")
    st.dataframe(tables.table(table.table, tables.ABLATION), hide_index=True, width="stretch")
    st.markdown("**Greedy continuations**")
    st.dataframe(tables.table(table.continuations, tables.CONTINUATIONS), hide_index=True, width="stretch")
    with st.expander("Stopword shift per prompt"):
        st.dataframe(tables.table(table.stopwords, tables.STOPWORDS), hide_index=True, width="stretch")
        st.download_button(
            "Download stopword_shift.csv",
            table.stopwords.to_csv(index=False),
            file_name="stopword_shift.csv",
            mime="text/csv",
            key="sw_dl_stop",
        )


def render_quantization(lm: LoadedModel, detection: detect.Detection) -> None:
    st.subheader(f"5. Super-weight-aware {DEFAULT_BITS}-bit round-to-nearest")
    if weights_edit_problem(lm):
        st.info("Needs unquantized weights.", icon=":material/block:")
        return
    st.caption(
        "Blockwise asymmetric min-max RTN of every decoder-layer linear weight (embedding and LM head stay in "
        "full precision). Variants hold the super weight(s), and the largest |w| of each matrix, in full precision "
        "after clipping them out of the block range."
    )
    c1, c2, c3, c4 = st.columns(4)
    blocks = c1.multiselect(
        "Block sizes",
        [64, 128, 256, 512, 1024, 2048, 4096, 16384],
        default=[128, 4096],
        key="sw_q_blocks",
        bind="query-params",
    )
    bad = refuse(c1, None if blocks else "Pick at least one block size.")
    methods = c2.multiselect("Methods", list(METHODS), default=list(METHODS), key="sw_q_methods", bind="query-params")
    bad |= refuse(c2, None if methods else "Pick at least one method.")
    fraction = c3.number_input(
        "Outlier fraction held",
        value=CLIP_FRACTION,
        step=1e-5,
        format="%.5f",
        key="sw_q_frac",
        bind="query-params",
        help=f"Of each matrix's weights, {number(FRACTION_RANGE[0])} to {number(FRACTION_RANGE[1])}.",
    )
    bad |= refuse(c3, range_problem("The outlier fraction", fraction, *FRACTION_RANGE))
    tokens = c4.selectbox("Evaluation tokens", TOKEN_CHOICES, index=1, key="sw_q_tokens", bind="query-params")
    inputs = (
        None
        if bad
        else (
            model_key(lm),
            candidates_key(detection.candidates),
            tuple(blocks),
            tuple(methods),
            float(fraction),
            int(tokens),
        )
    )
    clicked = st.button("Run quantization", key="sw_quant", icon=":material/compress:", disabled=bad)
    _job_section(
        "quantization",
        QUANT_SLOT,
        QUANT_FLAG,
        inputs,
        clicked,
        lambda: sw_jobs.start_quantization(
            lm,
            inputs,
            detection.candidates,
            block_sizes=[int(b) for b in blocks],
            methods=list(methods),
            clip_fraction=float(fraction),
            max_tokens=int(tokens),
            keep=keeper(QUANT_SLOT, inputs),
            start=lambda key, begin: _start(lm, key, begin),
        ),
    )
    result = shown(QUANT_SLOT, inputs, shared=True)
    if result is None:
        return
    if not result.current:
        set_flag(QUANT_FLAG, False)
        _previous_note("quantization", result, "Run quantization")
    show_quantization(result.result)


def show_quantization(table: pd.DataFrame) -> None:
    """A quantization's figure (a note when two methods' lines coincide) and its table, in words."""
    chart = quantization_chart(table)
    if chart is not None:
        show_chart(chart, "superweight_quantization", key="sw_quant_chart", data=table)
        quant = table.dropna(subset=["block_size"])
        for same in identical_curves(quant, key="method", x="block_size", y="perplexity"):
            st.caption(
                f"{' and '.join(same)} give the same perplexity at every block size: their lines coincide "
                "(told apart by their dashes and point shapes)."
            )
    st.dataframe(tables.table(table, tables.QUANTIZATION), hide_index=True, width="stretch")
    st.caption(tables.QUANTIZATION_NOTE)


def render_found_again() -> None:
    """A tab opened without its link: the person's latest ablation or quantization in this server process,
    its progress (and Stop) while it runs, its result when it is done."""
    job = sw_jobs.find_mine(me())
    kind = sw_jobs.kind_of(job.key) if job is not None else None
    if job is None or kind is None:
        return
    state = {"running": "running", "stopping": "stopping", "finished": "done"}.get(job.state, "ended")
    st.subheader(f"Your {kind} ({state}), found again")
    st.caption(f"{job.label}. Scan with its settings to change them and run it again.")
    job_panel(job.key, what=f"The {kind}", unit="steps", can_stop=True, widget_key=f"sw_found_{kind}")
    if job.state == "finished" and job.result is not None:
        (show_ablation if kind == "ablation" else show_quantization)(job.result)
