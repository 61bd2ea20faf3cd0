"""Memory estimates made before anything is allocated: a model's weights on the target device, and
whether a job's working set fits in what is free.

On Linux a real out-of-memory is a kernel kill that no handler catches (and it would end every
session of the shared server), so prevention is the protection: a load or job that would not fit
is refused with the numbers. Weights are counted once per weight file of one format (safetensors
when present, else the PyTorch .bin files), parameters read from the safetensors headers, and
converted to the dtype they will have on the device (float32 on a CPU: an fp16/bf16 checkpoint
doubles; bfloat16 on CUDA; 1 or 0.5 byte with 8-/4-bit loading).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from engine.core.device import available_memory_bytes
from engine.core.errors import LabError

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
HEADROOM = 1.15  # buffers, the tokenizer and allocator slack on top of the weights


def weight_files(folder: Path) -> list[Path]:
    """The weight files of one format in a model folder: *.safetensors when any, else *.bin."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(p for p in folder.glob("*.bin") if p.name != "training_args.bin")


def safetensors_parameters(path: Path) -> int:
    """Number of parameters in a safetensors file, from its JSON header (no tensor is read)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    count = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in meta["shape"]:
            n *= int(dim)
        count += n
    return count


def parameter_count(folder: Path, stored_bytes_per_param: float = 2.0) -> int:
    """Parameters of the model in `folder` (safetensors headers; .bin files: size / stored bytes)."""
    files = weight_files(folder)
    if not files:
        return 0
    if files[0].suffix == ".safetensors":
        return sum(safetensors_parameters(p) for p in files)
    return int(sum(p.stat().st_size for p in files) / stored_bytes_per_param)


def bytes_per_parameter(device: str, quantization: str) -> float:
    if quantization == "4bit":
        return 0.55  # packed 4-bit weights plus per-block scales (norms and embeddings stay 16-bit: small)
    if quantization == "8bit":
        return 1.05
    return 2.0 if device.startswith("cuda") else 4.0


def free_bytes(device: str) -> int | None:
    """Free memory where tensors of `device` live (MemAvailable for the CPU; free GPU memory for CUDA)."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return int(torch.cuda.mem_get_info(index)[0])
    return available_memory_bytes()


def ensure_fits(need_bytes: float, device: str, what: str) -> None:
    """LabError with the numbers when `need_bytes` would not fit in the free memory of `device`."""
    free = free_bytes(device)
    if free is not None and need_bytes > free:
        where = "GPU memory" if device.startswith("cuda") else "RAM"
        raise LabError(
            f"Not enough memory: {what} needs about {need_bytes / 2**30:.2f} GiB of {where} but only "
            f"{free / 2**30:.2f} GiB is free now. Try a smaller input, fewer samples, or a smaller model."
        )


def model_load_bytes(folder: Path, device: str, quantization: str) -> int:
    """Estimated bytes of a model's weights once loaded on `device` (with HEADROOM)."""
    return int(parameter_count(folder) * bytes_per_parameter(device, quantization) * HEADROOM)
