"""The markov context (a grokking task that needs a sink), the generalised LLM-shaped model (any sequence length,
1-3 layers), the sink and massive-activation measures on planted truth, zeroing the tracked candidate, and bad
input refused before training."""

from __future__ import annotations

import pytest
import torch

from engine.core.architecture import down_weight
from engine.core.errors import LabError
from engine.grokking import contexts, llm
from engine.grokking import llm_measures as lmm
from engine.grokking.config import LLM_PRESET, GrokConfig, validate
from engine.grokking.zeroing import Zeroing, tracked_candidate

P, T = 7, 12
MARKOV = GrokConfig(
    **{**LLM_PRESET, "n_layers": 2, "d_model": 16, "d_mlp": 32},
    p=P,
    context="markov",
    seq_len=T,
    steps=20,
    eval_every=10,
    checkpoint_every=10,
    stop_after_grok=-1,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(n_layers: int = 2, context: str = "markov") -> llm.GrokLlama:
    return llm.build_llm(P, n_layers=n_layers, d_model=16, n_heads=2, d_mlp=32, context=context, seq_len=T, seed=1)


@pytest.mark.parametrize("filler_vocab", ["numbers", "symbols"])
def test_markov_sequences_hold_the_example_at_the_answer_position_and_filler_follows_the_source(filler_vocab):
    data = llm.llm_data(MARKOV.replace(filler_vocab=filler_vocab))
    vocab = llm.vocabulary(P, filler=True)
    ids, pos = data.ids_train, data.pos_train
    assert ids.shape[1] == T and data.seq_len == T
    rows = torch.arange(len(data.y_train))
    assert (ids[:, 0] == vocab[llm.BOS_TOKEN]).all()
    assert (ids[rows, pos] == vocab[llm.EQ_TOKEN]).all() and (ids[rows, pos - 2] == vocab["+"]).all()
    assert (ids[rows, pos - 3] == data.x_train[:, 0]).all()
    assert (ids[rows, pos - 1] == data.x_train[:, 1]).all()
    assert (ids[rows, pos + 1] == data.y_train).all()
    # filler positions (all but BOS and a, op, b, =, c): consecutive filler follows the source, +1 or +3 mod K
    filler = torch.ones_like(ids, dtype=torch.bool)
    filler[:, 0] = False
    filler[rows[:, None], pos[:, None] + torch.arange(-3, 2)[None]] = False
    first, k = llm.filler_source(P, filler_vocab)
    assert ((ids[filler] >= first) & (ids[filler] < first + k)).all()
    both = filler[:, :-1] & filler[:, 1:]
    step = (ids[:, 1:][both] - ids[:, :-1][both]) % k
    assert set(step.tolist()) == {1, 3}
    assert k == (P if filler_vocab == "numbers" else contexts.FILLER_SYMBOLS)
    # the prompts of the scan are the sequences' words; the split is by pair: no pair is in both
    assert len(data.prompts(1)[0].split()) == T - 1
    train = set(map(tuple, data.x_train.tolist()))
    assert not train & set(map(tuple, data.x_test.tolist()))


def test_resampled_filler_differs_per_step_and_repeats_on_resume():
    model = _model()
    x = torch.tensor([[1, 2], [3, 4]])
    a, pa = model.sequences_of(x, step=5)
    b, _ = model.sequences_of(x, step=6)
    again, pagain = model.sequences_of(x, step=5)
    assert torch.equal(a, again) and torch.equal(pa, pagain) and not torch.equal(a, b)
    fixed, _ = model.sequences_of(x)
    assert torch.equal(fixed, model.sequences_of(x)[0])  # evaluation: one fixed context per pair


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_one_to_three_layers_build_train_and_measure(n_layers, tmp_path):
    from engine.grokking.analysis import run_experiment

    config = MARKOV.replace(n_layers=n_layers)
    validate(config)
    summary = run_experiment(config, root=tmp_path, threads=1)
    assert summary["state"] == "finished" and summary["last_step"] == 20
    assert "massive_activation" in summary["onsets"] and summary["outcome"] in ("never", "grokked")


def test_sink_measure_reads_zero_on_uniform_attention_and_fires_on_a_planted_sink():
    for t in (5, 12, 28):
        causal = torch.tril(torch.ones(t, t))
        uniform = (causal / causal.sum(-1, keepdim=True)).expand(3, 2, t, t)  # [N, H, T, T]
        assert lmm.sink_scores(uniform)["sink_excess"] == pytest.approx(0.0, abs=1e-6)
    assert lmm.uniform_bos_share(5) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)  # 0.32: 5-token task
    sink = torch.zeros(3, 2, T, T)
    sink[..., 0] = 1.0  # every query on BOS
    scores = lmm.sink_scores(sink)
    assert scores["sink_excess"] == pytest.approx(1 - lmm.uniform_bos_share(T))
    # through the model: zero queries and keys make attention uniform, so the excess reads 0 in every layer
    model = _model()
    with torch.no_grad():
        for layer in model.lm.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    frame = lmm.attention_sink(model, llm.llm_data(MARKOV))
    assert frame["sink_excess"].abs().max() < 1e-5
    # a planted sink: BOS's key aligned with every query in layer 0, head 0
    bos = llm.vocabulary(P, filler=True)[llm.BOS_TOKEN]
    with torch.no_grad():
        emb = model.lm.model.embed_tokens.weight
        emb[:, 0] = 1.0
        emb[:, 1] = 0.0
        emb[bos, 1] = 1.0
        attn = model.lm.model.layers[0].self_attn
        attn.q_proj.weight[0, 0] = 30.0
        attn.k_proj.weight[0, 1] = 30.0
        attn.q_proj.weight[1, 0] = 30.0  # RoPE rotates channel pairs: plant both of the pair
        attn.k_proj.weight[1, 1] = 30.0
    frame = lmm.attention_sink(model, llm.llm_data(MARKOV))
    assert frame.loc[0, "max_head_excess"] > 0.5 and frame.loc[1, "sink_excess"] < 0.05


