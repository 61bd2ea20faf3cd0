"""The attention page's "Ask the model" and "Score explanations" tabs: the model explains a head from its
text description, and explain -> simulate -> score measures the explanation on held-out prompts against
a no-explanation control and trivial baselines (Bills et al. 2023, adapted to heads).
"""

from __future__ import annotations

import streamlit as st

from engine.attention import head_functions, maps, self_explain
from engine.attention.config import (
    HELDOUT_MAX_TOKENS,
    HELDOUT_SEED,
    MAX_NEW_TOKENS,
    VERDICT_MARGIN,
    ExplainMode,
    ScoringOptions,
)
from engine.attention.png import heatmap_png
from engine.core.options import default_of
from ui import access
from ui.attention_charts import (
    SCORE_METRICS,
    scores_chart,
)
from ui.attention_common import (
    EXPLAIN_SLOT,
    EXPLANATIONS_KEPT,
    PROMPT_ONLY,
    RANKABLE,
    SCOPES,
    SCORE_SLOT,
    AskInputs,
    Q,
    Scored,
    View,
    detector_table,
    heldout,
    help_text,
    int_field,
    run_kept,
)
from ui.figures import show_chart
from ui.progress import steps
from ui.state import entries, latest, recall
from ui.tables import readable

SCORING_HELP = f"""
**Explain → simulate → score** (Bills et al. 2023, adapted to heads). The explanation is written from
the prompt above only. On held-out prompts (texts not in the built-in set and random tokens repeated
twice, seed {HELDOUT_SEED}) the same model gets only the explanation and the tokens and, for each query
token i, scores each earlier token j ≤ i by the log-probability of its text as the next token after
"... attends most to the earlier token:"; a softmax gives predicted weights, the argmax the predicted
top-1. **top-1 agreement** = share of query rows whose real argmax is the predicted one (1/k credit
when k candidates tie: identical token texts cannot be told apart by the simulator).
**correlation** = Pearson r of predicted vs real weights over all (i, j ≤ i) pairs.
Compared: the *detector label* turned into a rule (previous-token → i−1, induction → token after the
latest earlier copy, duplicate → latest earlier copy, self → i, sink → BOS, diffuse → uniform), the
trivial baselines *BOS* and *uniform*, and a **control**: the simulator with no explanation (its prior).
An explanation tells something about the head only where it beats the control and the baselines.
"""


def ask(view: View) -> tuple[str, ExplainMode]:
    """The "Ask the model" tab; returns the explanation template and mode (the scoring tab uses them)."""
    lm, result, layer, head = view.lm, view.result, view.layer, view.head
    st.markdown(
        f"The model reads layer {layer}, head {head}'s text description (detector scores withheld) and says what "
        "the head does. "
        + (
            "Instruction-tuned: the chat template wraps the prompt."
            if lm.is_instruction_tuned
            else "Base model: a completion-style prompt; the answer is cut at the first line break."
        )
    )
    template = st.text_area(
        "Explanation template ({description} is replaced)",
        value=self_explain.default_template(lm),
        key=f"att_template_{self_explain.template_kind(lm)}",
        height=200,
    )
    mode = st.radio(
        "Show the model",
        self_explain.EXPLAIN_MODES if lm.is_vlm else ("text",),
        key="att_mode",
        horizontal=True,
        bind=Q,
        help="A vision-language Gemma 3 can read a PNG of the heatmap (with token labels) instead of, or beside, "
        "the text.",
    )
    if mode != "text":
        st.image(
            heatmap_png(result.head(layer, head), result.labels, title=f"layer {layer} head {head}"),
            caption="image sent to the model",
        )
    inputs = AskInputs(view.result_key, layer, head, template, mode)
    if st.button("Ask the model", key="att_explain"):
        with access.queue_notice(lm), steps("Asking the model") as progress:
            run_kept(
                EXPLAIN_SLOT,
                inputs,
                lambda: self_explain.explain_head(lm, result, layer, head, template, mode, progress=progress),
                keep=EXPLANATIONS_KEPT,
            )
    explanation = recall(EXPLAIN_SLOT, inputs, keep=EXPLANATIONS_KEPT, shared=True)
    if explanation is not None:
        st.success(explanation.text, icon=":material/psychology:")
        with st.expander("Prompt sent to the model"):
            st.code(explanation.prompt, language=None)
        st.caption("Whether this explanation means anything is measured in *Score explanations*.")
    return template, mode


