"""Head-function detectors on hand-made attention tensors with exactly known scores, aggregation,
and the real embedded model's induction / previous-token heads on random tokens repeated twice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.attention import head_functions
from engine.core.errors import LabError


def one_hot_rows(n: int, targets: dict[int, int]) -> np.ndarray:
    """A causal pattern whose row i puts all weight on targets.get(i, 0)."""
    a = np.zeros((n, n))
    for i in range(n):
        a[i, targets.get(i, 0)] = 1.0
    return a


def test_detection_patterns_are_exactly_the_issue_definitions():
    tokens = [2, 5, 7, 5, 7, 9]
    dup = head_functions.duplicate_token_pattern(tokens)
    ind = head_functions.induction_pattern(tokens)
    assert set(zip(*np.nonzero(dup))) == {(3, 1), (4, 2)}
    # induction: i=3 (t=5): t_{j-1}=5 at j-1=1 -> j=2; i=4 (t=7): j-1=2 -> j=3
    assert set(zip(*np.nonzero(ind))) == {(3, 2), (4, 3)}
    assert set(zip(*np.nonzero(head_functions.previous_token_pattern(4)))) == {(1, 0), (2, 1), (3, 2)}
    # a token repeated right away: induction target j = i is allowed (j <= i), j-1 < i
    assert set(zip(*np.nonzero(head_functions.induction_pattern([2, 5, 5])))) == {(2, 2)}


def test_scores_on_hand_made_patterns():
    n = 6
    tokens = [2, 5, 7, 8, 5, 9]  # 5 repeats: duplicate target (4, 1), induction target (4, 2)
    prev = one_hot_rows(n, {i: i - 1 for i in range(1, n)})
    induction = one_hot_rows(n, {4: 2})  # other rows on BOS
    duplicate = one_hot_rows(n, {4: 1, 2: 2})
    half = 0.5 * prev + 0.5 * one_hot_rows(n, {})  # half previous token, half BOS
    maps = np.stack([prev, induction, duplicate, half])[None]  # [1 layer, 4 heads, n, n]
    s = head_functions.score_heads(maps, tokens)
    # Σ(A⊙D)/ΣA with ΣA = 6 rows; row 1 on BOS is also its previous token
    assert s["previous_token"][0].tolist() == pytest.approx([5 / 6, 1 / 6, 1 / 6, (1.0 + 4 * 0.5) / 6])
    assert s["induction"][0].tolist() == pytest.approx([0.0, 1 / 6, 0.0, 0.0])
    assert s["duplicate_token"][0].tolist() == pytest.approx([0.0, 0.0, 1 / 6, 0.0])
    # BOS over rows i >= 1
    assert s["bos_sink"][0].tolist() == pytest.approx([1 / 5, 4 / 5, 3 / 5, (1.0 + 4 * 0.5) / 5])
    assert s["self"][0].tolist() == pytest.approx([0.0, 0.0, 1 / 5, 0.0])
    assert s["spread"][0].tolist() == pytest.approx([0.0, 0.0, 0.0, 4 * math.log(2) / 5])


def test_uniform_attention_self_and_spread():
    n = 5
    a = np.tril(np.ones((n, n)))
    a /= a.sum(1, keepdims=True)
    s = head_functions.score_heads(a[None, None], [2, 3, 4, 5, 6])
    assert s["spread"][0, 0] == pytest.approx(np.mean([math.log(i + 1) for i in range(1, n)]))
    assert s["self"][0, 0] == pytest.approx(np.mean([1 / (i + 1) for i in range(1, n)]))
    assert s["bos_sink"][0, 0] == pytest.approx(s["self"][0, 0])
    assert s["previous_token"][0, 0] == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / n)
    with pytest.raises(LabError):
        head_functions.score_heads(a[None, None], [1, 2])


def test_ceilings_and_defined():
    tokens = [2, 5, 7, 5, 7, 9]
    c = head_functions.pattern_ceilings(tokens)
    assert c == pytest.approx({"previous_token": 5 / 6, "duplicate_token": 2 / 6, "induction": 2 / 6})
    d = head_functions.defined_functions([2, 3, 4])
    assert d["previous_token"] and not d["induction"] and not d["duplicate_token"]


def make_table(per_prompt: dict[str, np.ndarray], ceilings=None) -> head_functions.HeadFunctionTable:
    p = next(iter(per_prompt.values())).shape[0]
    full = {fn: per_prompt.get(fn, np.zeros((p, 1, 3))) for fn in head_functions.FUNCTIONS}
    return head_functions.HeadFunctionTable(
        "m", [f"p{i}" for i in range(p)], full, ["full_attention"], 3, [6] * p, ceilings or {}
    )


def test_aggregation_mean_std_skip_undefined_and_best_labels():
    nan = np.nan
    induction = np.array([[[0.1, 0.2, nan]], [[0.3, 0.2, nan]]])
    prev = np.array([[[0.0, 0.5, 0.1]], [[0.0, 0.7, 0.1]]])
    bos = np.array([[[0.9, 0.1, 0.1]], [[0.7, 0.1, 0.2]]])
    spread = np.array([[[0.2, 0.5, 1.5]], [[0.4, 0.5, 1.7]]])
    table = make_table(
        {"induction": induction, "previous_token": prev, "bos_sink": bos, "spread": spread},
        ceilings={
            "induction": np.array([0.25, 0.5]),
            "previous_token": np.array([0.9, 0.9]),
            "duplicate_token": np.array([0.0, 0.0]),
        },
    )
    assert table.mean("induction")[0].tolist()[:2] == pytest.approx([0.2, 0.2])
    assert np.isnan(table.mean("induction")[0, 2])  # defined on no prompt
    assert table.std("induction")[0, 0] == pytest.approx(0.1)  # population std of 0.1, 0.3
    assert table.n_defined("induction")[0].tolist() == [2, 2, 0]
    # ceiling-normalised induction of head 0: mean(0.1/0.25, 0.3/0.5) = 0.5 -> beats BOS for the label
    assert table.normalised_mean("induction")[0, 0] == pytest.approx(0.5)
    labels = head_functions.best_labels(table)[0]
    assert labels[0] == ("induction", pytest.approx(0.5))
    assert labels[1] == ("previous_token", pytest.approx(np.mean([0.5 / 0.9, 0.7 / 0.9])))
    assert labels[2] == ("diffuse", pytest.approx(1.6))
    assert [h for _, h, _ in table.ranking("previous_token")][:1] == [1]
    long = table.table()
    assert len(long) == 3 * len(head_functions.FUNCTIONS) and set(long.columns) >= {
        "layer",
        "head",
        "function",
        "mean",
        "std",
        "n_prompts",
    }


def test_random_repeated_sequences_and_prompt_files(tmp_path, tiny_gemma3):
    ids = head_functions.random_token_ids(tiny_gemma3.tokenizer, 10, seed=3)
    assert ids[0] == tiny_gemma3.tokenizer.bos_token_id and len(ids) == 21
    assert ids[1:11] == ids[11:] and len(set(ids[1:11])) == 10
    assert head_functions.random_token_ids(tiny_gemma3.tokenizer, 10, seed=3) == ids  # seeded
    specs = head_functions.builtin_prompts(tiny_gemma3.tokenizer, n_random=2)
    assert {s.kind for s in specs} >= {"natural", "code", "list", "repeated-random"}
    (tmp_path / "p.txt").write_text("first prompt\n\n second \n")
    assert [s.text for s in head_functions.read_prompts_file(tmp_path / "p.txt")] == ["first prompt", "second"]
    (tmp_path / "p.json").write_text('["a b", "c"]')
    assert [s.text for s in head_functions.read_prompts_file(tmp_path / "p.json")] == ["a b", "c"]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(LabError):
        head_functions.read_prompts_file(tmp_path / "bad.json")
    with pytest.raises(LabError):
        head_functions.run_prompt_set(tiny_gemma3, [])


def test_real_model_induction_heads_on_repeated_random_tokens(embedded_lm):
    """Top induction head on random tokens x2 scores far above the same positional stripe on
    unrepeated random tokens of the same length; the top previous-token head is a strong one."""
    from engine.attention.maps import run_attention

    tok = embedded_lm.tokenizer
    table = head_functions.run_prompt_set(embedded_lm, head_functions.builtin_prompts(tok, n_random=2, texts=False))
    layer, head, score = table.ranking("induction", 1)[0]
    p_layer, p_head, p_score = table.ranking("previous_token", 1)[0]
    assert score > 0.25 and p_score > 0.5
    repeated = head_functions.random_token_ids(tok, 20, seed=0)
    fresh = head_functions.random_token_ids(tok, 40, seed=5, repeat=1)  # same length, nothing repeats
    assert len(fresh) == len(repeated) and len(set(fresh)) == len(fresh)
    d = head_functions.induction_pattern(repeated)
    on_repeat = head_functions.pattern_score(run_attention(embedded_lm, token_ids=list(repeated)).head(layer, head), d)
    on_fresh = head_functions.pattern_score(run_attention(embedded_lm, token_ids=list(fresh)).head(layer, head), d)
    assert on_repeat > 0.25 and on_repeat > 5 * on_fresh
