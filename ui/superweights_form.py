"""The super-weights tab's texts and scan form: the paper in a few lines, how detection works, the scan's
fields (each refused value explained under its field, before anything runs, including the server's
prompt limit) and the link flags that say which results are on screen.
"""

from __future__ import annotations

import streamlit as st

from engine.core.errors import LabError
from engine.superweights import detect
from engine.superweights.config import (
    ABSOLUTE_THRESHOLD,
    DEFAULT_MODE,
    DEFAULT_PROMPT,
    EVAL_WINDOW,
    MAX_ITERATIONS,
    PERSIST_FACTOR,
    RELATIVE_FACTOR,
    RESTORE_SA_FRACTION,
    THRESHOLD_MODES,
    DetectionConfig,
    number,
)
from ui import limits
from ui.fields import range_problem
from ui.links import url_text_area

SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG = "sw_scanned", "sw_ablated", "sw_quantized"  # link flags: results on screen

FACTOR_RANGE = (1.5, 1000.0)

ABSOLUTE_RANGE = (1e-6, 1e6)

ITERATION_RANGE = (1, 10)

INTRO = """
**Super weights** (Yu et al., *The Super Weight in Large Language Models*, arXiv 2411.07191): a handful of
scalars in an early layer's MLP down projection. Removing one of them destroys Llama-7B (zero-shot average
70.1 → 35.1, perplexity from single digits to hundreds), while removing the next ~7,000 largest weights barely
matters. Press **Scan** to hook every down projection of the selected model over your prompts.
"""

DETECTION_HELP = r"""
Each layer's down projection computes $y_t = W x_t$ with $W \in \mathbb{R}^{d \times d_{ff}}$
(row = output channel, col = input channel; GPT-2's Conv1D weight is transposed to this layout).
The scan records $\max_{t,c}|x_{t,c}|$ and $\max_{t,r}|y_{t,r}|$ per layer.

A layer **spikes** when $\max|y| \ge f \cdot \operatorname{median}_\ell \max|y^{(\ell)}|$ (relative, default
$f = %(relative)s$, works across model scales) or $\max|y| \ge %(absolute)s$ (the paper's absolute threshold). In the
strongest spiking layer, with the spike at token $t$ and output channel $r$, the candidate is $W[r, c]$ with
$c = \arg\max_c |x_{t,c}|$. **share** $= W[r,c]\,x_{t,c} / y_{t,r}$ is how much of the spike that one weight
makes. Iterate (the paper's procedure): zero it, re-scan, repeat until no layer spikes (the threshold stays the
one of the original scan); every weight is restored bit-for-bit afterwards.

**Persists in layers**: layers $\ell$ after the candidate's where the residual stream keeps
$|h_\ell[t, r]| \ge %(persist)s \cdot \operatorname{median}|h_\ell|$.
"""

DETECTION_HELP %= {  # %-format, so the LaTeX braces stay single
    "relative": number(RELATIVE_FACTOR),
    "absolute": number(ABSOLUTE_THRESHOLD),
    "persist": number(PERSIST_FACTOR),
}

CONDITIONS_HELP = (
    "Conditions: original; super weight(s) zeroed; zeroed with the super activation restored "
    f"($y_{{t,r}} \\mathrel{{+}}= W_{{rc}} x_{{t,c}}$ where the original $|y_{{t,r}}| \\ge "
    f"{number(RESTORE_SA_FRACTION)}\\,|SA|$); the $k$ largest other weights of all decoder linear layers zeroed; "
    "super weight(s) scaled by $s$.\n\n"
    "Perplexity $= \\exp(\\frac{1}{N}\\sum -\\log p(x_i \\mid x_{<i}))$ over independent "
    f"{EVAL_WINDOW}-token windows (each starts with BOS) of the bundled text. **p_stopwords**: next-token "
    "probability mass on English stopwords and punctuation, averaged over a prompt set; **p_expected**: "
    "probability of the obvious content word (e.g. *cold* after *Summer is hot. Winter is*). Every edit is "
    "undone bit-for-bit (checked)."
)


def flag(name: str) -> bool:
    return st.query_params.get(name) == "1"


def set_flag(name: str, on: bool) -> None:
    """A link flag saying that a result is on screen (a reload or a link shows it again)."""
    if on:
        st.query_params[name] = "1"
    elif name in st.query_params:
        del st.query_params[name]


def refuse(box, problem: str | None) -> bool:
    """Show `problem` right under the field (in the field's column); True when there is one."""
    if problem:
        box.error(problem, icon=":material/error:")
    return problem is not None


def detection_config() -> DetectionConfig:
    """The detection settings the widgets show (defaults from engine.superweights.config)."""
    ss = st.session_state
    return DetectionConfig(
        mode=ss.get("sw_mode", DEFAULT_MODE),
        factor=float(ss.get("sw_factor", RELATIVE_FACTOR)),
        absolute=float(ss.get("sw_absolute", ABSOLUTE_THRESHOLD)),
        max_iterations=int(ss.get("sw_iters", MAX_ITERATIONS)),
    )


def prompts() -> tuple[str, ...]:
    """The cleaned prompts of the text area (LabError without one)."""
    return tuple(detect.clean_prompts(st.session_state.get("sw_prompts", DEFAULT_PROMPT)))


def render_inputs() -> bool:
    """The scan's fields; each refused value is explained under its field. True when all are valid."""
    url_text_area(
        "Prompts (one per line)",
        DEFAULT_PROMPT,
        "sw_prompts",
        height=90,
        help="The paper's prompt by default; any text works (super activations are input-agnostic)."
        + limits.limit_note("prompts_per_request", "prompts")
        + limits.limit_note("prompt_tokens", "tokens per prompt"),
    )
    bad = False
    try:
        bad = refuse(st, limits.prompt_count_problem(len(prompts())))
    except LabError as err:
        bad = refuse(st, str(err))
    c1, c2, c3 = st.columns(3)
    mode = c1.radio(
        "Threshold",
        list(THRESHOLD_MODES),
        index=THRESHOLD_MODES.index(DEFAULT_MODE),
        key="sw_mode",
        bind="query-params",
        horizontal=True,
        help=f"relative: max|y| >= f x median over layers (default); absolute: max|y| >= "
        f"{number(ABSOLUTE_THRESHOLD)} (paper).",
    )
    if mode == "relative":
        low, high = FACTOR_RANGE
        f = c2.number_input(
            "Relative factor f",
            value=RELATIVE_FACTOR,
            step=0.5,
            key="sw_factor",
            bind="query-params",
            help=f"Between {number(low)} and {number(high)}: a layer spikes at f x the median over layers.",
        )
        bad |= refuse(c2, range_problem("The relative factor", f, low, high))
    else:
        a = c2.number_input(
            "Absolute threshold",
            value=ABSOLUTE_THRESHOLD,
            key="sw_absolute",
            bind="query-params",
            help=f"Between {number(ABSOLUTE_RANGE[0])} and {number(ABSOLUTE_RANGE[1])}.",
        )
        bad |= refuse(c2, range_problem("The absolute threshold", a, *ABSOLUTE_RANGE))
    low, high = ITERATION_RANGE
    n = c3.number_input(
        "Max iterations",
        value=MAX_ITERATIONS,
        step=1,
        key="sw_iters",
        bind="query-params",
        help=f"Remove the detected weight, re-scan, repeat (the paper's iterative procedure); {low} to {high}.",
    )
    bad |= refuse(c3, range_problem("Max iterations", n, low, high, integer=True))
    return not bad
