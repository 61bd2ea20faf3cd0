"""End-to-end in a real browser: `streamlit run app.py` + Debian's Chromium (headless, Playwright).

One user's main flow through every page with the embedded models: home -> attention (type a prompt,
pick a head, read its description) -> super weights (scan) -> grokking (a short run) -> uncertainty
(upload a small CSV, run a few questions, see the table). Asserts on what a person sees and saves a
screenshot per page in tests/artifacts/ (and in docs/screenshots/ with LAB_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil

import pytest
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    assert_no_exception,
    browser_missing_reason,
    open_page,
    streamlit_server,
    wait_idle,
    wait_text,
)

reason = browser_missing_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("LAB_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def _open(page, url: str, path: str) -> None:
    open_page(page, f"{url}/{path}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    runs_dir = tmp_path_factory.mktemp("lab_cache")
    # Runs go to a fresh cache; the converted model is linked in so the server does not convert again.
    from engine.core.embedded import prepare_embedded

    models_dir = prepare_embedded().parent
    (runs_dir / "models").symlink_to(models_dir)
    with streamlit_server({"LAB_CACHE_DIR": str(runs_dir)}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.set_default_timeout(240_000)
        yield url, page
        browser.close()


def test_home(lab):
    url, page = lab
    _open(page, url, "")
    assert "LLM internals lab" in page.locator("h1").first.inner_text()
    assert page.get_by_text("not loaded yet").is_visible()  # opening the app loads no model
    for link in ("Open super weights & grokking", "Open semantic uncertainty", "Open attention"):
        wait_text(page, link, 30_000)
    _shot(page, "home")


def test_attention_prompt_head_description(lab):
    url, page = lab
    _open(page, url, "Attention_self_interpretation")
    box = page.locator('textarea[aria-label="Prompt"]')
    box.fill("The quick brown fox jumps over the lazy dog. The quick brown fox")
    box.press("Control+Enter")
    wait_text(page, "15 tokens")  # the forward pass of the new prompt is done (BOS + 14 tokens)
    assert_no_exception(page)
    page.get_by_role("tab", name="Text description").click()
    wait_text(page, "fox@")  # repeated tokens told apart by position in the description
    assert_no_exception(page)
    shown = page.locator('[data-testid="stMain"]').inner_text()
    assert "15 tokens" in shown and "fox@" in shown and "quick@" in shown  # both occurrences, by position
    _shot(page, "attention_description")
    page.get_by_role("tab", name="All heads").click()
    wait_idle(page)
    model_view = page.locator("h3", has_text="Model view").first
    model_view.scroll_into_view_if_needed()
    assert model_view.is_visible()
    page.wait_for_timeout(500)
    _shot(page, "attention")


def test_superweights_scan(lab):
    url, page = lab
    _open(page, url, "Super_weights_and_grokking")
    page.get_by_role("button", name="Scan").click()
    wait_text(page, "2. Detected super-weight candidates")  # the model loads first on a fresh server
    wait_idle(page, timeout_ms=240_000)
    assert_no_exception(page)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "1. Scan, layer by layer" in text
    # Gemma 3 270M: one candidate; three layer-0 weights of row 540 make less than half of their spike
    assert "Minor: 3 weight(s)" in text
    page.locator("h3", has_text="1. Scan, layer by layer").first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    _shot(page, "superweights")
    page.get_by_text("Minor: 3 weight(s)").click()
    wait_idle(page)
    page.get_by_text("Minor: 3 weight(s)").scroll_into_view_if_needed()
    _shot(page, "superweights_rejected")


def test_grokking_short_run(lab):
    url, page = lab
    _open(page, url, "Super_weights_and_grokking")
    page.get_by_role("tab", name="Grokking lab").click()
    wait_idle(page)
    page.get_by_role("button", name="Start / resume / reopen").click()
    # The default configuration groks within about a minute on a laptop CPU; the summary appears
    # when the run has finished.
    page.locator("h3", has_text="Summary").first.wait_for(timeout=300_000)
    assert_no_exception(page)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 1
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "grok" in text.lower()
    page.locator('[data-testid="stVegaLiteChart"]').first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    _shot(page, "grokking")


def test_uncertainty_upload_run_table(lab, tmp_path):
    url, page = lab
    csv = tmp_path / "three.csv"
    csv.write_text(
        "question,answer\nWhat is the capital of France?,Paris\n"
        "How many legs does a spider have?,eight|8\nWho wrote Romeo and Juliet?,Shakespeare|William Shakespeare\n"
    )
    _open(page, url, "Semantic_uncertainty")
    page.get_by_text("Upload a file").click()
    wait_idle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(csv))
    wait_idle(page)
    assert page.get_by_text("3 questions.").is_visible()
    k = page.get_by_role("spinbutton", name="Samples K")
    k.fill("3")
    k.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Generate (or resume)").click()
    # The page polls the background run; the table counts the questions answered so far.
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
                 .some(m => m.innerText.startsWith('Questions') && m.innerText.trim().endsWith('3'))""",
        timeout=300_000,
    )
    wait_text(page, "A3 (semantic, 50%)", 120_000)
    assert_no_exception(page)
    metrics = page.locator('[data-testid="stMetric"]').all_inner_texts()
    a1 = next(m for m in metrics if m.startswith("A1"))
    assert any(ch.isdigit() for ch in a1.split("\n", 1)[-1])  # a number under the A1 label
    page.locator("h2", has_text="The answer").first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    _shot(page, "uncertainty")
