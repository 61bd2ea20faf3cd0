"""Ask the model to explain one of its own attention heads, then score the explanation.

Explain -> simulate -> score, after Bills et al. 2023 ("Language models can explain neurons in
language models"), adapted to attention heads:
1. explain: the model reads the head's text description (top-k attended tokens per query token,
   no detector scores) and/or a PNG of its heatmap (vision-language models) and writes an
   explanation; chat template for instruction-tuned models, a completion prompt for base models.
2. simulate: on held-out prompts (not used to write the explanation) the same model gets only the
   explanation and the tokens, and for each query token i scores every candidate key j <= i by the
   log-probability of that token's text as the next token after "... attends most to the earlier
   token:". A softmax over candidates gives predicted weights; its argmax the predicted top-1.
   The simulator names a token, not a position: identical token texts share one prediction
   (split equally), and top-1 counts 1/k when the real argmax is among k tied candidates.
   A control runs the simulator with no explanation: its prior over earlier tokens.
3. score: top-1 agreement with the real argmax, and the Pearson correlation of predicted vs real
   weights pooled over all (i, j <= i) pairs of query rows i >= 1.
The same scores are computed for the external detector's label turned into a rule (previous-token
-> i-1, induction -> the token after the latest earlier copy of t_i, ...) and for trivial baselines
(always BOS; uniform over j <= i). A self-explanation carries information about the head only
where it beats both the control and the baselines.

Shapes: T tokens of a prompt; a prediction for query row i is a weight vector [i + 1] over keys j <= i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, get_args

import numpy as np
import pandas as pd

from engine.attention.config import (
    DESCRIPTION_QUERIES,
    HELDOUT_MAX_TOKENS,
    HELDOUT_RANDOM,
    HELDOUT_RANDOM_LEN,
    HELDOUT_SEED,
    MAX_NEW_TOKENS,
    SCORE_QUERIES,
    VERDICT_MARGIN,
    ExplainMode,
    HeadLabel,
    Predictor,
    RuleLabel,
    TemplateKind,
)
from engine.attention.head_functions import PromptSpec, prompt_set, run_prompts
from engine.attention.maps import AttentionResult, description_text
from engine.attention.png import heatmap_image
from engine.core.errors import LabError
from engine.core.model import LoadedModel

ProgressFn = Callable[[int, int, str], None]

EXPLAIN_COMPLETION_TEMPLATE = (
    "Below is a record of one attention head of a language model. Each line gives a token of a text "
    "(position and token), then the earlier tokens this head attends to most from that token, with "
    "their attention weights (0 to 1). Repeated tokens are told apart by @position.\n\n"
    "{description}\n\n"
    "Question: In one sentence, which earlier token does this head attend to from each token?\n"
    "Answer: This head attends to"
)
EXPLAIN_CHAT_TEMPLATE = (
    "Here is a record of one attention head of a language model. Each line gives a token of a text "
    "(position and token), then the earlier tokens this head attends to most from that token, with "
    "their attention weights (0 to 1). Repeated tokens are told apart by @position.\n\n"
    "{description}\n\n"
    "In one or two sentences, explain what this head does: from each token, which earlier token "
    "does it attend to?"
)
IMAGE_NOTE = (
    "The image shows the head's attention map: rows are query tokens, columns are the tokens they "
    "attend to, darker means more attention."
)
SIMULATE_TEMPLATE = (
    "An attention head of a language model was explained as follows: {explanation}\n"
    "Tokens: {tokens}\n"
    "Following the explanation, the token at position {position} ({token}) attends most to the earlier token:"
)
EXPLAIN_TEMPLATES: dict[TemplateKind, str] = {"chat": EXPLAIN_CHAT_TEMPLATE, "completion": EXPLAIN_COMPLETION_TEMPLATE}
EXPLAIN_MODES: tuple[ExplainMode, ...] = get_args(ExplainMode)
COMPLETION_PREFIX = "This head attends to"
CONTROL: Predictor = "simulator, no explanation"  # the simulator's prior: what an explanation adds is the gap to it
PREDICTORS: tuple[Predictor, ...] = tuple(p for p in get_args(Predictor) if p != CONTROL)
NO_EXPLANATION = "(no explanation given)"


# ---------------------------------------------------------------------------------------------
# 1. Explain


@dataclasses.dataclass
class Explanation:
    """What the model said head layer.head does, and the prompt it was given."""

    layer: int
    head: int
    text: str
    prompt: str
    mode: ExplainMode
    model_name: str


def template_kind(lm: LoadedModel) -> TemplateKind:
    """'chat' for instruction-tuned models (a chat template), 'completion' for base models."""
    return "chat" if lm.is_instruction_tuned else "completion"


def default_template(lm: LoadedModel) -> str:
    """Chat template text for instruction-tuned models, completion prompt for base models."""
    return EXPLAIN_TEMPLATES[template_kind(lm)]


def build_explain_prompt(template: str, description: str, mode: ExplainMode = "text") -> str:
    """Fill the template; in image-only mode the description is replaced by a note on the image."""
    if "{description}" not in template:
        raise LabError("The explanation template must contain {description}.")
    body = IMAGE_NOTE if mode == "image" else description + ("\n\n" + IMAGE_NOTE if mode == "text+image" else "")
    return template.replace("{description}", body)


def _clean_generation(text: str, completion: bool) -> str:
    text = text.strip()
    if completion:
        text = text.split("\n")[0].strip()
        text = f"{COMPLETION_PREFIX} {text}".strip()
    return " ".join(text.split())[:600] or "(empty explanation)"


def _token_counter(progress: ProgressFn, total: int):
    """A stopping criterion that never stops: it calls `progress(tokens written, total, ...)` at each
    generation step (so greedy decoding, and its text, are unchanged)."""
    import torch
    from transformers import StoppingCriteria

    class _Counter(StoppingCriteria):
        def __init__(self) -> None:
            self.done = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.done += 1
            progress(min(self.done, total), total, f"token {self.done} of at most {total}")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Counter()


def _generate(lm: LoadedModel, inputs: dict, max_new_tokens: int, progress: ProgressFn | None = None) -> str:
    """Greedy continuation of `inputs` (at most `max_new_tokens`), decoded without special tokens;
    `progress(tokens written, max_new_tokens, message)` before the first token and after each one."""
    import torch

    tok = lm.tokenizer
    extra = {}
    if progress:
        from transformers import StoppingCriteriaList

        progress(0, max_new_tokens, "reading the prompt")
        extra["stopping_criteria"] = StoppingCriteriaList([_token_counter(progress, max_new_tokens)])
    with lm.lock, torch.no_grad():
        out = lm.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.pad_id,
            **extra,
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    if progress:
        progress(max_new_tokens, max_new_tokens, "done")
    return tok.decode(new, skip_special_tokens=True)


def explain_head(
    lm: LoadedModel,
    result: AttentionResult,
    layer: int,
    head: int,
    template: str | None = None,
    mode: ExplainMode = "text",
    max_queries: int = DESCRIPTION_QUERIES,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: ProgressFn | None = None,
) -> Explanation:
    """Ask the model what head layer.head does from its text description and/or heatmap PNG.

    mode: "text" (description only), "image" or "text+image" (vision-language models only).
    Greedy decoding, so the same inputs give the same explanation. `progress(tokens written,
    max_new_tokens, message)` as it writes (it may stop early, at the end of its answer).
    """
    import torch

    if mode not in EXPLAIN_MODES:
        raise LabError(f"Unknown explanation mode '{mode}'.")
    if mode != "text" and not (lm.is_vlm and lm.processor is not None):
        raise LabError(f"Model '{lm.name}' is not a vision-language model: it cannot read the heatmap image.")
    template = template or default_template(lm)
    description = description_text(result, layer, head, max_queries=max_queries)
    text = build_explain_prompt(template, description, mode)
    chat = lm.is_instruction_tuned or bool(getattr(lm.processor, "chat_template", None))
    if mode == "text":
        prompt = lm.chat_text(text)
        ids = lm.prompt_inputs(text)
        inputs = {k: v.to(lm.device) for k, v in ids.items() if k in ("input_ids", "attention_mask")}
    else:
        image = heatmap_image(result.head(layer, head), result.labels, title=f"layer {layer} head {head}")
        processor = lm.processor
        if getattr(processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}
            ]
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            boi = getattr(processor, "boi_token", "<start_of_image>")
            prompt = f"{boi}\n{text}"
            inputs = processor(text=prompt, images=image, return_tensors="pt")
        inputs = {k: (v.to(lm.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
    completion = not chat
    raw = _generate(lm, inputs, max_new_tokens, progress)
    return Explanation(layer, head, _clean_generation(raw, completion and mode == "text"), prompt, mode, lm.name)


# ---------------------------------------------------------------------------------------------
# 2. Simulate: predicted weights over earlier tokens


def query_positions(n: int, max_queries: int) -> list[int]:
    """Query rows 1..n-1, thinned evenly to at most `max_queries` (row 0 can only attend to itself)."""
    rows = list(range(1, n))
    if len(rows) <= max_queries:
        return rows
    picks = np.linspace(0, len(rows) - 1, max_queries).round().astype(int)
    return [rows[k] for k in sorted(set(picks.tolist()))]


def _candidate_ids(tokenizer: Any, tokens: list[str]) -> list[int]:
    """First token id of ' ' + each readable token text (what the simulator would write next)."""
    out = []
    for text in tokens:
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        out.append(int(ids[0]) if ids else int(tokenizer.unk_token_id or 0))
    return out


def simulate_with_lm(
    lm: LoadedModel,
    explanation: str,
    result: AttentionResult,
    queries: list[int],
    template: str = SIMULATE_TEMPLATE,
    batch_size: int = 8,
) -> dict[int, np.ndarray]:
    """For each query i, predicted weights over keys j <= i from the model's next-token log-probs.

    weight_j = p(id_j) / #{k <= i: id_k = id_j}, normalised over j <= i, where p is the softmax
    of the log-probs restricted to the candidate ids. Batched, left-padded, last-position logits only.
    """
    import torch

    tok = lm.tokenizer
    texts = _simulation_texts(explanation, result, queries, template)
    cand = np.asarray(_candidate_ids(tok, result.tokens))
    encoded = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    logprobs: list[np.ndarray] = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = lm.left_padded(encoded[start : start + batch_size])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with lm.lock, torch.no_grad():
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[
                :, -1
            ]
        logprobs.extend(torch.log_softmax(logits.float(), dim=-1)[:, torch.as_tensor(cand)].cpu().numpy())
    return _candidate_weights(cand, queries, logprobs)


def _simulation_texts(explanation: str, result: AttentionResult, queries: list[int], template: str) -> list[str]:
    """The simulator's prompt for each query row (LabError for a template with unknown fields)."""
    listing = " ".join(f"{j}:{t}" for j, t in enumerate(result.tokens))
    try:
        return [
            template.format(explanation=explanation, tokens=listing, position=i, token=result.tokens[i])
            for i in queries
        ]
    except (KeyError, IndexError, ValueError) as err:
        raise LabError(
            "The simulation template may only use {explanation}, {tokens}, {position} and {token} "
            f"(write other braces as {{{{ }}}}): {err!r}"
        ) from err


