"""Grokking lab tab: train a small model on (a o b) mod p, watch it grok, and track super weights.

Training and sweeps run as jobs of engine.core.jobs.RUNNER (one per run or sweep, shared by every
session that asks for the same one; a training job holds its run's claim); each job trains in a child
process (engine.core.processes: no GIL contention with the other sessions, and an out-of-memory there
does not end the server), which writes the run folders; the page polls them with a fragment
(ui.errors.lab_fragment), so several users can train at once,
a reload loses nothing, and a run trained by another process (the CLI) is followed too.

On the shared server (ui.access): a person owns the runs they start; they see their own runs, shared
runs and runs made outside the server, and only the owner stops, deletes, resumes or shares a run.
`?run=<id>` opens a run (a private run of someone else opens a notice and nothing of it). Steps and
sweep size are checked against the server's limits; starting checks the person's long jobs and disk quota.
A person's runs have their owner id in the run key (engine.grokking.runs), so two people training the same
configuration never share (or collide on) a run; runs made outside the server (the CLI) keep their ids.

The address bar holds the view (issue 13): `run` (the run shown, ui.access), every setting of the form
(`grok_task`, `grok_p`, ... bound to query parameters), the selected checkpoint (`grok_step`) and the sweep's
inputs (`grok_sweep_seeds`, `grok_sweep_wds`, `grok_sweep_measure`); a reload or a copied link opens the same
view, the runs coming back from the run store on disk. A bad field shows its reason under it and turns off
only the Start buttons it feeds: the run shown, its charts, the run list and the sweep stay. A click on a
curve selects the nearest checkpoint (a rule on every chart), and the checkpoint's detail follows.

The LLM-shaped model (a Llama decoder on [BOS, a, op, b, =], engine.grokking.llm) is one click away; its
runs are measured with engine.grokking.llm_measures at every checkpoint (the first tab's super-weight scan +
causal test on train and test, super activations, attention sinks, key Fourier frequencies), can be
trained with super-weight suppression, and every checkpoint exports as a local model for the first tab.
"""

from __future__ import annotations

import streamlit as st

from engine.grokking import analysis as ga
from engine.grokking import jobs, runs
from engine.grokking.config import (
    GROK_ACCURACY,
    HALF_GROK_ACCURACY,
    MEMORISATION_ACCURACY,
    GrokConfig,
)
from engine.grokking.measures import MeasureSettings
from ui import access
from ui.grokking_charts import preview
from ui.grokking_form import DEFAULT_TAKES, DEFAULTS, LLM_PRESET_LABEL, config_form, fill_form
from ui.grokking_run_panel import show_run
from ui.grokking_runs import TOPIC, forget_shown, gate, reopen_picker, show, shown
from ui.grokking_sweep import sweep_section

_ONSET, _MEASURE, _LLM = ga.OnsetSettings(), MeasureSettings(), ga.LLM_MEASURE_SETTINGS

_ONSET, _MEASURE, _LLM = ga.OnsetSettings(), MeasureSettings(), ga.LLM_MEASURE_SETTINGS

