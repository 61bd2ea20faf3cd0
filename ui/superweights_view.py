"""View of the tab "Super weights of a pretrained LLM" (Yu et al. 2024): scan, detect, inspect, ablate, quantize.

Thin: every number comes from engine.superweights (detect, ablation, quantize; the CLI `python -m engine
superweights` calls the same functions), and every default or threshold a help text names is read from
engine.superweights.config. Nothing loads the LLM until "Scan" is pressed (or a link to a scan is opened).
On the shared server (ui.access) a scan's prompts are checked against the server's limits (prompts per
request, tokens per prompt) and its memory before it runs, and a computation that waits for the model says
the person's place in its queue.

Figures first: each result starts with its figure (ui.figures.show_chart: PNG, SVG and CSV downloads), the
table below. The scan's figure is linked to the layer picker: clicking a layer selects it, the selected
layer is highlighted. Detection shows steps and an ETA (ui.progress); the ablation and the quantization
run as the person's background jobs (engine.superweights.jobs, ui.job_panel: progress, Stop, found again).

State that survives a reload and travels as a link: every input is bound to a query parameter (`sw_prompts`,
`sw_mode`, `sw_factor`, `sw_absolute`, `sw_iters`; `sw_layer`, `sw_topk`, `sw_neigh_pick`, `sw_radius`;
`sw_ablate_cands`, `sw_k`, `sw_scale`, `sw_eval_tokens`; `sw_q_blocks`, `sw_q_methods`, `sw_q_frac`,
`sw_q_tokens`), and `sw_scanned=1`, `sw_ablated=1`, `sw_quantized=1` say which results are on screen. A
reload (a new session) shows them again from the process's results for exactly those inputs and the model
key (ui.state.model_key), without recomputing. Results are also kept per session (ui.state) for exactly the
inputs they were computed for; a value refused by validation is explained under its field, disables only
the button it feeds, and leaves the results on screen (marked as the previous ones).
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.superweights import detect
from engine.superweights.config import DetectionConfig, number
from ui import limits
from ui.memory_estimates import ensure_memory, scan_bytes
from ui.model_queue import queue_notice
from ui.models import current_choice, get_model, is_loaded
from ui.state import compute_steps, forget, latest, model_key, recall
from ui.superweights_edits import (
    ABLATION_SLOT,
    QUANT_SLOT,
    render_ablation,
    render_found_again,
    render_quantization,
)
from ui.superweights_form import (
    ABLATION_FLAG,
    DETECTION_HELP,
    INTRO,
    QUANT_FLAG,
    SCAN_FLAG,
    detection_config,
    flag,
    prompts,
    render_inputs,
    set_flag,
)
from ui.superweights_sections import WSTATS_SLOT, render_scan, render_weights

DETECTION_SLOT = "sw_detection"


def _scan(config: DetectionConfig) -> bool:
    """Scan (the button, or a reload / link showing a scan): drop every earlier result of the session,
    check the request against the server's limits, load the model, check its tokens and memory, detect
    (served from the process's results when these inputs were scanned before). False when it could not."""
    for slot in (DETECTION_SLOT, ABLATION_SLOT, QUANT_SLOT, WSTATS_SLOT):
        forget(slot)
    try:
        asked = prompts()  # before the model loads
        limits.check_prompt_count(len(asked))
    except LabError as err:
        st.error(str(err))
        return False
    lm = get_model()
    if lm is None:
        return False
    try:
        lengths = limits.prompt_lengths(lm, asked)
        limits.check_prompt_tokens(lengths, [f"prompt {i}" for i in range(1, len(asked) + 1)])
        ensure_memory(lm, scan_bytes(lm, max(lengths)), f"the scan of {max(lengths)} tokens")
    except LabError as err:
        st.error(str(err))
        return False
    inputs = (model_key(lm), asked, config)
    with queue_notice(lm):
        result = compute_steps(
            DETECTION_SLOT,
            inputs,
            "Scanning the down projections (the paper's iterative procedure)",
            lambda progress: detect.detect(lm, list(asked), **dataclasses.asdict(config), progress=progress),
        )
    return result is not None


def render() -> None:
    """The whole tab: a short introduction, the last scan's figures (or what Scan will draw), then the
    scan's form. Loads the model only after the user presses Scan (or opens a link to a scan)."""
    st.markdown(INTRO)
    results = st.container()  # the figures lead; the form below fills them
    with st.expander("How the scan and detection work", icon=":material/functions:"):
        st.markdown(DETECTION_HELP)
    valid = render_inputs()
    config = detection_config() if valid else None
    clicked = st.button(
        "Scan",
        key="sw_scan",
        type="primary",
        icon=":material/search:",
        disabled=not valid,
        help=None if valid else "Fix the field marked in red first.",
    )
    with results:
        if clicked:
            for name in (SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG):
                set_flag(name, False)
            if not _scan(config):
                return
            set_flag(SCAN_FLAG, True)
        elif valid and latest(DETECTION_SLOT) is None and flag(SCAN_FLAG):
            if not _scan(config):  # a reload or a link: the scan comes back (from the process's results)
                return
        if latest(DETECTION_SLOT) is None:
            st.info(
                "Press **Scan** below to load the model (if needed) and scan it: the figure of every layer's "
                "largest activation comes here, then the candidates, the ablation and the quantization.",
                icon=":material/info:",
            )
            render_found_again()  # a tab opened again without its link: the person's job, running or done
            return
        lm, detection, note = _shown_detection(config)
        if lm is None or detection is None:
            for name in (SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG):  # a reload would show another scan than this page
                set_flag(name, False)
            st.warning("The model changed since the last scan: press **Scan** again.", icon=":material/refresh:")
            return
        if note:
            st.info(note, icon=":material/history:")
        render_scan(lm, detection)
    render_weights(lm, detection)
    render_ablation(lm, detection)
    render_quantization(lm, detection)


def _shown_detection(config: DetectionConfig | None) -> tuple[LoadedModel | None, detect.Detection | None, str]:
    """(model, detection, note) to show: the scan for exactly the fields' inputs; when a field is invalid or
    the settings changed since, the last scan of this model, with a note saying which settings it had
    (a changed field never wipes the figure); (.., None, "") when the model changed."""
    if not is_loaded(current_choice()):  # a newly chosen model is not loaded just to say that the scan is stale
        return None, None, ""
    lm = get_model()
    if lm is None:
        return None, None, ""
    if config is not None:
        try:
            found = recall(DETECTION_SLOT, (model_key(lm), prompts(), config))
        except LabError:
            found = None
        if found is not None:
            return lm, found, ""
    (key, used_prompts, used), detection = latest(DETECTION_SLOT)
    if key != model_key(lm):
        return lm, None, ""
    set_flag(SCAN_FLAG, False)  # a reload would scan the new settings, not show this scan
    setting = f"f = {number(used.factor)}" if used.mode == "relative" else f"absolute {number(used.absolute)}"
    why = "a field below is invalid" if config is None else "the settings below changed since"
    note = (
        f"Showing the last scan ({len(used_prompts)} prompt(s), {used.mode} threshold {setting}, "
        f"{used.max_iterations} iteration(s)): {why}, press **Scan** to scan them."
    )
    return lm, detection, note