def _chosen_heads(view: View) -> list[tuple[int, int]] | None:
    """The heads to score, as the scope radio asks (None when a field is not valid)."""
    result, layer, head = view.result, view.layer, view.head
    scope = st.radio(
        "Heads",
        SCOPES,
        key="att_score_scope",
        horizontal=True,
        bind=Q,
        help="The selected head is the one picked above the tabs.",
    )
    if scope == "selected head":
        st.caption(f"Heads: {layer}.{head}")
        return [(layer, head)]
    if scope == "chosen heads":
        all_heads = [f"{a}.{b}" for a in range(result.n_layers) for b in range(result.n_heads)]
        chosen = st.multiselect(
            "Heads (LAYER.HEAD)", all_heads, default=[f"{layer}.{head}"], key="att_score_heads", bind=Q
        )
        return [maps.parse_head(h) for h in chosen]
    if scope == "all heads of a layer":
        lay = st.selectbox(
            "Layer",
            list(range(result.n_layers)),
            key="att_score_layer",
            format_func=str,
            bind=Q,
        )
        return [(int(lay), b) for b in range(result.n_heads)]
    s1, s2 = st.columns(2)
    with s1:
        fn = st.selectbox(
            "Detector", RANKABLE, key="att_score_fn", format_func=lambda f: head_functions.FUNCTION_TITLES[f], bind=Q
        )
    with s2:
        top = int_field("Top", 3, 1, result.n_layers * result.n_heads, "att_score_top")
    if top is None:
        return None
    table, source = detector_table(view)
    if source == PROMPT_ONLY:
        st.caption("Ranked on this prompt (run *Head functions* to rank over many prompts).")
    heads = [(a, b) for a, b, _ in table.ranking(fn, top)]
    st.caption("Heads: " + ", ".join(f"{a}.{b}" for a, b in heads))
    return heads


def verdict_line(evaluations: list[self_explain.HeadEvaluation]) -> str:
    """One short line over all scored heads: on how many the self-explanation beats the control (or,
    without it, the best trivial baseline) by VERDICT_MARGIN top-1 agreement."""
    n = len(evaluations)
    with_control = [e for e in evaluations if self_explain.CONTROL in e.scores]
    if with_control:
        wins = sum(
            e.scores["self-explanation"].top1 > e.scores[self_explain.CONTROL].top1 + VERDICT_MARGIN
            for e in with_control
        )
        return (
            f"The self-explanation beats the no-explanation control on {wins} of {len(with_control)} head(s) "
            f"(by more than {VERDICT_MARGIN} top-1 agreement)."
        )
    wins = sum(
        e.scores["self-explanation"].top1
        > max(e.scores["baseline: BOS"].top1, e.scores["baseline: uniform"].top1) + VERDICT_MARGIN
        for e in evaluations
    )
    return (
        f"The self-explanation beats the best trivial baseline on {wins} of {n} head(s) "
        f"(by more than {VERDICT_MARGIN} top-1 agreement; no control run)."
    )


