"""Which models the lab knows and where a name loads from, offline by default.

Everything loads offline by default (`local_files_only=True`): a model that is neither a local
folder nor in the Hugging Face cache gives a one-line `LabError`, never a network hang.
`trust_remote_code` is never set.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.core.embedded import EMBEDDED_MODELS, cache_problem, embedded_cache_path, prepare_embedded
from engine.core.errors import LabError

# Models the lab knows by name. Only the embedded ones ship with the lab (the default first); the others
# load when they are in the local Hugging Face cache (or LAB_ALLOW_DOWNLOAD=1 on a machine with internet).
KNOWN_MODELS: dict[str, str] = {
    **{name: model.description for name, model in EMBEDDED_MODELS.items()},
    "google/gemma-3-270m-it": "Gemma 3 270M instruction-tuned",
    "google/gemma-3-1b-it": "Gemma 3 1B instruction-tuned",
    "google/gemma-3-4b-it": "Gemma 3 4B vision-language, instruction-tuned",
    "meta-llama/Llama-2-7b-hf": "Llama 2 7B (super weight published)",
    "huggyllama/llama-7b": "Llama 7B (super weight published)",
    "mistralai/Mistral-7B-v0.1": "Mistral 7B (super weight published)",
    "allenai/OLMo-7B-0724-hf": "OLMo 7B 0724 (super weight published)",
    "microsoft/Phi-3-mini-4k-instruct": "Phi-3 mini",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen 2.5 0.5B instruct",
    "openai-community/gpt2": "GPT-2 small",
}


def allow_download() -> bool:
    return os.environ.get("LAB_ALLOW_DOWNLOAD") == "1"


def _not_available(name: str) -> LabError:
    return LabError(
        f"Model '{name}' is not a local folder and is not in the Hugging Face cache, and the lab runs "
        f"offline: fetch it on a machine with internet (`hf download {name}`) and copy the cache or "
        "folder here, or pass a local folder path."
    )


def resolve_source(name: str) -> str:
    """Path or hub id to load `name` from; raises LabError when it is not available offline."""
    name = (name or "").strip()
    if not name:
        raise LabError("No model name given.")
    if name in EMBEDDED_MODELS:
        return str(prepare_embedded(name=name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LabError(f"Folder '{name}' has no config.json: it is not a Hugging Face model folder.")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LabError(f"Model folder '{name}' does not exist.")
    if allow_download():
        return name
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(name, "config.json")
    except Exception as err:  # invalid repo id and the like
        raise LabError(f"'{name}' is neither a known model, a folder, nor a valid Hugging Face id ({err}).") from err
    if not isinstance(hit, str):
        raise _not_available(name)
    return name


def read_config(source: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=not allow_download())
    except (OSError, ValueError, KeyError) as err:
        raise LabError(f"Cannot read the config of '{source}': {str(err).splitlines()[0]}") from err


def is_vision_language(config) -> bool:
    """A Gemma 3 vision-language config (Gemma3ForConditionalGeneration) or any image-text model."""
    archs = getattr(config, "architectures", None) or []
    return getattr(config, "model_type", "") == "gemma3" or any("ConditionalGeneration" in a for a in archs)


def list_models() -> list[dict[str, str]]:
    """Known models with their local state (embedded cache state, or whether the HF cache has them)."""
    from huggingface_hub import try_to_load_from_cache

    rows = []
    for name, description in KNOWN_MODELS.items():
        if name in EMBEDDED_MODELS:
            problem = cache_problem(embedded_cache_path(name))
            state = "cached" if problem is None else f"embedded ({problem})"
        else:
            state = "in HF cache" if isinstance(try_to_load_from_cache(name, "config.json"), str) else "not local"
        rows.append({"name": name, "state": state, "description": description})
    return rows
