"""The LLM-shaped grokking model and its instruments: HF checkpoints through the pretrained-LLM scan, a planted
super weight found and causally confirmed on train and test, key Fourier frequencies, suppression by clipping."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from engine.core.architecture import down_projections, down_weight
from engine.core.errors import LabError
from engine.core.loading import load_model
from engine.grokking import fourier, llm, suppression
from engine.grokking import llm_measures as lmm
from engine.superweights import detect

P = 7
SHAPE = dict(n_layers=4, d_model=32, n_heads=4, d_mlp=64)
PLANT = (1, 5, 11)  # (layer, row = output channel, col = input channel) of the planted super weight
FLAG = 0  # residual channel that only BOS carries (its embedding), read by the planted MLP unit
SINK_OUT = 9  # residual channel the layer-2 "sink" head writes to when BOS is not muted


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest (and deterministically) on one thread on the shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> llm.LlmData:
    return llm.llm_data(task="add", p=P, train_frac=0.5, seed=0)


def _plant(model: llm.GrokLlama, spike: float = 3.0, weight: float = 50.0, sink: float = 10.0) -> None:
    """A super weight as in a pretrained LLM, written into the model (and re-written after every training step).

    - BOS alone carries residual channel FLAG (its embedding is e_FLAG; no token embedding and no output
      projection of layers 0-1 writes FLAG), so the layer-1 MLP unit COL, whose gate and up rows read FLAG
      with `spike`, makes a large input activation x[BOS, COL] to the down projection;
    - W_down[ROW, COL] = `weight` (the rest of column COL zero) turns it into a massive output y[BOS, ROW]:
      the super activation, which the residual stream then carries through layers 2-3;
    - what depends on it, as attention sinks do in LLMs: in layer 2, head 0 attends uniformly (zero query
      and key) and its value reads channel FLAG into channel SINK_OUT. With the super activation, BOS's
      normalised state is all channel ROW, so FLAG is muted and the head adds ~nothing; without it, BOS's
      FLAG content reaches every later position as a large constant, which swamps the answer.
    """
    layer, row, col = PLANT
    bos = llm.vocabulary(P)[llm.BOS_TOKEN]
    head = SHAPE["d_model"] // SHAPE["n_heads"]
    body = model.lm.model
    with torch.no_grad():
        emb = body.embed_tokens.weight
        emb[:, FLAG] = 0.0
        emb[bos] = 0.0
        emb[bos, FLAG] = 1.0
        for block in body.layers[: layer + 1]:
            block.self_attn.o_proj.weight[FLAG] = 0.0
            block.mlp.down_proj.weight[FLAG] = 0.0
        mlp = body.layers[layer].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[col] = 0.0
            proj.weight[col, FLAG] = spike
        mlp.down_proj.weight[:, col] = 0.0
        mlp.down_proj.weight[row, col] = weight
        attn = body.layers[layer + 1].self_attn
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:head] = 0.0
        attn.v_proj.weight[0, FLAG] = sink
        attn.o_proj.weight[:, :head] = 0.0
        attn.o_proj.weight[SINK_OUT, 0] = sink


def _fit(model: llm.GrokLlama, ids: torch.Tensor, y: torch.Tensor, steps: int, after_step=None) -> list[float]:
    """A plain full-batch AdamW loop on (ids [N, 5], y [N]); the loss before each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.98))
    model.train()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(llm.answer_logits(model.lm, ids, P), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if after_step:
            after_step()
    model.eval()
    return losses


@pytest.fixture(scope="module")
def planted(data) -> llm.GrokLlama:
    """The planted model fitted to all 49 pairs (train and test), so that both splits have accuracy to lose."""
    model = llm.build_llm(P, **SHAPE, seed=0)
    _plant(model)
    ids, y = torch.cat([data.ids_train, data.ids_test]), torch.cat([data.y_train, data.y_test])
    _fit(model, ids, y, steps=200, after_step=lambda: _plant(model))
    return model


# ---------------------------------------------------------------------------------------------
# Tokenizer, data, training


def test_tokenizer_sequences_and_split_match_the_grokking_dataset(data):
    tok = llm.build_tokenizer(P)
    vocab = llm.vocabulary(P)
    assert tok.convert_ids_to_tokens(tok("3 + 5 =").input_ids) == ["<bos>", "3", "+", "5", "="]
    assert [vocab[str(i)] for i in range(P)] == list(range(P))  # the answer c is its own token id
    # the same split as the lab's grokking dataset, as [BOS, a, op, b, =] sequences
    try:
        from engine.grokking.tasks import make_dataset
    except ImportError:
        from engine.grokking.training import make_dataset
    ref = make_dataset(types.SimpleNamespace(task="add", p=P, train_frac=0.5, seed=0))
    assert torch.equal(data.x_train, ref.x_train) and torch.equal(data.y_test, ref.y_test)
    assert torch.equal(data.y_train, (data.x_train[:, 0] + data.x_train[:, 1]) % P)
    texts = data.prompts(len(data.y_train))
    assert torch.equal(tok(texts, return_tensors="pt").input_ids, data.ids_train)
    with pytest.raises(LabError, match="at least 1 layer"):
        llm.build_llm(P, n_layers=0)
    with pytest.raises(LabError, match="Unknown task"):
        llm.llm_data(task="pow", p=P)


def test_a_few_hundred_adamw_steps_reduce_train_loss(data):
    model = llm.build_llm(P, **SHAPE, seed=1)
    losses = _fit(model, data.ids_train, data.y_train, steps=150)
    assert losses[0] == pytest.approx(math.log(P), abs=0.1)  # from scratch: uniform answers
    assert losses[-1] < 0.1 * losses[0]
    # the model's own forward (pairs in, answer logits out) is the training forward
    assert torch.equal(model(data.x_train[:5]), llm.answer_logits(model.lm, data.ids_train[:5], P))
    loss, acc = llm.evaluate_ids(model.lm, data.ids_train, data.y_train, P)
    assert acc > 0.9 and loss < 0.5


# ---------------------------------------------------------------------------------------------
# Checkpoints through the pretrained-LLM scan; the planted super weight


def test_checkpoint_opens_as_a_local_model_and_the_scan_finds_the_planted_weight(planted, data, tmp_path):
    folder = llm.save_checkpoint(planted, tmp_path / "step_0000200")
    lm = load_model(str(folder), device="cpu")  # the first tab's loader: an ordinary HF folder
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.config.grok_p == P
    vocab = llm.vocabulary(P)
    assert lm.tokenizer("3 + 5 =").input_ids == [vocab[t] for t in ("<bos>", "3", "+", "5", "=")]
    with torch.no_grad():
        assert torch.allclose(llm.answer_logits(lm.model, data.ids_test, P), planted(data.x_test), atol=1e-5)
    det = detect.detect(lm, data.prompts(4))  # the pretrained-LLM detection, unchanged
    assert [c.coord for c in det.candidates] == [PLANT]
    c = det.candidates[0]
    assert c.token_text == "<bos>" and c.rank == 1 and c.share > 0.95
    assert c.persists_in_layers[:3] == [1, 2, 3]  # the super activation stays in the residual stream
    assert "no layer" in det.stop_reason
    back = llm.load_checkpoint(folder)
    assert (back.p, back.task) == (P, "add") and torch.equal(back(data.x_train), planted(data.x_train))
    # an unplanted model from scratch passes through the same scan (whatever it finds)
    fresh = load_model(str(llm.save_checkpoint(llm.build_llm(P, **SHAPE), tmp_path / "fresh")), device="cpu")
    assert len(detect.scan(fresh, data.prompts(2)).layers) == SHAPE["n_layers"]
    with pytest.raises(LabError):
        llm.load_checkpoint(tmp_path / "nothing")


def test_causal_measure_fires_on_train_and_test_for_the_planted_weight_only(planted, data):
    before = {k: v.clone() for k, v in planted.state_dict().items()}
    candidates, det = lmm.candidate_weights(planted, data.prompts(4))
    assert candidates[0].coord == PLANT and candidates[0].source.startswith("scan")
    assert {c.layer for c in candidates} == {0, 1, 2, 3}  # plus the top-|w| weight of every down projection
    frame = lmm.causal_effects(planted, data, candidates)
    assert list(frame.columns) == lmm.CAUSAL_COLUMNS
    hit = frame[(frame.layer == 1) & (frame.row == 5) & (frame.col == 11)].set_index("split")
    for split in ("train", "test"):
        row = hit.loc[split]
        assert row.acc_base > 0.9 and row.acc_drop > 0.5  # zeroing it breaks the model on both splits
        assert row.ppl_ratio > 5 and row.loss_ratio > 10
        assert row.ppl_ratio_random < 1.1 and abs(row.acc_drop_random) < 0.05  # k random weights do not
        assert row.fires
    assert not frame.loc[frame.source == "top|w|", "fires"].any()
    after = planted.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every edit restored bit for bit
    outcome = lmm.zeroing_outcome(planted, data, [PLANT])
    assert outcome["verdict"] == "broken" and outcome["test_acc_after"] < 0.5


def test_super_activation_attention_sink_and_checkpoint_summary(planted, data):
    acts = lmm.super_activations(planted, data)
    layer, row, col = PLANT
    spike = acts.set_index("layer").loc[layer]
    assert (spike.bos_channel, spike.bos_input_channel) == (row, col)
    assert spike.max_abs_bos > 10 * max(spike.max_abs_a, spike.max_abs_b, spike.max_abs_eq)  # at BOS
    assert spike.bos_over_median > 100 and spike.persists_in_layers == "1,2,3"
    assert acts.loc[acts.layer != layer, "max_abs_bos"].max() < 0.1 * spike.max_abs_bos
    sink = lmm.attention_sink(planted, data)
    assert len(sink) == SHAPE["n_layers"] and sink["sink_share"].between(0, 1).all()
    assert sink.loc[2, "max_head_share"] >= 1 / 5 - 1e-6  # the uniform head puts >= 1/5 on BOS
    measures = lmm.measure_llm_checkpoint(200, planted, data)
    summary = measures.summary()
    assert summary["scan_candidates"] == "1:5:11" and summary["fires_train"] and summary["fires_test"]
    assert summary["super_activation_layer"] == 1 and summary["persisting_layers"] == 3
    assert 1 <= summary["n_key_frequencies"] <= P // 2


# ---------------------------------------------------------------------------------------------
# Fourier


def test_key_fourier_frequencies_of_a_hand_made_embedding():
    p, d = 31, 24
    a = np.arange(p)
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(d, 4)))[0].T  # 4 orthonormal directions [4, d]
    w = 2 * np.pi / p
    emb = (
        5 * np.cos(w * 4 * a)[:, None] * u[0]
        + 5 * np.sin(w * 4 * a)[:, None] * u[1]
        + 3 * np.cos(w * 9 * a)[:, None] * u[2]
        + 0.7 * np.ones(p)[:, None] * u[3]  # a constant part (mean embedding): not a frequency
        + 0.02 * rng.normal(size=(p, d))
    )
    result = fourier.key_frequencies(torch.tensor(emb, dtype=torch.float32))
    assert result.key == [4, 9] and result.n_frequencies == 15
    # norms in the orthonormal Fourier basis: 5 * sqrt(p / 2) for a unit cos and sin pair, 3 * sqrt(p / 2) for cos
    assert result.key_norms[0] == pytest.approx(5 * math.sqrt(p / 2) * math.sqrt(2), rel=0.01)
    assert result.key_norms[1] == pytest.approx(3 * math.sqrt(p / 2), rel=0.01)
    assert result.constant_norm == pytest.approx(0.7 * math.sqrt(p), rel=0.05)
    centred = emb - emb.mean(axis=0)
    assert (result.norms**2).sum() == pytest.approx((centred**2).sum(), rel=1e-9)  # Parseval
    assert fourier.key_frequencies(emb, share=0.5).key == [4]
    noise = fourier.key_frequencies(rng.normal(size=(p, d)))
    assert noise.n_key >= 9  # a random embedding spreads its norm over most frequencies
    even = fourier.key_frequencies(np.cos(np.pi * np.arange(8))[:, None] * np.ones((1, 3)))  # Nyquist of p = 8
    assert even.key == [4] and even.norms[-1] == pytest.approx(math.sqrt(8 * 3))
    model = llm.build_llm(P, **SHAPE)
    assert fourier.number_embedding(model).shape == (P, SHAPE["d_model"])
    with pytest.raises(LabError):
        fourier.key_frequencies(emb, share=0)