HELP = f"""
**Task.** Predict c = (a ∘ b) mod p for all pairs (a, b); a random *train fraction* of the pairs is the
training set, the rest the test set (Power et al. 2022). **Grokking**: test accuracy jumps long after
train accuracy reached 100%.

**Events** (steps, read off the evaluation rows): *memorisation* = first step with train accuracy
≥ {MEMORISATION_ACCURACY:.0%}; *grokking* = first step with test accuracy ≥ {HALF_GROK_ACCURACY:.0%} and
≥ {GROK_ACCURACY:.0%}.

**Super-weight measures**, at every checkpoint: per weight matrix max|w|/median|w|, excess kurtosis, the
coordinate of its largest |w|; per layer max|a|/median|a| on the test inputs (massive activations); and the
causal test: test accuracy after zeroing the largest |w| of a matrix (top-1), its top-k (k = {_MEASURE.k}), and
k random weights of the same matrix outside its top k. A weight is **super** when drop(top-1) >
{_MEASURE.threshold * 100:g} points of test accuracy while drop(k random) ≤ {_MEASURE.threshold * 100:g} points
(Yu et al. 2024).

**Onset** of a measure = the first checkpoint from which it stays on at *every* later checkpoint,
earliest over matrices/layers: max/median ≥ {_ONSET.ratio_factor:g} × its step-0 value;
kurtosis ≥ {_ONSET.kurtosis_threshold:g}; top coordinate unchanged to the end (≥ {_ONSET.min_span}
checkpoints); max|a|/median ≥ {_ONSET.ratio_factor:g} × its step-0 value; a super weight present in some matrix.
**Lag** = onset − grokking step ({GROK_ACCURACY:.0%}); negative = the measure came first.

**LLM-shaped model** ({LLM_PRESET_LABEL}): at every checkpoint the first tab's super-weight scan and detection
rule run unchanged on the checkpoint; each candidate (and the largest |w| of each down projection) is zeroed
alone and the **train** and **test** loss and accuracy compared with zeroing {_LLM.k_random} random weights of
the same matrix: it fires at a perplexity ratio ≥ {_LLM.ppl_threshold:g} or an accuracy drop >
{_LLM.acc_threshold * 100:g} points. Also: the super activation at BOS per layer and whether it persists, the
attention share on BOS (attention sink), and the number of key Fourier frequencies of the number embedding
(Nanda et al. 2023). Onsets of these use the same "stays on" rule ({_ONSET.ratio_factor:g} × the step-0 value for
the ratios, ÷ {_ONSET.ratio_factor:g} for the Fourier count). **Suppression** clips every down projection's |w|
to c × its q-quantile every N steps; at the end of a grokked run its super weights are zeroed to see whether it
falls back to memorisation (train kept, test lost) or breaks.
"""


def _start(config: GrokConfig) -> None:
    """Start (or resume, or reopen) the person's run of `config`; the run is shown unless it may not be."""
    outcome = jobs.start(config, gate())
    if isinstance(outcome, jobs.Refused):
        st.error(outcome.reason, icon=":material/error:")
    if outcome.run is not None:
        show(outcome.run)


def _figure(config: GrokConfig | None) -> None:
    """What the tab leads with (module doc): a run and its panel, or a preview of these settings."""
    run = shown()
    if run is not None and not access.can_read(TOPIC, run.run_id):  # its owner made it private since
        forget_shown()
        st.warning(access.PRIVATE_NOTICE, icon=":material/lock:")
        run = None
    found = ""
    if run is None:
        run = jobs.find_mine(config, access.me())
        if run is not None:
            show(run)
            found = " (your run, found again)"
    if run is None and config is not None:
        outside = runs.run_for(config)  # made with the command line: everyone may read it
        if outside.exists() and access.can_read(TOPIC, outside.run_id):
            run, found = outside, " (made with the command line)"
    if run is None:
        preview(config or DEFAULTS)
        return
    st.caption(f"Showing: {run.grok_config.describe()}{found} · run {run.run_id}")
    access.set_link(run.run_id)
    writable = access.share_toggle(TOPIC, run.run_id, "grok").writable_by(access.me())
    if config is not None and run.grok_config != config:
        st.warning(
            "The settings below differ from the run shown: press Start to train (or reopen) them.",
            icon=":material/sync_problem:",
        )
    show_run(run, writable)


def render() -> None:
    """The grokking lab (a tab of app_pages/1_Super_weights_and_grokking.py)."""
    st.markdown(
        "Train a small model on modular arithmetic until it **groks**, and see whether super weights "
        f"appear, and when, relative to grokking. Runs are cached by configuration; the default (a one-hot MLP) "
        f"takes {DEFAULT_TAKES}; the progress bar shows the time left."
    )
    with st.expander("Definitions: events, measures, onset", icon=":material/help:"):
        st.markdown(HELP)
    linked, blocked = access.follow_link(TOPIC, runs.get_run, "grok")
    if blocked:
        return
    if linked is not None:
        show(linked)
        fill_form(linked.grok_config)
    figure = st.container()  # drawn once the settings below are known
    st.subheader("Settings")
    config = config_form()
    start = st.button(
        "Start / resume / reopen",
        key="grok_start",
        icon=":material/play_arrow:",
        type="primary",
        disabled=config is None,
        help="Off while a field above has a problem (its reason is shown under it)." if config is None else None,
    )
    if start and config is not None:
        _start(config)
    reopen_picker()
    with figure:
        _figure(config)
    st.divider()
    sweep_section(config)
