"""Super-weight scan and detection: planted super weights in tiny Llama / GPT-2 models, the real Gemma 3 270M."""

from __future__ import annotations

import dataclasses

import pytest
import tiny_models
import torch

from engine.core import architecture, lm_eval
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.weight_edits import ElementEdit, edited_weights
from engine.superweights import controls, detect
from engine.superweights.config import DEFAULT_PROMPT

PLANT = (1, 17, 42)  # (layer, row = output channel, col = input channel)
PROMPTS = ["The cat sat on the mat.", "Apple Inc. is a worldwide tech company."]


def _lm(model, name: str, quantization: str = "none") -> LoadedModel:
    tokenizer = tiny_models.build_tokenizer()
    return LoadedModel(
        name=name,
        model=model.eval(),
        tokenizer=tokenizer,
        processor=None,
        device="cpu",
        dtype="float32",
        quantization=quantization,
        is_vlm=False,
        source="test",
        load_seconds=0.0,
    )


def planted_llama(layers: int = 4) -> LoadedModel:
    """A tiny Llama whose layer-1 down projection has one huge weight W[17, 42] fed by an input spike."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    layer, row, col = PLANT
    with torch.no_grad():
        mlp = model.model.layers[layer].mlp
        mlp.gate_proj.weight[col] *= 2  # input channel 42 of the down projection spikes...
        mlp.up_proj.weight[col] *= 2
        mlp.down_proj.weight[row, col] = 200.0  # ...and one weight turns it into a massive output
    return _lm(model, "tiny-planted-llama")


def planted_gpt2() -> LoadedModel:
    """A tiny GPT-2 with the same plant in its Conv1D c_proj (stored weight is [in, out])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=384, n_embd=64, n_layer=3, n_head=4, n_positions=256, bos_token_id=2, eos_token_id=1)
    )
    layer, row, col = PLANT
    with torch.no_grad():
        mlp = model.transformer.h[layer].mlp
        mlp.c_fc.weight[:, col] *= 10
        mlp.c_fc.bias[col] = 1.0
        mlp.c_proj.weight[col, row] = 200.0  # Conv1D: weight[in, out]
    return _lm(model, "tiny-planted-gpt2")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small forward passes run ~10x faster on one thread when the 2 shared cores are busy (OpenMP
    spin-waiting); restored afterwards so other test modules are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_lm():
    return planted_llama()


def test_planted_super_weight_is_detected_exactly(llama_lm):
    det = detect.detect(llama_lm, PROMPTS)
    assert [c.coord for c in det.candidates] == [PLANT]
    c = det.candidates[0]
    assert c.weight == 200.0 and c.rank == 1
    assert c.share > 0.9  # the one weight makes the spike
    assert "no layer" in det.stop_reason  # after zeroing it, nothing spikes any more
    # the massive activation persists in the residual stream after layer 1
    assert c.persists_in_layers[0] == PLANT[0] and len(c.persists_in_layers) >= 2
    assert abs(c.super_activation) == pytest.approx(det.scans[0].layers[1].max_abs_output)
    # the weight was restored after the iterative procedure
    assert architecture.down_weight(llama_lm.model, 1)[17, 42].item() == 200.0


