"""All-heads forward pass: maps equal a hand-computed softmax(QKᵀ·scale + mask), readable tokens,
GQA groups, layer labels, descriptions, truncation and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attention import maps as att
from engine.core.errors import LabError


def test_readable_tokens_and_unique_labels():
    assert att.readable_token("\u2581cat") == "cat"
    assert att.readable_token("\u0120cat") == "cat"
    assert att.readable_token("<bos>", special=True) == "\u27e8bos\u27e9"
    assert att.readable_token("\n") == "\u21b5"
    assert att.readable_token("<0x0A>") == "\u21b5"
    assert att.readable_token("\u2581") == "\u2423"
    assert att.readable_token("\u2581\u200b") == "\\u200b"
    assert att.readable_token("\u65e5\u672c") == "\u65e5\u672c"
    assert att.unique_labels(["a", "the", "b", "the"]) == ["a", "the@1", "b", "the@3"]
    labels = att.unique_labels(["x@1", "x", "x"])  # a literal 'x@1' token next to made-up labels
    assert len(set(labels)) == 3


def test_kv_groups_head_and_layer_labels():
    assert att.kv_groups(4, 1) == [[0, 1, 2, 3]]
    assert att.kv_groups(4, 2) == [[0, 1], [2, 3]]
    assert att.kv_groups(4, None) == [[0], [1], [2], [3]]
    with pytest.raises(LabError):
        att.kv_groups(4, 3)
    assert att.head_labels(4, 2) == ["H0 kv0", "H1 kv0", "H2 kv1", "H3 kv1"]
    assert att.head_labels(2, 2) == ["H0", "H1"]
    assert att.layer_labels(["sliding_attention", "full_attention"], 512) == ["L0 local(512)", "L1 global"]
    assert att.parse_head("3.1", 18, 4) == (3, 1)
    for bad in ("3", "x.1", "18.0", "0.4"):
        with pytest.raises(LabError):
            att.parse_head(bad, 18, 4)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def test_tiny_gemma3_maps_equal_hand_computed_softmax(tiny_gemma3):
    """Tiny Gemma 3 (layer 0 sliding window 8, layer 1 global; 4 query heads on 2 KV heads):
    from the attention module's own inputs, q/k = RMSNorm(W x) with rotary embeddings, scores =
    q kᵀ · query_pre_attn_scalar^-0.5 + causal (and sliding-window) mask, softmax; equals the map."""
    lm = tiny_gemma3
    cfg = lm.text_config
    from engine.core.architecture import decoder_layers

    captured = {}
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: captured.__setitem__(
                i, (kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"])
            ),
            with_kwargs=True,
        )
        for i, layer in enumerate(decoder_layers(lm.model))
    ]
    ids = list(range(5, 17))  # 12 tokens > sliding window 8
    try:
        result = att.run_attention(lm, token_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    n, hd, nh, nkv = len(ids), cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    scale = cfg.query_pre_attn_scalar**-0.5
    for i, layer in enumerate(decoder_layers(lm.model)):
        attn = layer.self_attn
        x, (cos, sin) = captured[i]
        with torch.no_grad():
            q = attn.q_norm(attn.q_proj(x).view(1, n, nh, hd).transpose(1, 2))
            k = attn.k_norm(attn.k_proj(x).view(1, n, nkv, hd).transpose(1, 2))
            cos_, sin_ = cos.unsqueeze(1), sin.unsqueeze(1)
            q = q * cos_ + _rotate_half(q) * sin_
            k = k * cos_ + _rotate_half(k) * sin_
            k = k.repeat_interleave(nh // nkv, dim=1)  # query head h reads KV head h // 2
            scores = (q @ k.transpose(-1, -2)) * scale
        qi, kj = np.arange(n)[:, None], np.arange(n)[None, :]
        allowed = kj <= qi
        if result.layer_types[i] == "sliding_attention":
            allowed &= kj > qi - cfg.sliding_window
        s = scores[0].numpy().astype(np.float64)
        s[:, ~allowed] = -np.inf
        expected = np.exp(s - s.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(result.maps[i], expected, atol=1e-5)
    assert result.layer_types == ["sliding_attention", "full_attention"]
    assert result.maps[0, :, 11, :4].max() == 0.0  # outside the window of 8
    assert result.maps[1, :, 11, :4].min() > 0.0  # the global layer sees them


def test_run_attention_tiny_model_shapes_truncation_and_bad_input(tiny_gemma3):
    r = att.run_attention(tiny_gemma3, "The cat sat on the mat. The cat", max_tokens=64)
    assert r.maps.shape == (2, 4, len(r.token_ids), len(r.token_ids))
    np.testing.assert_allclose(r.maps.sum(-1), 1.0, atol=1e-5)
    assert r.tokens[0] == "\u27e8bos\u27e9" and r.labels[1] == "The@1"  # " The" later reads the same
    assert len(set(r.labels)) == len(r.labels) and "cat@2" in r.labels and "cat@9" in r.labels
    assert r.head_labels() == ["H0 kv0", "H1 kv0", "H2 kv1", "H3 kv1"] and r.note == ""
    short = att.run_attention(tiny_gemma3, "The cat sat on the mat. The cat", max_tokens=5)
    assert len(short.token_ids) == 5 and short.truncated
    assert "first 5 of" in short.note and str(len(r.token_ids)) in short.note
    for empty in ("", "   \n\t"):
        with pytest.raises(LabError, match="Empty prompt"):
            att.run_attention(tiny_gemma3, empty)
    with pytest.raises(LabError):
        att.run_attention(tiny_gemma3, "x", max_tokens=1)
    odd = att.run_attention(tiny_gemma3, "e\u0301 \u200b\u202e\u05e9\u05dc\u05d5\u05dd \U0001f642 \x00\n\t")
    assert np.isfinite(odd.maps).all() and len(set(odd.labels)) == len(odd.labels)


def test_model_without_attention_weights_names_the_model(tiny_llama_dir):
    from engine.core.loading import load_model

    lm = load_model(str(tiny_llama_dir), attn_implementation="sdpa")
    with pytest.raises(LabError) as err:
        att.run_attention(lm, "The cat sat")
    assert str(tiny_llama_dir) in str(err.value) and "sdpa" in str(err.value) and "eager" in str(err.value)


def fake_result(pattern: np.ndarray, labels: list[str]) -> att.AttentionResult:
    n = pattern.shape[0]
    return att.AttentionResult(
        "m",
        "p",
        list(range(n)),
        labels,
        labels,
        labels,
        pattern[None, None].astype(np.float32),
        ["full_attention"],
        1,
        None,
        n,
        64,
    )


def test_description_top5_table_and_text():
    a = np.zeros((7, 7))
    a[0, 0] = 1.0
    for i in range(1, 7):
        a[i, : i + 1] = np.arange(1, i + 2) / np.arange(1, i + 2).sum()  # later keys weigh more
    labels = ["\u27e8bos\u27e9", "a", "b", "c", "d", "e", "f"]
    res = fake_result(a, labels)
    df = att.describe_head(res, 0, 0)
    assert list(df.columns[:4]) == ["pos", "token", "top1", "w1"] and len(df) == 7
    row6 = df.iloc[6]
    assert [row6[f"top{r}"] for r in range(1, 6)] == ["f", "e", "d", "c", "b"]
    assert row6["w1"] == pytest.approx(7 / 28, abs=1e-3)
    assert df.iloc[1]["top3"] == "" and np.isnan(df.iloc[1]["w3"])  # only 2 keys exist
    text = att.description_text(res, 0, 0)
    lines = text.splitlines()
    assert lines[0] == "0 \u27e8bos\u27e9 -> \u27e8bos\u27e9 (1.00)"
    assert lines[2] == "2 b -> b (0.50), a (0.33), \u27e8bos\u27e9 (0.17)"
    assert lines[6].count("(") == 5
    assert att.all_descriptions(res) == {"0.0": text}


def test_real_model_all_heads_and_gemma3_labels(embedded_lm):
    r = att.run_attention(embedded_lm, "Paris is in France. Paris is big.")
    assert r.maps.shape[:2] == (18, 4) and r.maps.dtype == np.float32
    np.testing.assert_allclose(r.maps.sum(-1), 1.0, atol=1e-4)
    labels = r.layer_labels()
    assert labels[5] == "L5 global" and labels[0] == "L0 local(512)" and sum("global" in x for x in labels) == 3
    assert r.head_labels() == ["H0 kv0", "H1 kv0", "H2 kv0", "H3 kv0"]
    assert r.tokens[0] == "\u27e8bos\u27e9" and "Paris@1" in r.labels and "France" in r.labels
    assert len(att.all_descriptions(r)) == 72