# ---------------------------------------------------------------------------------------------
# Suppression


def test_suppression_bounds_max_over_median_and_refuses_clipping_over_one_percent(data):
    model = llm.build_llm(P, n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=2)
    with torch.no_grad():
        for i, coord in enumerate([(3, 7), (40, 100), (1, 1)]):
            down_weight(model.lm, i)[coord] = 5.0 + i  # outliers: 250x the typical |w| of 0.02
    before = {i: down_weight(model.lm, i).clone() for i in range(4)}
    plans = suppression.clip_plan(model)
    n = suppression.clip_down_projections(model)
    assert n == sum(plan.n_clipped for plan in plans) and n > 0
    for plan, module in zip(plans, down_projections(model.lm)):
        w = module.weight.abs()
        bound = 1.0 * torch.quantile(before[plan.layer].abs().flatten(), 0.999).item()
        assert w.max().item() <= bound * (1 + 1e-6)
        assert w.median().item() == pytest.approx(plan.median_abs)  # the median does not move
        assert w.max().item() / w.median().item() <= bound / plan.median_abs * (1 + 1e-6)
        assert plan.fraction <= 0.01
    # refused settings: nothing is changed
    snapshot = {i: down_weight(model.lm, i).clone() for i in range(4)}
    with pytest.raises(LabError, match="limit"):
        suppression.clip_down_projections(model, quantile=0.999, factor=0.5)  # would clip about half
    with pytest.raises(LabError, match="over the 1% limit"):
        suppression.validate_suppression(0.9, 1.0)
    with pytest.raises(LabError, match="remove every weight"):
        suppression.Suppression(factor=0.0).validate()
    assert all(torch.equal(down_weight(model.lm, i), snapshot[i]) for i in range(4))
    # during training: every 10 steps, each clip keeps max|w| / median|w| under c x q-quantile / median
    setting = suppression.Suppression()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    clipped = 0
    for step in range(1, 31):
        loss = torch.nn.functional.cross_entropy(llm.answer_logits(model.lm, data.ids_train, P), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if setting.due(step):
            ratios = [plan.threshold / plan.median_abs for plan in suppression.clip_plan(model)]
            clipped += setting.apply(model)
            for ratio, module in zip(ratios, down_projections(model.lm)):
                w = module.weight.abs()
                assert w.max().item() / w.median().item() <= ratio * (1 + 1e-6)
    assert clipped > 0 and [s for s in range(1, 31) if setting.due(s)] == [10, 20, 30]
