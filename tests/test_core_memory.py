"""Memory estimates before a load: one count per weight file, the dtype on the target device."""

from __future__ import annotations

import pytest
import torch

from engine.core import memory
from engine.core.errors import LabError
from engine.core.loading import load_model


def test_parameter_count_from_headers_counts_each_weight_once(tiny_llama_dir, tmp_path):
    from safetensors.torch import save_file

    model_params = sum(p.numel() for p in load_model(str(tiny_llama_dir)).model.state_dict().values())
    assert memory.parameter_count(tiny_llama_dir) == model_params
    folder = tmp_path / "both"
    folder.mkdir()
    save_file({"a": torch.zeros(10, 20, dtype=torch.bfloat16)}, str(folder / "model.safetensors"))
    torch.save({"a": torch.zeros(10, 20, dtype=torch.bfloat16)}, folder / "pytorch_model.bin")
    assert memory.weight_files(folder) == [folder / "model.safetensors"]  # .bin beside it is not counted
    assert memory.parameter_count(folder) == 200


def test_dtype_on_the_device_sets_the_bytes(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1000, 1000, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    cpu = memory.model_load_bytes(tmp_path, "cpu", "none")
    cuda = memory.model_load_bytes(tmp_path, "cuda", "none")
    four = memory.model_load_bytes(tmp_path, "cuda", "4bit")
    assert cpu == int(1e6 * 4 * memory.HEADROOM)  # a bf16 checkpoint is upcast to float32 on a CPU
    assert cuda * 2 == cpu and four < cuda / 3


def test_a_load_that_cannot_fit_is_refused_with_numbers(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(LabError, match=r"Not enough memory: loading .* needs about .* GiB of RAM but only"):
        load_model(str(tiny_llama_dir))