def test_a_spike_is_read_at_its_largest_contribution_and_the_previous_rule_replays():
    """Layer 2's channel-5 spike comes from W[5, 7] x[7], but the spike token's largest input is channel 42.
    The contribution rule proposes W[5, 7] (it makes the spike); the paper's input rule proposes W[5, 42],
    which makes almost none of it: a minor proposal, not a super weight. The previous rule (reject a weight
    whose spike comes back) is replayed from the input rule's scans and rejects W[5, 42] as it used to."""
    lm = planted_llama()
    mlp = lm.model.model.layers[2].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[42] *= 3
        mlp.up_proj.weight[42] *= 3
        mlp.down_proj.weight[5, 7] = 3000.0
    det = detect.detect(lm, PROMPTS, mode="absolute", absolute=10.0)
    assert {PLANT, (2, 5, 7)} <= {c.coord for c in det.candidates}
    assert all(c.share > 0.9 for c in det.candidates if c.coord in {PLANT, (2, 5, 7)})
    by_input = detect.detect(lm, PROMPTS, mode="absolute", absolute=10.0, column="input")
    minor = [c for c in by_input.rejected if c.coord == (2, 5, 42)]
    assert minor and abs(minor[0].share) < 0.05 and minor[0].role == "minor"
    assert (2, 5, 42) not in {c.coord for c in by_input.candidates}
    assert list(by_input.frame(rejected=True)["row"])[: len(by_input.rejected)] == [c.row for c in by_input.rejected]
    previous = controls.previous_rule(by_input.scans, by_input.threshold)
    assert previous.candidates == [PLANT] and previous.rejected == [(2, 5, 42)]
    assert architecture.down_weight(lm.model, 2)[5, 42].item() != 0.0  # restored
    assert architecture.down_weight(lm.model, 2)[5, 7].item() == 3000.0


def test_zeroing_changes_output_and_restoring_gives_identical_logits(llama_lm):
    ids = lm_eval.encode(llama_lm, DEFAULT_PROMPT)
    with torch.no_grad():
        before = llama_lm.model(ids).logits.clone()
        with edited_weights(llama_lm, [ElementEdit.zero(llama_lm.model, *PLANT)]):
            zeroed = llama_lm.model(ids).logits.clone()
        after = llama_lm.model(ids).logits
    assert (zeroed - before).abs().max() > 1e-2
    assert torch.equal(before, after)


def test_absolute_threshold_and_scan_table(llama_lm):
    det = detect.detect(llama_lm, PROMPTS, mode="absolute", absolute=50.0)
    assert [c.coord for c in det.candidates] == [PLANT]
    frame = det.scans[0].frame()
    assert list(frame["layer"]) == [0, 1, 2, 3]
    assert frame.loc[1, "output_channel"] == 17 and frame.loc[1, "spike_input_channel"] == 42
    det_high = detect.detect(llama_lm, DEFAULT_PROMPT, mode="absolute", absolute=1e6)
    assert det_high.candidates == []


def test_gpt2_conv1d_orientation():
    lm = planted_gpt2()
    spec = architecture.down_proj_spec(lm.model)
    assert spec.path == "mlp.c_proj" and architecture.is_conv1d(architecture.down_projections(lm.model)[1])
    w = architecture.down_weight(lm.model, 1)
    stored = lm.model.transformer.h[1].mlp.c_proj.weight
    assert w.shape == (64, 256) and w[17, 42].item() == stored[42, 17].item() == 200.0
    det = detect.detect(lm, DEFAULT_PROMPT)
    assert det.candidates[0].coord == PLANT
    assert det.candidates[0].rank == 1
    # the scan's output spike equals y = x @ W_stored + b computed by hand
    captured = {}
    mlp = lm.model.transformer.h[1].mlp
    handle = mlp.c_proj.register_forward_hook(lambda m, i, o: captured.update(x=i[0][0], y=o[0]))
    with torch.no_grad():
        lm_eval.run_body(lm, lm_eval.encode(lm, DEFAULT_PROMPT))
    handle.remove()
    by_hand = captured["x"] @ w.T + mlp.c_proj.bias
    assert by_hand.abs().max().item() == pytest.approx(det.scans[0].layers[1].max_abs_output, rel=1e-5)


def test_unknown_architecture_and_bad_input(llama_lm):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "odd"})()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(LabError, match="Unknown architecture 'odd'"):
        architecture.down_projections(Odd())
    with pytest.raises(LabError, match="No prompt"):
        detect.scan(llama_lm, ["", "   "])
    with pytest.raises(LabError, match="No prompt"):
        detect.detect(llama_lm, "\n\n")
    with pytest.raises(LabError, match="relative factor"):
        detect.detect(llama_lm, "hi", factor=0.5)
    with pytest.raises(LabError, match="outside"):
        detect.neighbourhood(llama_lm, 1, 64, 0)


