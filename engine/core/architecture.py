"""Architecture adapters: where the parts of a transformer live in each model family (one table, one place).

Families name their modules differently: Llama, Mistral, Gemma, Qwen, OLMo and Phi-3 keep decoder
layers at `model.layers`; Gemma 3 vision-language models at `model.language_model.layers`; GPT-2 at
`transformer.h`. Every page that walks layers goes through `decoder_layers()`; every weight is read as [out, in]
through `out_in_weight()` (the one Conv1D rule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.errors import LabError

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


# ---------------------------------------------------------------------------------------------
# Adapter table: where each family keeps its MLP down projection (inside one decoder layer)


@dataclasses.dataclass(frozen=True)
class DownProjSpec:
    path: str  # attribute path inside a decoder layer


DOWN_PROJ: dict[str, DownProjSpec] = {
    **{
        t: DownProjSpec("mlp.down_proj")
        for t in (
            "llama",
            "mistral",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "qwen2",
            "qwen3",
            "olmo",
            "olmo2",
            "phi3",
            "smollm3",
            "granite",
            "cohere",
        )
    },
    "gpt2": DownProjSpec("mlp.c_proj"),
    "gpt_neox": DownProjSpec("mlp.dense_4h_to_h"),
    "falcon": DownProjSpec("mlp.dense_4h_to_h"),
    "gptj": DownProjSpec("mlp.fc_out"),
    "opt": DownProjSpec("fc2"),
}


def _model_type(model: Any) -> str:
    return getattr(text_config(model), "model_type", "") or ""


def down_proj_spec(model: Any) -> DownProjSpec:
    """The adapter entry for this model's family; LabError when its down projection is unknown."""
    model_type = _model_type(model)
    spec = DOWN_PROJ.get(model_type) or DOWN_PROJ.get(getattr(model.config, "model_type", ""))
    layers = decoder_layers(model)
    if spec is not None and get_path(layers[0], spec.path) is not None:
        return spec
    known = ", ".join(sorted(DOWN_PROJ))
    raise LabError(
        f"Unknown architecture '{model_type or type(model).__name__}': no known MLP down projection "
        f"(supported families: {known})."
    )


def down_projections(model: Any) -> list[Any]:
    """The down-projection module of every decoder layer, in layer order."""
    spec = down_proj_spec(model)
    return [get_path(layer, spec.path) for layer in decoder_layers(model)]


def is_conv1d(module: Any) -> bool:
    """GPT-2's Conv1D stores its weight as [in, out], the transpose of nn.Linear's [out, in]."""
    return type(module).__name__ == "Conv1D"


def out_in_weight(module: Any) -> Any:
    """The module's weight as [out, in] (a view: in-place edits write through to the parameter).
    The one place that knows the Conv1D orientation; `to_stored_layout` is its inverse."""
    weight = module.weight.data
    return weight.t() if is_conv1d(module) else weight


def to_stored_layout(module: Any, out_in: Any) -> Any:
    """A [out, in] tensor in the layout `module.weight` stores ([in, out] for Conv1D)."""
    return out_in.t() if is_conv1d(module) else out_in


def down_weight(model: Any, layer: int) -> Any:
    """W_down of one layer as [row = output channel, col = input channel] (view)."""
    return out_in_weight(down_projections(model)[layer])


def linear_weights(model: Any) -> list[tuple[int, str, Any]]:
    """(layer, name, module) of every nn.Linear / Conv1D inside the decoder layers."""
    import torch

    found = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear) or is_conv1d(module):
                if getattr(module, "weight", None) is not None and module.weight.dim() == 2:
                    found.append((i, name, module))
    return found


def body(model: Any) -> Any:
    """The transformer without its LM head (no 262k-wide logits for a scan)."""
    return model.base_model
