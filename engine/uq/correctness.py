"""Is the graded answer right? Automatic judges against the references, an LLM judge, manual marks.

- `contains`: a normalised reference occurs in the normalised answer as whole words (or equals it).
- `f1`: SQuAD token F1 (Rajpurkar et al. 2016), best over references; right when strictly above
  `f1_threshold` (0.5: sharing one word of a two-word reference, F1 = 0.5, is not enough: "Steve
  Wozniak" for "Steve Jobs", "Julius Caesar" for "Caesar Augustus", "Pacific Ocean" for "Atlantic Ocean").
- `auto` (default): contains OR f1 > threshold.
- `embedding`: cosine similarity of MiniLM embeddings, best over references, >= `embedding_threshold`.
- `llm`: the Nature paper's prompt (Farquhar et al. 2024) to a language model, constrained to yes/no:
  right when p("yes") > p("no") at the first answer token (both case variants summed).
Normalisation (SQuAD): lower case, drop punctuation and the articles a/an/the, collapse whitespace.
Manual marks (id -> bool) override every automatic judge.
"""

from __future__ import annotations

import collections
import functools
import re
import string
import unicodedata
from typing import Literal, get_args

import numpy as np
import pandas as pd

from engine.core.model import LoadedModel

Judge = Literal["auto", "contains", "f1", "embedding", "llm"]
JUDGES: tuple[Judge, ...] = get_args(Judge)
F1_THRESHOLD = 0.5
EMBEDDING_THRESHOLD = 0.7
JUDGE_PROMPT = (
    "We are assessing the quality of answers to the following question: {question}\n"
    "{expected}\n"
    "The proposed answer is: {answer}\n"
    "Within the context of the question, does the proposed answer mean the same as the expected answer? "
    "Respond only with yes or no.\nResponse:"
)
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: NFKC, lower case, no punctuation, no articles, single spaces."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 of two strings after normalize_answer."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_reference(answer: str, references: list[str]) -> bool:
    """A normalised reference appears in the normalised answer on word boundaries."""
    ans = f" {normalize_answer(answer)} "
    if not ans.strip():
        return False
    return any(ref and f" {ref} " in ans for ref in (normalize_answer(r) for r in references))


def best_f1(answer: str, references: list[str]) -> float:
    return max((token_f1(answer, r) for r in references), default=float("nan"))


def grade_automatic(
    answers: list[str],
    references: list[list[str]],
    *,
    f1_threshold: float = F1_THRESHOLD,
    embedder=None,
    embedding_threshold: float = EMBEDDING_THRESHOLD,
) -> pd.DataFrame:
    """Per answer: contains, f1, the auto verdict and (with an embedder) the embedding verdict.

    Questions without references get NaN scores and missing (None) verdicts.
    """
    rows = []
    for answer, refs in zip(answers, references):
        if not refs:
            rows.append({"contains": None, "f1": float("nan"), "f1_correct": None, "auto": None})
            continue
        contains = contains_reference(answer, refs)
        f1 = best_f1(answer, refs)
        rows.append(
            {"contains": contains, "f1": f1, "f1_correct": f1 > f1_threshold, "auto": contains or f1 > f1_threshold}
        )
    frame = pd.DataFrame(rows, columns=["contains", "f1", "f1_correct", "auto"])
    if embedder is not None:
        frame["embedding_sim"] = _similarity_memo(embedder, tuple(answers), tuple(map(tuple, references))).copy()
        frame["embedding"] = [None if np.isnan(s) else bool(s >= embedding_threshold) for s in frame["embedding_sim"]]
    return frame


@functools.lru_cache(maxsize=8)
def _similarity_memo(embedder, answers: tuple[str, ...], references: tuple[tuple[str, ...], ...]) -> np.ndarray:
    """`embedding_similarity`, remembered: the page re-grades on every mark or threshold change, and
    the similarities depend on the texts only (read-only array)."""
    sims = embedding_similarity(embedder, list(answers), [list(r) for r in references])
    sims.flags.writeable = False
    return sims