def test_quantized_model_scan_works_ablation_refused(llama_lm):
    q = dataclasses.replace(llama_lm, quantization="4bit")
    det = detect.detect(q, DEFAULT_PROMPT)
    assert [c.coord for c in det.candidates] == [PLANT]  # found through hooks only
    assert len(det.scans) == 1 and "Quantized" in det.note
    assert det.candidates[0].rank == 0  # value/rank of a packed weight are not reported
    with pytest.raises(LabError, match="bit-for-bit"):
        with edited_weights(q, [ElementEdit.zero(q.model, *PLANT)]):
            pass


def test_weight_views(llama_lm):
    stats = detect.layer_weight_stats(llama_lm)
    down1 = stats[(stats.layer == 1) & (stats.projection == "mlp.down_proj")].iloc[0]
    assert (down1["row"], down1["col"]) == (17, 42) and down1["max_over_median"] > 1000
    assert len(stats) == 4 * 7
    top = detect.top_weights(llama_lm, 1, 3)
    assert (top.loc[0, "row"], top.loc[0, "col"], top.loc[0, "value"]) == (17, 42, 200.0)
    around = detect.neighbourhood(llama_lm, 1, 17, 42, radius=2)
    centre = around[around.offset == 0]
    assert len(centre) == 2 and (centre["value"] == 200.0).all()
    assert len(around) == 10


def test_published_coordinates_ship_with_their_source():
    table = detect.published_table()
    assert "2411.07191" in table["source"]["paper"] and "LLMSuperWeight" in table["source"]["code"]
    assert detect.published_for("huggyllama/llama-7b") == [(2, 3968, 7003)]
    assert detect.published_for("meta-llama/Llama-2-7b-hf") == [(1, 2533, 7890)]
    assert detect.published_for("Mistral-7B-v0.1") == [(1, 2070, 7310)]
    assert (1, 269, 7467) in detect.published_for("/models/OLMo-7B-0724-hf/")
    assert detect.published_for("gemma-3-270m") is None
    cand = type("C", (), {"coord": (2, 3968, 7003), "iteration": 0})()
    frame = detect.compare_with_published([cand], [(2, 3968, 7003), (2, 1, 1)])
    assert list(frame["detected"]) == [True, False] and list(frame["published"]) == [True, True]


def test_embedded_gemma_scan_matches_independent_hooks(embedded_lm):
    prompt = DEFAULT_PROMPT
    result = detect.scan(embedded_lm, [prompt])
    layers = embedded_lm.model.model.layers
    seen = {}
    handles = [
        layer.mlp.down_proj.register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, (i[0][0].detach().clone(), o[0].detach().clone()))
        )
        for n, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            embedded_lm.model(**embedded_lm.tokenizer(prompt, return_tensors="pt"))  # full model, own hooks
    finally:
        for h in handles:
            h.remove()
    assert len(result.layers) == len(layers) == 18
    for n, s in enumerate(result.layers):
        x, y = seen[n]
        assert s.max_abs_input == pytest.approx(x.abs().max().item(), rel=1e-6)
        assert s.max_abs_output == pytest.approx(y.abs().max().item(), rel=1e-6)
        t, r = divmod(int(y.abs().argmax()), y.shape[1])
        assert (s.output_token, s.output_channel) == (t, r)
        assert s.spike_input_channel == int(x[t].abs().argmax())
        assert s.output_value == pytest.approx(y[t, r].item(), rel=1e-6)


def test_embedded_gemma_detection_keeps_only_weights_that_make_their_spike(embedded_lm):
    """The README's finding: one super-weight candidate, layer 0 W[400, 1405], which makes ~99% of its spike
    on <bos> and stays massive through layer 12; the other proposals (layer 0 row 540) make less than half
    of theirs, and nothing cancels a massive activation."""
    det = detect.detect(embedded_lm, DEFAULT_PROMPT)
    assert [c.coord for c in det.candidates] == [(0, 400, 1405)]
    assert det.candidates[0].share > 0.9 and det.candidates[0].persists_in_layers == list(range(13))
    assert det.rejected and all(abs(c.share) < 0.5 and c.row == 540 for c in det.rejected)
    assert det.cancelling == []
