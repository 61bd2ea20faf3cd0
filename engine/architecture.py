"""Where the parts of a transformer live in each model family (one adapter table, one place).

Families name their modules differently: Llama, Mistral, Gemma, Qwen, OLMo and Phi-3 keep decoder
layers at `model.layers`; Gemma 3 vision-language models at `model.language_model.layers`; GPT-2 at
`transformer.h`. Every page that walks layers goes through `decoder_layers()`.
"""

from __future__ import annotations

from typing import Any

from engine.errors import LabError

# Attribute paths from the top-level model to its list of decoder layers, tried in order.
LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Gemma 1-3 text, Qwen, OLMo, Phi-3
    "model.language_model.layers",  # Gemma 3 vision-language (transformers >= 4.52)
    "language_model.model.layers",  # older Gemma 3 vision-language layout
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J
    "gpt_neox.layers",  # Pythia
    "layers",  # a bare decoder stack
)


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: Any):
    """The model's decoder layers (a torch ModuleList); LabError for an unknown architecture."""
    for path in LAYER_PATHS:
        layers = get_path(model, path)
        if layers is not None and hasattr(layers, "__len__") and len(layers) > 0:
            return layers
    arch = type(model).__name__
    raise LabError(f"Unknown architecture {arch}: cannot find its decoder layers (tried {', '.join(LAYER_PATHS)}).")


def text_config(model: Any) -> Any:
    """The language model's config (the text part of a vision-language config)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def layer_types(model: Any) -> list[str]:
    """Per layer, 'sliding_attention' (local) or 'full_attention' (global); all 'full' when unknown."""
    config = text_config(model)
    n = len(decoder_layers(model))
    types = getattr(config, "layer_types", None)
    if types and len(types) == n:
        return list(types)
    return ["full_attention"] * n