def simulate_shared_prefix(
    lm: LoadedModel,
    explanation: str,
    result: AttentionResult,
    queries: list[int],
    template: str = SIMULATE_TEMPLATE,
) -> dict[int, np.ndarray]:
    """`simulate_with_lm` with the query rows' common token prefix run once.

    The rows' prompts differ only in their last tokens (the query's position and text), so the longest
    common prefix of their token ids [P] runs once with a KV cache, the cache is repeated over the rows,
    and the suffixes [N, S] (left-padded inside the suffix: mask 0 on the pads, position ids continuing
    from P) run as one batch whose last column is every row's next-token slot. The tokens are the same
    as `simulate_with_lm`'s, so the weights agree up to float rounding while the prompts fit in the
    model's sliding window (beyond it the pads count against the window differently); the cost drops
    from N full prompts to one prefix plus N short suffixes.
    """
    import torch

    if not queries:
        return {}
    tok = lm.tokenizer
    texts = _simulation_texts(explanation, result, queries, template)
    cand = np.asarray(_candidate_ids(tok, result.tokens))
    encoded = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    shortest = min(len(e) for e in encoded)
    common = 0
    while common < shortest - 1 and all(e[common] == encoded[0][common] for e in encoded):
        common += 1
    prefix = torch.as_tensor([encoded[0][:common]], dtype=torch.long, device=lm.device)  # [1, P]
    suffixes = [e[common:] for e in encoded]  # each >= 1 token
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(suffixes), common + width), dtype=torch.long)
    mask[:, :common] = 1
    for k, suffix in enumerate(suffixes):
        ids[k, width - len(suffix) :] = torch.as_tensor(suffix, dtype=torch.long)
        mask[k, common + width - len(suffix) :] = 1
    positions = common + (mask[:, common:].cumsum(-1) - 1).clamp(min=0)  # [N, S]
    with lm.lock, torch.no_grad():
        cache = None
        if common:
            cache = cache_of(lm.model(input_ids=prefix, use_cache=True, logits_to_keep=1))
            cache.batch_repeat_interleave(len(suffixes))
        logits = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            position_ids=positions.to(lm.device),
            use_cache=cache is not None,
            **with_cache(lm, cache),
            logits_to_keep=1,
        ).logits[:, -1]
    logprobs = list(torch.log_softmax(logits.float(), dim=-1)[:, torch.as_tensor(cand)].cpu().numpy())
    return _candidate_weights(cand, queries, logprobs)


