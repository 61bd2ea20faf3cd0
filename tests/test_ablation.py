"""Ablations edit in place and restore bit-for-bit; metrics are right; 4-bit RTN; the real Gemma 3 270M table."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from test_superweights import PLANT, PROMPTS, one_torch_thread, planted_llama  # noqa: F401 (autouse fixture)

from engine.core import architecture, lm_eval, weight_edits
from engine.core.errors import LabError
from engine.superweights import ablation as ab
from engine.superweights import detect
from engine.superweights import quantize as swq
from engine.superweights.config import DEFAULT_PROMPT


@pytest.fixture(scope="module")
def lm():
    return planted_llama()


@pytest.fixture(scope="module")
def candidates(lm):
    return detect.detect(lm, PROMPTS).candidates


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def test_every_condition_restores_the_weights_bit_for_bit(lm, candidates):
    snap = _snapshot(lm.model)
    ids = lm_eval.encode(lm, PROMPTS[0])
    with torch.no_grad():
        base = lm.model(ids).logits.clone()
    for cond in ab.build_conditions(k=5, scales=[0.0, 3.0]):
        with ab.applied(lm, cond, candidates):
            with torch.no_grad():
                logits = lm.model(ids).logits
            changed = (logits - base).abs().max().item()
            if cond.kind in ("zero", "scale"):
                assert changed > 1e-3, cond.name
        assert _same(lm.model, snap), cond.name
        with torch.no_grad():
            assert torch.equal(lm.model(ids).logits, base), cond.name


def test_restore_check_raises_when_something_else_changed(lm):
    w = architecture.down_weight(lm.model, 1)
    old = w[0, 0].item()
    with pytest.raises(weight_edits.RestoreError):
        with weight_edits.edited_weights(lm, [weight_edits.ElementEdit.zero(lm.model, *PLANT)]):
            w[0, 0] = old + 1.0  # an edit the context manager did not make
    w[0, 0] = old
    assert w[PLANT[1], PLANT[2]].item() == 200.0


def test_scale_and_topk_edits(lm, candidates):
    w = architecture.down_weight(lm.model, 1)
    with ab.applied(lm, ab.Condition("x", "scale", 2.5), candidates):
        assert w[17, 42].item() == 500.0
    assert w[17, 42].item() == 200.0
    with pytest.raises(LabError, match="outside"):
        ab.build_conditions(k=3, scales=[3.5])
    with pytest.raises(LabError, match="k must be"):
        ab.build_conditions(k=0)
    edits = ab.largest_other_weights(lm, 7, [PLANT])
    coords = [(float(e.weight[r, c].abs()), e) for e in edits for r, c in zip(e.rows.tolist(), e.cols.tolist())]
    assert len(coords) == 7
    # the 7 largest |w| of all decoder linear layers apart from the super weight
    all_abs = torch.cat(
        [architecture.out_in_weight(m).abs().flatten() for _, _, m in architecture.linear_weights(lm.model)]
    )
    expected = torch.topk(all_abs, 8).values[1:]
    assert sorted(v for v, _ in coords) == pytest.approx(sorted(expected.tolist()))
    with weight_edits.edited_weights(lm, edits):
        assert w[17, 42].item() == 200.0
    assert ab.paper_k(lm) == max(1, round(1e-6 * ab.decoder_linear_count(lm)))


def test_restoring_the_super_activation_gives_back_the_original_spike(lm, candidates):
    c = candidates[0]
    ids = lm_eval.encode(lm, PROMPTS[1])
    mod = architecture.down_projections(lm.model)[c.layer]

    def spike_column(condition=None):
        out = {}
        with contextlib.ExitStack() as stack:
            if condition:
                stack.enter_context(ab.applied(lm, condition, [c]))
            # registered after the condition's own hook, so it sees the final output
            stack.callback(
                mod.register_forward_hook(lambda m, i, o: out.__setitem__("y", o[0, :, c.row].clone())).remove
            )
            with torch.no_grad():
                lm_eval.run_body(lm, ids)
        return out["y"]

    original = spike_column()
    zeroed = spike_column(ab.Condition("z", "zero"))
    restored = spike_column(ab.Condition("zr", "zero_restore_sa"))
    t = int(original.abs().argmax())
    assert abs(zeroed[t]) < 0.01 * abs(original[t])
    assert restored[t].item() == pytest.approx(original[t].item(), rel=1e-5)
    others = torch.arange(len(original)) != t
    assert torch.equal(restored[others], zeroed[others])  # ordinary tokens keep the ablated value
    assert len(mod._forward_hooks) == 0


def test_chunked_perplexity_equals_the_library_loss(lm):
    text = "The cat sat on the mat. Summer is hot. Winter is cold. " * 6
    windows = lm_eval.eval_windows(lm, text, window=32, max_tokens=60)
    assert all(w[0, 0].item() == lm.tokenizer.bos_token_id for w in windows)
    assert sum(w.shape[1] - 1 for w in windows) == 60 and all(w.shape[1] <= 32 for w in windows)
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            out = lm.model(w, labels=w)
            nll += out.loss.item() * (w.shape[1] - 1)
            n += w.shape[1] - 1
    expected = math.exp(nll / n)
    assert lm_eval.perplexity(lm, windows, vocab_tile=7) == pytest.approx(expected, rel=1e-5)
    assert lm_eval.perplexity(lm, windows, vocab_tile=10**6) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(LabError, match="empty"):
        lm_eval.eval_windows(lm, "   ")


@pytest.mark.parametrize("cap", [None, 0.5])
def test_tiled_nll_equals_cross_entropy_on_full_logits(lm, cap, monkeypatch):
    monkeypatch.setattr(lm.text_config, "final_logit_softcapping", cap, raising=False)
    ids = lm_eval.encode(lm, "The cat sat on the mat. Summer is hot. Winter is cold.")
    with torch.no_grad():
        hidden = lm_eval.run_body(lm, ids)[0, :-1]
    targets = ids[0, 1:]
    logits = lm_eval.logits_of(lm, hidden)
    if cap:
        assert logits.abs().max() < cap  # soft-capping was applied
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    for tile in (1, 7, vocab - 1, vocab, 10**6):  # uneven tiles, a target in the last partial tile
        got = lm_eval.next_token_nll(lm, hidden, targets, vocab_tile=tile)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stopword_shift_and_continuation(lm):
    ids = ab.stopword_ids(lm.tokenizer)
    the = lm.tokenizer(" the", add_special_tokens=False).input_ids
    assert len(the) == 1 and the[0] in ids
    frame = ab.stopword_shift(lm, [("The cat sat on", " mat"), ("Summer is", " hot")])
    for i, prompt in enumerate(["The cat sat on", "Summer is"]):  # left-padded batch = each prompt alone
        with torch.no_grad():
            probs = torch.softmax(lm.model(lm_eval.encode(lm, prompt)).logits[0, -1].float(), dim=-1)
        assert frame.loc[i, "p_stopwords"] == pytest.approx(float(probs[torch.tensor(ids)].sum()), rel=1e-5)
        mat = lm.tokenizer(" mat" if i == 0 else " hot", add_special_tokens=False).input_ids[0]
        assert frame.loc[i, "p_expected"] == pytest.approx(float(probs[mat]), rel=1e-5)
    assert 0 < frame.loc[0, "p_expected"] < 1
    prompts = ["The cat", "Apple Inc. is a worldwide tech", "Summer is hot. Winter is"]  # unequal lengths
    batched = ab.greedy_continuations(lm, prompts, max_new_tokens=4)
    alone = [ab.greedy_continuations(lm, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == alone and all(batched)  # left padding changes nothing
    for prompt, text in zip(prompts, batched):  # = a plain argmax loop without a KV cache
        ids = lm_eval.encode(lm, prompt)
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(4):
                ids = torch.cat([ids, lm.model(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert text == lm.tokenizer.decode(ids[0, start:], skip_special_tokens=True)
    assert ab.greedy_continuations(lm, []) == []


def test_ablation_refused_on_quantized_model(lm, candidates):
    q = dataclasses.replace(lm, quantization="8bit")
    with pytest.raises(LabError, match="8bit"):
        ab.ablation_table(q, candidates, max_tokens=16)
    with pytest.raises(LabError, match="8bit"):
        swq.quantization_table(q, candidates, [64], max_tokens=16)


def test_rtn_blockwise_properties():
    torch.manual_seed(0)
    w = torch.randn(8, 64) * 0.02
    w[3, 5] = 5.0
    q = swq.rtn_blockwise(w, bits=4, block_size=32)
    blocks = q.flatten().view(-1, 32)
    assert all(len(torch.unique(b)) <= 16 for b in blocks)
    step = (w.flatten().view(-1, 32).amax(1) - w.flatten().view(-1, 32).amin(1)) / 15
    assert ((q - w).abs().flatten().view(-1, 32) <= step[:, None] / 2 + 1e-6).all()
    mask = swq.hold_mask(w, [(3, 5)], clip_fraction=0.0)
    held = swq.rtn_blockwise(w, bits=4, block_size=32, hold=mask)
    assert held[3, 5].item() == 5.0
    # holding the outlier shrinks the error of its block's other weights
    block = slice(0, 32)
    err_plain = (q[3, block] - w[3, block]).abs()[torch.arange(32) != 5].mean()
    err_held = (held[3, block] - w[3, block]).abs()[torch.arange(32) != 5].mean()
    assert err_held < err_plain / 10
    assert swq.hold_mask(w, [], clip_fraction=2 / 512).sum() == 2


def test_quantization_table_restores_weights(lm, candidates):
    snap = _snapshot(lm.model)
    text = "The cat sat on the mat. Summer is hot. Winter is cold. " * 4
    table = swq.quantization_table(lm, candidates, [32, 1024], eval_text=text, window=32, max_tokens=40)
    assert _same(lm.model, snap)
    assert len(table) == 1 + 2 * 3
    assert table.loc[0, "ppl_ratio"] == 1.0
    rows = table.set_index(["block_size", "method"])
    assert rows.loc[(1024, "rtn, super weight held"), "held_weights"] == 1
    assert rows.loc[(1024, "rtn"), "held_weights"] == 0
    assert rows.loc[(1024, "rtn, super weight + outliers held"), "held_weights"] > 1
    assert table["perplexity"].map(math.isfinite).all()
    # at a large block size the planted weight wipes out its block under plain RTN; holding it does not
    w = architecture.down_weight(lm.model, 1)
    errors = {}
    for method in ("rtn", "rtn, super weight held"):
        pairs, _ = swq.quantized_copies(lm, candidates, 4, 1024, method, 0.0)
        down = next(new for target, new in pairs if target.data_ptr() == w.data_ptr())
        diff = (down[16:24] - w[16:24]).abs()  # rows 16..23: the 1024-weight block of W[17, 42]
        diff[1, 42] = 0
        errors[method] = diff.mean().item()
        if method != "rtn":
            assert down[17, 42].item() == 200.0  # held in full precision
    assert errors["rtn, super weight held"] < errors["rtn"] / 10


def test_plain_rtn_copies_are_shared_across_methods_with_the_same_numbers(lm, candidates):
    """Per block size the plain RTN copy of a matrix is computed once and reused by every method that holds
    nothing in it: the replacements equal those computed afresh, and the table keeps the order of `methods`."""
    plain: dict[int, torch.Tensor] = {}
    for method in ("rtn", "rtn, super weight held", "rtn, super weight + outliers held"):
        shared, held_shared = swq.quantized_copies(lm, candidates, 4, 64, method, 1e-3, plain)
        fresh, held_fresh = swq.quantized_copies(lm, candidates, 4, 64, method, 1e-3)
        assert held_shared == held_fresh
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(shared, fresh))
    n = len(architecture.linear_weights(lm.model))
    assert len(plain) == n
    text = "The cat sat on the mat. Summer is hot. Winter is cold. " * 4
    methods = ["rtn, super weight + outliers held", "rtn", "rtn, super weight held"]
    table = swq.quantization_table(lm, candidates, [64], methods=methods, eval_text=text, window=32, max_tokens=40)
    assert list(table["method"])[1:] == methods
    windows = lm_eval.eval_windows(lm, text, 32, 40)
    for method, ppl in zip(methods, table["perplexity"][1:]):
        pairs, _ = swq.quantized_copies(lm, candidates, 4, 64, method, 1e-4)
        with weight_edits.replaced_weights(lm, pairs):
            assert lm_eval.perplexity(lm, windows) == ppl


def test_embedded_gemma_ablation_table(embedded_lm):
    """The table on the real model, reported whatever it shows; the shared model is left unchanged."""
    det = detect.detect(embedded_lm, DEFAULT_PROMPT, max_iterations=1)
    assert len(det.candidates) == 1
    c = det.candidates[0]
    w = architecture.down_weight(embedded_lm.model, c.layer)
    before = w.clone()
    result = ab.ablation_table(
        embedded_lm,
        det.candidates,
        k=20,
        scales=[2.0],
        window=64,
        max_tokens=63,
        continuation_prompts=["Summer is hot. Winter is"],
        stopword_prompts=ab.STOPWORD_PROMPTS[:2],
        max_new_tokens=3,
    )
    assert list(result.table["condition"]) == [
        "original",
        "super weight zeroed",
        "zeroed, super activation restored",
        "top-20 other weights zeroed",
        "super weight x 2",
    ]
    assert result.table["perplexity"].map(math.isfinite).all() and (result.table["perplexity"] > 1).all()
    assert result.eval_tokens == 63 and len(result.continuations) == 5
    assert torch.equal(w, before)
    # the original row equals an independent perplexity via the library's own loss
    windows = lm_eval.eval_windows(embedded_lm, None, 64, 63)
    assert len(windows) == 1
    with torch.no_grad():
        loss = embedded_lm.model(windows[0], labels=windows[0]).loss.item()
    assert result.table.loc[0, "perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    print("\n" + result.table.to_string())


def test_gpt2_quantized_copies_keep_the_conv1d_layout():
    from test_superweights import planted_gpt2

    gpt2 = planted_gpt2()
    cands = detect.detect(gpt2, PROMPTS, max_iterations=1).candidates
    assert cands[0].coord == PLANT
    pairs, held = swq.quantized_copies(gpt2, cands, 4, 256, "rtn, super weight held", 0.0)
    assert held == 1 and all(t.shape == q.shape for t, q in pairs)
    stored = gpt2.model.transformer.h[1].mlp.c_proj.weight
    q = next(q for t, q in pairs if t.data_ptr() == stored.data_ptr())
    assert q[42, 17].item() == 200.0  # Conv1D stores [in, out]: W[row 17, col 42] lives at [42, 17]
    assert (q - stored).abs().max() < 0.05
