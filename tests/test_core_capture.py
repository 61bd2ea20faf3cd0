"""`capture`: activations read with forward hooks that are always removed, on tiny random models."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.core.architecture import decoder_layers, down_projections, out_in_weight
from engine.core.capture import capture, hooked, site_modules
from engine.core.errors import LabError
from engine.core.lm_eval import encode, run_body

PROMPT = "The capital of France is Paris. The cat sat on the mat."


def _no_hooks(modules) -> bool:
    return all(not m._forward_hooks for m in modules)


def test_down_proj_output_is_its_weight_times_its_input(tiny_llama):
    """Planted truth: a down projection is y = W x (no bias), so the captured pair must satisfy it."""
    ids = encode(tiny_llama, PROMPT)
    with capture(tiny_llama, "down_proj", inputs=True) as acts:
        run_body(tiny_llama, ids)
    modules = down_projections(tiny_llama.model)
    assert sorted(acts) == list(range(len(modules))) == sorted(acts.inputs)
    for i, module in enumerate(modules):
        x, y = acts.inputs[i], acts[i]
        assert x.shape[:2] == y.shape[:2] == ids.shape and y.shape[-1] == tiny_llama.model.config.hidden_size
        assert torch.allclose(y, x @ out_in_weight(module).T, atol=1e-5)
        assert not y.requires_grad
    assert acts.stacked().shape == (len(modules), *acts[0].shape)
    assert _no_hooks(modules)


def test_layer_outputs_are_the_models_hidden_states(tiny_gemma3):
    """The residual stream after layer i is hidden_states[i + 1] (the last one is before the final norm)."""
    ids = encode(tiny_gemma3, PROMPT)
    layers = decoder_layers(tiny_gemma3.model)
    with torch.no_grad():  # transformers puts hooks of its own on the layers the first time: let it
        tiny_gemma3.model(input_ids=ids, output_hidden_states=True)
    before = [dict(m._forward_hooks) for m in layers]
    with torch.no_grad(), capture(tiny_gemma3, "layer") as acts:
        hidden = tiny_gemma3.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(acts) == len(layers) and not acts.inputs
    for i in range(len(layers) - 1):
        assert torch.equal(acts[i], hidden[i + 1])
    assert [dict(m._forward_hooks) for m in layers] == before


def test_conv1d_down_projection_of_gpt2(tiny_gpt2_dir):
    from engine.core.loading import load_model

    lm = load_model(str(tiny_gpt2_dir))
    with capture(lm, "down_proj", inputs=True) as acts:
        run_body(lm, encode(lm, PROMPT))
    module = down_projections(lm.model)[0]
    assert torch.allclose(acts[0], acts.inputs[0] @ out_in_weight(module).T + module.bias, atol=1e-5)


def test_hooks_are_removed_when_the_forward_pass_fails(tiny_llama):
    modules = site_modules(tiny_llama, "down_proj")
    with pytest.raises(RuntimeError, match="boom"), capture(tiny_llama, "down_proj") as acts:
        assert all(m._forward_hooks for m in modules)
        run_body(tiny_llama, encode(tiny_llama, PROMPT))
        raise RuntimeError("boom")
    assert len(acts) == len(modules) and _no_hooks(modules)


def test_the_models_lock_is_held_for_the_block(tiny_llama):
    taken_elsewhere = []

    def try_lock() -> None:
        got = tiny_llama.lock.acquire(blocking=False)
        taken_elsewhere.append(got)
        if got:
            tiny_llama.lock.release()

    with capture(tiny_llama, "layer"):
        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
    after = threading.Thread(target=try_lock)
    after.start()
    after.join()
    assert taken_elsewhere == [False, True]


def test_on_call_sees_every_forward_pass_and_keeps_nothing(tiny_llama):
    calls: list[tuple[int, tuple[int, ...]]] = []
    prompts = ["one two", "one two three four five"]
    with capture(tiny_llama, "down_proj", on_call=lambda i, x, y: calls.append((i, tuple(y.shape)))) as acts:
        for prompt in prompts:
            run_body(tiny_llama, encode(tiny_llama, prompt))
    n_layers = len(down_projections(tiny_llama.model))
    assert len(calls) == n_layers * len(prompts) and not acts
    lengths = [encode(tiny_llama, p).shape[1] for p in prompts]
    assert [shape[1] for _i, shape in calls] == [t for t in lengths for _ in range(n_layers)]


def test_a_bare_module_and_a_module_list(tiny_llama):
    mlp = decoder_layers(tiny_llama.model)[0].mlp
    x = torch.randn(2, 3, tiny_llama.model.config.hidden_size)
    with torch.no_grad(), capture(mlp, [mlp.down_proj, mlp.up_proj]) as acts:
        out = mlp(x)
    assert torch.equal(acts[0], out) and acts[1].shape == (2, 3, tiny_llama.model.config.intermediate_size)


def test_hooked_can_change_an_output_and_undoes_it(tiny_llama):
    ids = encode(tiny_llama, PROMPT)
    before = run_body(tiny_llama, ids)
    modules = down_projections(tiny_llama.model)
    with hooked(tiny_llama, modules[:1], lambda i: lambda module, args, output: torch.zeros_like(output)):
        zeroed = run_body(tiny_llama, ids)
    assert not torch.allclose(zeroed, before)
    assert torch.equal(run_body(tiny_llama, ids), before) and _no_hooks(modules)


def test_an_unknown_site_is_a_lab_error(tiny_llama):
    with pytest.raises(LabError, match="Unknown capture site"), capture(tiny_llama, "attention"):
        pass