def cache_of(output: Any) -> Any:
    """The KV cache a forward returned (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def with_cache(lm: LoadedModel, cache: Any) -> dict:
    """The forward keyword that passes a KV cache in: `cache` where the model takes it, else
    `past_key_values` (transformers 4)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    return {name: cache}


def _candidate_weights(cand: np.ndarray, queries: list[int], logprobs: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Per query i: softmax of the candidates' log-probs over keys j <= i, a token text seen k times
    sharing its probability equally (module docstring)."""
    preds = {}
    for i, lp in zip(queries, logprobs):
        ids_i, lp_i = cand[: i + 1], lp[: i + 1]
        uniq, inverse, counts = np.unique(ids_i, return_inverse=True, return_counts=True)
        first = np.zeros(len(uniq))
        first[inverse] = lp_i
        p_uniq = np.exp(first - first.max())
        p_uniq /= p_uniq.sum()
        preds[i] = p_uniq[inverse] / counts[inverse]
    return preds


def rule_prediction(label: RuleLabel, token_ids: list[int], queries: list[int]) -> dict[int, np.ndarray]:
    """A detector label (or baseline) turned into predicted weights over keys j <= i.

    previous_token -> i-1; duplicate_token -> latest j < i with t_j = t_i; induction -> latest
    j <= i with t_{j-1} = t_i, j-1 < i; self -> i; bos_sink / 'BOS' -> 0; diffuse / 'uniform' ->
    1/(i+1) each. When the rule has no target in a row it falls back to BOS.
    """
    t = list(token_ids)
    preds = {}
    for i in queries:
        w = np.zeros(i + 1)
        target = None
        if label in ("diffuse", "uniform"):
            preds[i] = np.full(i + 1, 1.0 / (i + 1))
            continue
        if label == "previous_token":
            target = i - 1
        elif label == "duplicate_token":
            target = next((j for j in range(i - 1, -1, -1) if t[j] == t[i]), None)
        elif label == "induction":
            target = next((j for j in range(i, 0, -1) if j - 1 < i and t[j - 1] == t[i]), None)
        elif label == "self":
            target = i
        w[target if target is not None and target >= 0 else 0] = 1.0
        preds[i] = w
    return preds


# ---------------------------------------------------------------------------------------------
# 3. Score


@dataclasses.dataclass(frozen=True)
class PredictionScore:
    """How well one predictor's weights match a head's real pattern over some query rows."""

    top1: float  # share of query rows whose real argmax is the predicted top-1 (1/k credit over k ties)
    correlation: float  # Pearson r of predicted vs real weights over all (i, j <= i); NaN when one side is constant
    n_queries: int


def _top1_credit(real: np.ndarray, predicted: np.ndarray) -> float:
    """1/k when the real argmax is among the k tied predicted maxima, else 0."""
    best = np.flatnonzero(np.isclose(predicted, predicted.max(), rtol=0, atol=1e-9))
    return 1.0 / len(best) if int(np.argmax(real)) in best else 0.0


def _rows(pattern: np.ndarray, preds: dict[int, np.ndarray]) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """Per predicted query row i: the top-1 credit, the real weights [i + 1] and the predicted ones."""
    credits, real_rows, pred_rows = [], [], []
    for i, p in preds.items():
        real = np.asarray(pattern[i, : i + 1], dtype=np.float64)
        credits.append(_top1_credit(real, p))
        real_rows.append(real)
        pred_rows.append(p)
    return credits, real_rows, pred_rows


def _score(credits: list[float], real_rows: list[np.ndarray], pred_rows: list[np.ndarray]) -> PredictionScore:
    """Mean top-1 credit and the Pearson r of all predicted vs real weights (NaN when one side is constant)."""
    from scipy.stats import pearsonr

    if not credits:
        return PredictionScore(float("nan"), float("nan"), 0)
    real_v, pred_v = np.concatenate(real_rows), np.concatenate(pred_rows)
    corr = float("nan") if np.ptp(real_v) == 0 or np.ptp(pred_v) == 0 else float(pearsonr(pred_v, real_v)[0])
    return PredictionScore(float(np.mean(credits)), corr, len(credits))


def score_prediction(pattern: np.ndarray, preds: dict[int, np.ndarray]) -> PredictionScore:
    """Top-1 agreement (1/k credit over k tied predicted maxima) and pooled Pearson r of
    predicted vs real weights over (i, j <= i) on one prompt (pattern [T, T])."""
    return _score(*_rows(pattern, preds))


def pooled_score(patterns: list[np.ndarray], preds: list[dict[int, np.ndarray]]) -> PredictionScore:
    """`score_prediction` pooled over several prompts (patterns [T, T], one prediction dict each): top-1
    agreement over all their query rows (each prompt's mean counted once per row), Pearson r over all
    their (i, j <= i) pairs."""
    credits, real_all, pred_all = [], [], []
    for pattern, pred in zip(patterns, preds):
        prompt_credits, real_rows, pred_rows = _rows(pattern, pred)
        if prompt_credits:
            credits.extend([float(np.mean(prompt_credits))] * len(prompt_credits))
        real_all.extend(real_rows)
        pred_all.extend(pred_rows)
    return _score(credits, real_all, pred_all)


def verdict(scores: dict[Predictor, PredictionScore], margin: float = VERDICT_MARGIN) -> str:
    """One line comparing the self-explanation's top-1 agreement with the control (simulator with
    no explanation), the detector label and the best trivial baseline (by at least `margin`)."""
    s = scores["self-explanation"].top1
    d = scores["detector label"].top1
    b = max(scores["baseline: BOS"].top1, scores["baseline: uniform"].top1)
    c = scores[CONTROL].top1 if CONTROL in scores else None
    if c is not None and s <= c + margin:
        extra = "; the detector label predicts better" if d > s + margin else ""
        return f"explanation adds nothing over the simulator's prior (no-explanation control){extra}"
    if s > max(d, b) + margin:
        return "self-explanation predicts best"
    if s > b + margin:
        return "self-explanation beats the trivial baselines, not the detector label"
    if d > b + margin:
        return "detector label predicts better; self-explanation no better than a trivial baseline"
    return "nothing beats the trivial baseline"


# ---------------------------------------------------------------------------------------------
# Held-out prompts and the whole pipeline


def heldout_prompts(
    tokenizer: Any, n_random: int = HELDOUT_RANDOM, random_len: int = HELDOUT_RANDOM_LEN, seed: int = HELDOUT_SEED
) -> list[PromptSpec]:
    """Held-out prompts (not in the built-in detector set): the held-out texts and random tokens x2."""
    return prompt_set(tokenizer, "heldout", n_random, random_len, seed, "held-out random x2")


def run_heldout(
    lm: LoadedModel, specs: list[PromptSpec], max_tokens: int = HELDOUT_MAX_TOKENS
) -> list[AttentionResult]:
    """Forward pass of each held-out prompt once (shared by every head scored)."""
    return run_prompts(lm, specs, max_tokens)


@dataclasses.dataclass
class HeadEvaluation:
    """One head's explanation, its detector label, every predictor's score and the verdict."""

    layer: int
    head: int
    explanation: str
    detector_label: HeadLabel
    scores: dict[Predictor, PredictionScore]
    verdict: str

    def rows(self) -> list[dict]:
        """One table row per predictor."""
        return [
            {
                "layer.head": f"{self.layer}.{self.head}",
                "layer": self.layer,
                "head": self.head,
                "predictor": name,
                "top1_agreement": s.top1,
                "correlation": s.correlation,
                "n_queries": s.n_queries,
                "detector_label": self.detector_label,
                "verdict": self.verdict,
                "explanation": self.explanation,
            }
            for name, s in self.scores.items()
        ]

    def to_json(self) -> dict:
        """head, explanation, detector_label, scores {predictor: {top1, correlation, n_queries}}, verdict."""
        return {
            "head": f"{self.layer}.{self.head}",
            "explanation": self.explanation,
            "detector_label": self.detector_label,
            "scores": {name: dataclasses.asdict(s) for name, s in self.scores.items()},
            "verdict": self.verdict,
        }


def evaluate_explanation(
    lm: LoadedModel,
    layer: int,
    head: int,
    explanation: str,
    detector_label: HeadLabel,
    heldout: list[AttentionResult],
    max_queries: int = SCORE_QUERIES,
    simulate_template: str = SIMULATE_TEMPLATE,
    control: bool = True,
    step: Callable[[str], None] | None = None,
) -> HeadEvaluation:
    """Simulate and score one head's explanation on held-out results against label and baselines.

    With `control`, the simulator also runs with no explanation: its prior over earlier tokens.
    An explanation only carries information when it beats that control. `step(message)` is called
    before each simulator run (len(heldout) x (2 with the control, else 1) of them).
    """
    names = PREDICTORS + ((CONTROL,) if control else ())
    pooled: dict[Predictor, tuple[list, list]] = {p: ([], []) for p in names}
    for n, res in enumerate(heldout, 1):
        queries = query_positions(len(res.token_ids), max_queries)
        pattern = res.head(layer, head)
        if step:
            step(f"head {layer}.{head}: simulating held-out prompt {n} of {len(heldout)}")
        predictions: dict[Predictor, dict[int, np.ndarray]] = {
            "self-explanation": simulate_with_lm(lm, explanation, res, queries, simulate_template),
            "detector label": rule_prediction(detector_label, res.token_ids, queries),
            "baseline: BOS": rule_prediction("bos_sink", res.token_ids, queries),
            "baseline: uniform": rule_prediction("uniform", res.token_ids, queries),
        }
        if control:
            if step:
                step(f"head {layer}.{head}: control on held-out prompt {n} of {len(heldout)}")
            predictions[CONTROL] = simulate_with_lm(lm, NO_EXPLANATION, res, queries, simulate_template)
        for name, preds in predictions.items():
            pooled[name][0].append(pattern)
            pooled[name][1].append(preds)
    scores = {name: pooled_score(patterns, preds) for name, (patterns, preds) in pooled.items()}
    return HeadEvaluation(layer, head, explanation, detector_label, scores, verdict(scores))


def explain_and_score(
    lm: LoadedModel,
    result: AttentionResult,
    heads: list[tuple[int, int]],
    detector_labels: dict[tuple[int, int], HeadLabel],
    heldout: list[AttentionResult] | None = None,
    template: str | None = None,
    mode: ExplainMode = "text",
    max_queries: int = SCORE_QUERIES,
    max_new_tokens: int = MAX_NEW_TOKENS,
    control: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    explanations: dict[tuple[int, int], str] | None = None,
    simulate_template: str = SIMULATE_TEMPLATE,
) -> list[HeadEvaluation]:
    """Batch: for each head, explain (or reuse `explanations`), simulate on held-out, score.

    `progress(done, total, message)` before each step (an explanation written, a simulator run on one
    held-out prompt) and once at the end."""
    if not heads:
        raise LabError("No heads chosen to explain.")
    heldout = heldout if heldout is not None else run_heldout(lm, heldout_prompts(lm.tokenizer))
    known = dict(explanations or {})
    total = sum((layer, head) not in known for layer, head in heads) + len(heads) * len(heldout) * (2 if control else 1)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        if progress:
            progress(min(done, total), total, message)
        done += 1

    out = []
    for layer, head in heads:
        text = known.get((layer, head))
        if text is None:
            step(f"head {layer}.{head}: writing its explanation")
            text = explain_head(lm, result, layer, head, template, mode, max_new_tokens=max_new_tokens).text
        label = detector_labels.get((layer, head), "diffuse")
        out.append(
            evaluate_explanation(
                lm,
                layer,
                head,
                text,
                label,
                heldout,
                max_queries,
                simulate_template=simulate_template,
                control=control,
                step=step,
            )
        )
    if progress:
        progress(total, total, "done")
    return out


def evaluations_table(evaluations: list[HeadEvaluation]) -> pd.DataFrame:
    """All predictors' scores for all heads, one row per (head, predictor)."""
    return pd.DataFrame([r for e in evaluations for r in e.rows()])


def top1_summary(evaluations: list[HeadEvaluation]) -> pd.DataFrame:
    """Top-1 agreement per head (rows: layer.head, detector label, verdict) and predictor (columns)."""
    return (
        evaluations_table(evaluations)
        .pivot_table(index=["layer.head", "detector_label", "verdict"], columns="predictor", values="top1_agreement")
        .reset_index()
    )
