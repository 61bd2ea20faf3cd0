"""`load_model`: any causal LM (or a Gemma 3 vision-language model) as a `LoadedModel`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.core.device import (
    cuda_available,
    default_device,
    dtype_for,
    quantization_unavailable_reason,
)
from engine.core.embedded import EMBEDDED_LM
from engine.core.errors import LabError
from engine.core.memory import ensure_fits, model_load_bytes
from engine.core.model import QUANTIZATIONS, LoadedModel, Quantization
from engine.core.registry import allow_download, is_vision_language, read_config, resolve_source


def _local_folder(source: str) -> Path | None:
    """The folder a source loads from: itself, or its Hugging Face cache snapshot (None when unknown)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(source, "config.json")
    return Path(hit).parent if isinstance(hit, str) else None


def _check_fits_in_memory(name: str, source: str, device: str, quantization: str) -> None:
    """Refuse up front a load whose weights, in the dtype they get on `device`, exceed the free memory."""
    folder = _local_folder(source)
    if folder is None:
        return
    ensure_fits(model_load_bytes(folder, device, quantization), device, f"loading '{name}' on {device}")


def load_model(
    name: str = EMBEDDED_LM,
    device: str | None = None,
    quantization: Quantization = "none",
    attn_implementation: str = "eager",
) -> LoadedModel:
    """Load a causal LM (or a Gemma 3 vision-language model) ready for the lab.

    CUDA in bfloat16 when present, else CPU in float32; `quantization` "8bit"/"4bit" uses
    bitsandbytes on CUDA only. Attention is "eager" by default so pages can read attention weights.
    Raises LabError with one line for every failure a user can cause.
    """
    import torch

    if quantization not in QUANTIZATIONS:
        raise LabError(f"Unknown quantization '{quantization}': choose one of {', '.join(QUANTIZATIONS)}.")
    device = device or default_device()
    if device.startswith("cuda") and not cuda_available():
        raise LabError("CUDA was requested but no GPU is visible to torch.")
    if quantization != "none":
        reason = quantization_unavailable_reason(device)
        if reason:
            raise LabError(reason)
    start = time.perf_counter()
    source = resolve_source(name)
    config = read_config(source)
    vlm = is_vision_language(config)
    kwargs: dict[str, Any] = {
        "dtype": dtype_for(device),
        "attn_implementation": attn_implementation,
        "local_files_only": not allow_download(),
    }
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device}
    _check_fits_in_memory(name, source, device, quantization)
    processor = None
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if vlm:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
            processor = AutoProcessor.from_pretrained(source, local_files_only=kwargs["local_files_only"])
            tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(
                source, local_files_only=kwargs["local_files_only"]
            )
        else:
            # The tokenizer (33 MB of JSON for Gemma 3) parses in a thread while the weights load.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(
                    AutoTokenizer.from_pretrained, source, local_files_only=kwargs["local_files_only"]
                )
                model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
                tokenizer = pending.result()
        if quantization == "none":
            model.to(device)  # inside the handler: a CUDA out-of-memory here is caught too
    except (torch.OutOfMemoryError, MemoryError) as err:
        model = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        raise LabError(
            f"Out of memory while loading '{name}' on {device}: pick a smaller model"
            + (" or 4-bit loading." if device.startswith("cuda") else " or a GPU box.")
        ) from err
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabError(f"Cannot load '{name}': {first}") from err
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        device=device,
        dtype=str(kwargs["dtype"]).replace("torch.", ""),
        quantization=quantization,
        is_vlm=vlm,
        source=source,
        load_seconds=time.perf_counter() - start,
    )