def embedding_similarity(embedder, answers: list[str], references: list[list[str]]) -> np.ndarray:
    """Best cosine similarity (MiniLM, unit-norm) between each answer and its references; NaN without any."""
    from engine.core.embedder import embed

    flat = [r for refs in references for r in refs]
    if not flat:
        return np.full(len(answers), np.nan)
    ans_emb = embed(embedder, [a if a.strip() else "(no answer)" for a in answers])
    ref_emb = embed(embedder, flat)
    out = np.full(len(answers), np.nan)
    start = 0
    for i, refs in enumerate(references):
        if refs:
            out[i] = float(np.max(ref_emb[start : start + len(refs)] @ ans_emb[i]))
        start += len(refs)
    return out


def judge_prompt(question: str, references: list[str], answer: str) -> str:
    """The LLM-judge prompt of Farquhar et al. 2024 (one or several expected answers)."""
    if len(references) == 1:
        expected = f"The expected answer is: {references[0]}."
    else:
        expected = "The following are expected answers to this question: " + "; ".join(references) + "."
    return JUDGE_PROMPT.format(question=question, expected=expected, answer=answer or "(no answer)")


def _first_token_ids(tokenizer, words: list[str]) -> list[int]:
    ids = set()
    for word in words:
        for variant in (word, " " + word):
            tokens = tokenizer.encode(variant, add_special_tokens=False)
            if tokens:
                ids.add(tokens[0])
    return sorted(ids)


def llm_judge(
    lm: LoadedModel,
    questions: list[str],
    references: list[list[str]],
    answers: list[str],
    *,
    progress=None,
    stop=None,
) -> list[bool | None]:
    """Yes/no verdicts of `lm` with the Nature prompt: p(yes) > p(no) at the first response token.

    None for questions without references (or when stopped). `progress(done, total)` is called after
    each question; `stop` is a threading.Event that ends the loop early. Holds `lm.lock` per question.
    """
    import torch

    tokenizer = lm.tokenizer
    yes_ids = _first_token_ids(tokenizer, ["yes", "Yes", "YES"])
    no_ids = _first_token_ids(tokenizer, ["no", "No", "NO"])
    verdicts: list[bool | None] = []
    for i, (question, refs, answer) in enumerate(zip(questions, references, answers)):
        if stop is not None and stop.is_set():
            verdicts.extend([None] * (len(questions) - i))
            break
        if not refs:
            verdicts.append(None)
        else:
            ids = lm.prompt_inputs(judge_prompt(question, refs, answer)).input_ids
            with lm.lock, torch.no_grad():
                logits = lm.model(input_ids=ids.to(lm.device), logits_to_keep=1).logits[0, -1].float()
            probs = torch.softmax(logits, -1)
            verdicts.append(bool(probs[yes_ids].sum() > probs[no_ids].sum()))
        if progress is not None:
            progress(i + 1, len(questions))
    return verdicts


def apply_marks(verdict: pd.Series, marks: dict[str, bool]) -> pd.Series:
    """Final correctness: the manual mark where there is one, else the automatic verdict (index = id)."""
    out = verdict.copy().astype(object)
    for qid, mark in marks.items():
        if qid in out.index and mark is not None:
            out.loc[qid] = bool(mark)
    return out


def agreement(judges: pd.DataFrame) -> pd.DataFrame:
    """Pairwise agreement of judge columns (bool / None): n rows both graded, % equal, Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    rows = []
    names = list(judges.columns)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = judges[[a, b]].dropna()
            n = len(both)
            if n == 0:
                rows.append({"judge A": a, "judge B": b, "n": 0, "agreement": float("nan"), "kappa": float("nan")})
                continue
            x, y = both[a].astype(bool).to_numpy(), both[b].astype(bool).to_numpy()
            agree = float(np.mean(x == y))
            if len(set(x) | set(y)) < 2:
                kappa = float("nan")
            else:
                kappa = float(cohen_kappa_score(x, y))
            rows.append({"judge A": a, "judge B": b, "n": n, "agreement": agree, "kappa": kappa})
    return pd.DataFrame(rows, columns=["judge A", "judge B", "n", "agreement", "kappa"])
