"""Device, precision and free memory: CUDA in bfloat16 when present, else CPU in float32."""

from __future__ import annotations

from pathlib import Path


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


def dtype_for(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