def score(view: View, template: str, mode: ExplainMode) -> None:
    lm, result = view.lm, view.result
    with st.expander("How explanations are scored", expanded=False):
        st.markdown(SCORING_HELP)
    heads = _chosen_heads(view)
    q1, q2 = st.columns(2)
    with q1:
        queries = int_field(
            "Query tokens per held-out prompt",
            default_of(ScoringOptions, "max_queries"),
            2,
            20,
            "att_score_queries",
            help=help_text(ScoringOptions, "max_queries"),
        )
    with q2:
        control = st.checkbox(
            "Control: simulator with no explanation",
            value=default_of(ScoringOptions, "control"),
            key="att_score_control",
            bind=Q,
            help=help_text(ScoringOptions, "control"),
        )
    sim_template = st.text_area(
        "Simulation template ({explanation}, {tokens}, {position}, {token})",
        value=self_explain.SIMULATE_TEMPLATE,
        key="att_sim_template",
        height=110,
        help="The candidate earlier token's text is scored as the next token after this prompt.",
    )
    valid = heads is not None and queries is not None
    n_heldout = len(self_explain.heldout_prompts(lm.tokenizer))
    if valid:
        st.caption(
            f"About {len(heads) * (2 if control else 1) * n_heldout * queries} simulator rows plus {len(heads)} "
            f"explanation(s) of up to {MAX_NEW_TOKENS} tokens."
        )
    inputs = (view.result_key, tuple(heads or ()), queries, control, template, mode, sim_template)

    def explain_and_score() -> Scored:
        table, source = detector_table(view)
        with st.spinner("Held-out forward passes..."):  # a few short prompts, cached per process
            held = heldout(lm, view.key, HELDOUT_MAX_TOKENS)
        reuse = {
            (e.layer, e.head): e.text
            for k, e in entries(EXPLAIN_SLOT)
            if k.result_key == view.result_key and (k.template, k.mode) == (template, mode)
        }
        with steps("Explaining, simulating and scoring") as progress:
            evaluations = self_explain.explain_and_score(
                lm,
                result,
                heads,
                head_functions.detector_labels(table),
                heldout=held,
                template=template,
                mode=mode,
                max_queries=queries,
                control=control,
                explanations=reuse,
                simulate_template=sim_template,
                progress=progress,
            )
        return Scored(evaluations, source)

    if st.button("Explain, simulate and score", key="att_score_run", disabled=not valid or not heads):
        with access.queue_notice(lm):
            run_kept(SCORE_SLOT, inputs, explain_and_score)
    scored = recall(SCORE_SLOT, inputs, shared=True) if valid else None
    if scored is None:  # a changed or bad field: the last scores of this forward pass stay on screen, marked
        saved = latest(SCORE_SLOT)
        if saved is not None and saved[0][0] == view.result_key:
            scored = saved[1]
            st.info(
                "The scores below are from the last run, with other settings than the fields above: press the "
                "button to score these.",
                icon=":material/history:",
            )
    if scored is not None:
        _show_scores(scored)


def _show_scores(scored: Scored) -> None:
    """Figure first (scores per head against the control and baselines), one short verdict line, the
    tables, and the explanations with their verdicts in an expander."""
    table = self_explain.evaluations_table(scored.evaluations)
    metric = st.radio(
        "Score",
        list(SCORE_METRICS),
        format_func=lambda m: SCORE_METRICS[m],
        key="att_score_metric",
        horizontal=True,
        bind=Q,
    )
    show_chart(
        scores_chart(table, metric), "explanation_scores", key="att_score_chart", data=table.drop(columns=["verdict"])
    )
    st.markdown(f"**{verdict_line(scored.evaluations)}** Detector labels from: {scored.label_source}.")
    with st.expander("Explanations and verdicts per head", expanded=False):
        for e in scored.evaluations:
            st.markdown(f"- **{e.layer}.{e.head}** ({e.detector_label}): _{e.explanation}_ → {e.verdict}")
    st.markdown("**Top-1 agreement with the real argmax** (per head and predictor)")
    st.dataframe(
        readable(self_explain.top1_summary(scored.evaluations), {"detector_label": "head's detector label"}),
        hide_index=True,
        key="att_score_summary",
    )
    st.markdown("**All scores**")
    st.dataframe(readable(table.drop(columns=["explanation"]), {}), hide_index=True, key="att_score_table")
    st.download_button(
        "Download scores (csv)", table.to_csv(index=False), file_name="explanation_scores.csv", key="att_score_dl"
    )
    st.caption(
        "Read with care: a few dozen query rows per head, one greedy explanation, and a small model as its own "
        "simulator. Top-1 agreement near the BOS baseline mostly measures the attention sink, not understanding."
    )
