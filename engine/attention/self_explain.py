"""Ask the model to explain one of its own attention heads, then score the explanation.

Explain -> simulate -> score, after Bills et al. 2023 ("Language models can explain neurons in
language models"), adapted to attention heads:
1. explain: the model reads the head's text description (top-5 attended tokens per query token,
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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from engine.attention.head_functions import PROMPTS_FILE, PromptSpec, random_token_ids
from engine.attention.maps import AttentionResult, description_text, run_attention
from engine.core.errors import LabError

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
COMPLETION_PREFIX = "This head attends to"
PREDICTORS = ("self-explanation", "detector label", "baseline: BOS", "baseline: uniform")
CONTROL = "simulator, no explanation"  # the simulator's prior: what the explanation adds is the gap to it
NO_EXPLANATION = "(no explanation given)"
VERDICT_MARGIN = 0.05


# ---------------------------------------------------------------------------------------------
# 1. Explain


@dataclasses.dataclass
class Explanation:
    layer: int
    head: int
    text: str
    prompt: str
    mode: str  # "text" | "image" | "text+image"
    model_name: str


def default_template(lm: Any) -> str:
    """Chat template text for instruction-tuned models, completion prompt for base models."""
    return EXPLAIN_CHAT_TEMPLATE if lm.is_instruction_tuned else EXPLAIN_COMPLETION_TEMPLATE


def build_explain_prompt(template: str, description: str, mode: str = "text") -> str:
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


def _generate(lm: Any, inputs: dict, max_new_tokens: int) -> str:
    import torch

    tok = lm.tokenizer
    with lm.lock, torch.no_grad():
        out = lm.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.pad_id,
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True)


def explain_head(
    lm: Any,
    result: AttentionResult,
    layer: int,
    head: int,
    template: str | None = None,
    mode: str = "text",
    max_queries: int = 32,
    max_new_tokens: int = 40,
) -> Explanation:
    """Ask the model what head layer.head does from its text description and/or heatmap PNG.

    mode: "text" (description only), "image" or "text+image" (vision-language models only).
    Greedy decoding, so the same inputs give the same explanation.
    """
    import torch

    if mode not in ("text", "image", "text+image"):
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
        from engine.attention.png import heatmap_image

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
    raw = _generate(lm, inputs, max_new_tokens)
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
    lm: Any,
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
    listing = " ".join(f"{j}:{t}" for j, t in enumerate(result.tokens))
    try:
        texts = [
            template.format(explanation=explanation, tokens=listing, position=i, token=result.tokens[i])
            for i in queries
        ]
    except (KeyError, IndexError, ValueError) as err:
        raise LabError(
            "The simulation template may only use {explanation}, {tokens}, {position} and {token} "
            f"(write other braces as {{{{ }}}}): {err!r}"
        ) from err
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


def rule_prediction(label: str, token_ids: list[int], queries: list[int]) -> dict[int, np.ndarray]:
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


def score_prediction(pattern: np.ndarray, preds: dict[int, np.ndarray]) -> dict[str, float]:
    """Top-1 agreement (1/k credit over k tied predicted maxima) and pooled Pearson r of
    predicted vs real weights over (i, j <= i); r is NaN when either side is constant."""
    from scipy.stats import pearsonr

    agree, real_all, pred_all = [], [], []
    for i, p in preds.items():
        real = np.asarray(pattern[i, : i + 1], dtype=np.float64)
        best = np.flatnonzero(np.isclose(p, p.max(), rtol=0, atol=1e-9))
        agree.append(1.0 / len(best) if int(np.argmax(real)) in best else 0.0)
        real_all.append(real)
        pred_all.append(p)
    if not agree:
        return {"top1": float("nan"), "correlation": float("nan"), "n_queries": 0}
    real_v, pred_v = np.concatenate(real_all), np.concatenate(pred_all)
    if np.ptp(real_v) == 0 or np.ptp(pred_v) == 0:
        corr = float("nan")
    else:
        corr = float(pearsonr(pred_v, real_v)[0])
    return {"top1": float(np.mean(agree)), "correlation": corr, "n_queries": len(agree)}


def verdict(scores: dict[str, dict[str, float]], margin: float = VERDICT_MARGIN) -> str:
    """One line comparing the self-explanation's top-1 agreement with the control (simulator with
    no explanation), the detector label and the best trivial baseline (margin 0.05)."""
    s = scores["self-explanation"]["top1"]
    d = scores["detector label"]["top1"]
    b = max(scores["baseline: BOS"]["top1"], scores["baseline: uniform"]["top1"])
    c = scores.get(CONTROL, {}).get("top1")
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


def heldout_prompts(tokenizer: Any, n_random: int = 1, random_len: int = 10, seed: int = 100) -> list[PromptSpec]:
    """Held-out prompts (not in the built-in detector set): two texts and random tokens x2 (seed 100+)."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    specs = [PromptSpec(p["name"], p["kind"], text=p["text"]) for p in data["heldout"]]
    for r in range(n_random):
        specs.append(
            PromptSpec(
                f"held-out random x2 #{r}",
                "repeated-random",
                token_ids=random_token_ids(tokenizer, random_len, seed + r),
            )
        )
    return specs