def test_massive_activation_reads_the_residual_peak_at_bos():
    h = torch.ones(4, T, 8)
    assert lmm.residual_peaks(h)["resid_bos_over_median"] == pytest.approx(1.0)
    h[:, 0, 3] = 500.0
    peaks = lmm.residual_peaks(h)
    assert peaks["resid_bos_over_median"] == pytest.approx(500.0) and peaks["resid_bos_channel"] == 3
    assert peaks["resid_other_over_median"] == pytest.approx(1.0)
    model = _model()
    bos = llm.vocabulary(P, filler=True)[llm.BOS_TOKEN]
    with torch.no_grad():
        model.lm.model.embed_tokens.weight[bos, 5] = 200.0  # a massive BOS embedding stays in the residual stream
    frame = lmm.massive_activations(model, llm.llm_data(MARKOV))
    assert (frame["resid_bos_over_median"] > 100).all() and (frame["resid_bos_channel"] == 5).all()
    assert (frame["resid_other_over_median"] < 20).all()


def _plant_bos_spike(model: llm.GrokLlama, bos: int, layer: int, row: int, col: int) -> None:
    """BOS alone carries residual channel 0; the MLP unit `col` of `layer` reads it (a large input x[BOS, col])
    and W_down[row, col] = 40 writes it to output channel `row`: a super weight by construction."""
    model.lm.model.embed_tokens.weight[:, 0] = 0.0
    model.lm.model.embed_tokens.weight[bos, 0] = 10.0
    mlp = model.lm.model.layers[layer].mlp
    mlp.gate_proj.weight[col, 0] = 5.0
    mlp.up_proj.weight[col, 0] = 5.0
    down_weight(model.lm, layer)[row, col] = 40.0


def test_tracked_zeroing_hits_the_weight_that_writes_the_bos_spike_and_random_stays_in_its_matrix():
    model = _model(n_layers=2)
    bos = llm.vocabulary(P, filler=True)[llm.BOS_TOKEN]
    layer, row, col = 1, 3, 7
    with torch.no_grad():
        _plant_bos_spike(model, bos, layer, row, col)
    c = tracked_candidate(model.lm, bos)
    assert (c.layer, c.row, c.col) == (layer, row, col)
    log = Zeroing("tracked", 10, 0).apply(model.lm, bos, 10)
    assert (log["layer"], log["row"], log["col"], log["value"]) == (layer, row, col, 40.0)
    assert down_weight(model.lm, layer)[row, col] == 0.0
    model2 = _model(n_layers=2)
    with torch.no_grad():
        _plant_bos_spike(model2, bos, layer, row, col)
    log = Zeroing("random", 10, 0).apply(model2.lm, bos, 10)
    assert log["layer"] == layer and (log["row"], log["col"]) != (row, col)
    assert down_weight(model2.lm, layer)[row, col] == 40.0


def test_a_zeroing_run_logs_every_zeroing(tmp_path):
    from engine.grokking.training import train

    result = train(MARKOV.replace(zero_weight="tracked", zero_every=5), root=tmp_path, threads=1)
    log = (result.run.path / "zeroing.csv").read_text().splitlines()
    assert log[0].startswith("step,mode,layer") and [line.split(",")[0] for line in log[1:]] == ["5", "10", "15", "20"]


def test_bad_input_is_refused_before_training():
    with pytest.raises(LabError, match="does not fit"):
        validate(MARKOV.replace(seq_len=6))
    with pytest.raises(LabError, match="does not fit"):
        validate(MARKOV.replace(seq_len=500))
    with pytest.raises(LabError, match="needs the LLM-shaped model"):
        validate(GrokConfig(context="markov"))
    with pytest.raises(LabError, match="needs the LLM-shaped model"):
        validate(GrokConfig(zero_weight="tracked"))
    # a checkpoint whose positions are fewer than the context's sequence
    model = _model()
    model.lm.config.grok_seq_len = T + 4
    with pytest.raises(LabError, match="do not fit"):
        llm.GrokLlama(model.lm, model.tokenizer, P, "add", "markov")


def test_new_fields_leave_old_run_ids_alone():
    old = GrokConfig(task="div", p=97, model="transformer", n_layers=2, grokfast=False)
    assert old.key() == "8646585c9817c2a0"
    assert MARKOV.key() != MARKOV.replace(context="plain").key()