def run_heldout(lm: Any, specs: list[PromptSpec], max_tokens: int = 24) -> list[AttentionResult]:
    """Forward pass of each held-out prompt once (shared by every head scored)."""
    return [
        run_attention(lm, s.text, max_tokens=max_tokens, token_ids=list(s.token_ids) if s.token_ids else None)
        for s in specs
    ]


@dataclasses.dataclass
class HeadEvaluation:
    layer: int
    head: int
    explanation: str
    detector_label: str
    scores: dict[str, dict[str, float]]  # predictor -> {top1, correlation, n_queries}
    verdict: str

    def rows(self) -> list[dict]:
        return [
            {
                "layer.head": f"{self.layer}.{self.head}",
                "layer": self.layer,
                "head": self.head,
                "predictor": name,
                "top1_agreement": s["top1"],
                "correlation": s["correlation"],
                "n_queries": s["n_queries"],
                "detector_label": self.detector_label,
                "verdict": self.verdict,
                "explanation": self.explanation,
            }
            for name, s in self.scores.items()
        ]


def evaluate_explanation(
    lm: Any,
    layer: int,
    head: int,
    explanation: str,
    detector_label: str,
    heldout: list[AttentionResult],
    max_queries: int = 8,
    simulate_template: str = SIMULATE_TEMPLATE,
    control: bool = True,
) -> HeadEvaluation:
    """Simulate and score one head's explanation on held-out results against label and baselines.

    With `control`, the simulator also runs with no explanation: its prior over earlier tokens.
    An explanation only carries information when it beats that control.
    """
    names = PREDICTORS + ((CONTROL,) if control else ())
    pooled: dict[str, tuple[list, list]] = {p: ([], []) for p in names}
    for res in heldout:
        queries = query_positions(len(res.token_ids), max_queries)
        pattern = res.head(layer, head)
        predictions = {
            "self-explanation": simulate_with_lm(lm, explanation, res, queries, simulate_template),
            "detector label": rule_prediction(detector_label, res.token_ids, queries),
            "baseline: BOS": rule_prediction("bos_sink", res.token_ids, queries),
            "baseline: uniform": rule_prediction("uniform", res.token_ids, queries),
        }
        if control:
            predictions[CONTROL] = simulate_with_lm(lm, NO_EXPLANATION, res, queries, simulate_template)
        for name, preds in predictions.items():
            pooled[name][0].append(pattern)
            pooled[name][1].append(preds)
    scores = {name: _pooled_score(patterns, preds) for name, (patterns, preds) in pooled.items()}
    return HeadEvaluation(layer, head, explanation, detector_label, scores, verdict(scores))


def _pooled_score(patterns: list[np.ndarray], preds: list[dict[int, np.ndarray]]) -> dict[str, float]:
    """score_prediction pooled over several prompts: top-1 over all query rows, r over all pairs."""
    from scipy.stats import pearsonr

    agree, real_all, pred_all = [], [], []
    for pattern, pred in zip(patterns, preds):
        s = score_prediction(pattern, pred)
        agree.extend([s["top1"]] * s["n_queries"])
        real_all.extend(pattern[i, : i + 1] for i in pred)
        pred_all.extend(pred.values())
    if not agree:
        return {"top1": float("nan"), "correlation": float("nan"), "n_queries": 0}
    real_v, pred_v = np.concatenate(real_all), np.concatenate(pred_all)
    corr = float("nan") if np.ptp(real_v) == 0 or np.ptp(pred_v) == 0 else float(pearsonr(pred_v, real_v)[0])
    return {"top1": float(np.mean(agree)), "correlation": corr, "n_queries": len(agree)}


def explain_and_score(
    lm: Any,
    result: AttentionResult,
    heads: list[tuple[int, int]],
    detector_labels: dict[tuple[int, int], str],
    heldout: list[AttentionResult] | None = None,
    template: str | None = None,
    mode: str = "text",
    max_queries: int = 8,
    max_new_tokens: int = 40,
    control: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    explanations: dict[tuple[int, int], str] | None = None,
    simulate_template: str = SIMULATE_TEMPLATE,
) -> list[HeadEvaluation]:
    """Batch: for each head, explain (or reuse `explanations`), simulate on held-out, score."""
    if not heads:
        raise LabError("No heads chosen to explain.")
    heldout = heldout if heldout is not None else run_heldout(lm, heldout_prompts(lm.tokenizer))
    out = []
    for k, (layer, head) in enumerate(heads):
        if progress:
            progress(k, len(heads), f"head {layer}.{head}")
        text = (explanations or {}).get((layer, head))
        if text is None:
            text = explain_head(lm, result, layer, head, template, mode, max_new_tokens=max_new_tokens).text
        label = detector_labels.get((layer, head), "diffuse")
        out.append(
            evaluate_explanation(
                lm, layer, head, text, label, heldout, max_queries, simulate_template=simulate_template, control=control
            )
        )
    if progress:
        progress(len(heads), len(heads), "done")
    return out


def evaluations_table(evaluations: list[HeadEvaluation]) -> pd.DataFrame:
    """All predictors' scores for all heads, one row per (head, predictor)."""
    return pd.DataFrame([r for e in evaluations for r in e.rows()])
