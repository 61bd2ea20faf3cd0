"""The lab in a real browser (`streamlit run app.py` + Debian's Chromium): views live in the URL, so a
reload restores them and a copied link opens the same view for a colleague (another browser context, so
another owner cookie); a click on a chart selects what was clicked; an out-of-range value is refused under
its field while the result on screen stays; a failed model load leaves the sidebar naming the model in use.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    assert_no_exception,
    browser_missing_reason,
    open_page,
    streamlit_server,
    wait_idle,
    wait_text,
)

reason = browser_missing_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

VIEWPORT = {"width": 1400, "height": 1000}


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from engine.core.embedded import prepare_embedded

    runs_dir = tmp_path_factory.mktemp("lab_cache")
    (runs_dir / "models").symlink_to(prepare_embedded().parent)
    with streamlit_server({"LAB_CACHE_DIR": str(runs_dir)}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def person():
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(240_000)
            return page

        yield url, person
        browser.close()


def test_superweights_scan_survives_a_reload_travels_and_keeps_its_result_over_a_bad_value(lab):
    url, person = lab
    alice = person()
    open_page(alice, f"{url}/Super_weights_and_grokking")
    alice.get_by_role("button", name="Scan").click()
    wait_text(alice, "2. Detected super-weight candidates")
    wait_idle(alice)
    assert query(alice).get("sw_scanned") == ["1"]
    # A click on layer 3's point in the scan figure selects layer 3 (the picker follows, the URL too).
    chart = alice.locator('[data-testid="stVegaLiteChart"]').first
    chart.scroll_into_view_if_needed()
    box = chart.locator("canvas, svg").first.bounding_box()
    assert box is not None
    picked = None
    for frac in (0.2, 0.25, 0.3):  # the x position of an early layer's point; y: try along the column
        for y in (0.3, 0.5, 0.7, 0.85):
            alice.mouse.click(box["x"] + box["width"] * frac, box["y"] + box["height"] * y)
            wait_idle(alice)
            picked = query(alice).get("sw_layer")
            if picked:
                break
        if picked:
            break
    # (a click between points selects nothing; the picker is the fallback a person has too)
    layer_text = alice.get_by_text(re.compile(r"^Layer \d+: max \|output\|")).first.inner_text()
    if picked:
        assert layer_text.startswith(f"Layer {picked[0]}:"), (picked, layer_text)
    # Reload: the scan is back without pressing Scan, the same layer selected.
    alice.reload()
    alice.locator('[data-testid="stSidebar"]').wait_for(timeout=60_000)
    wait_text(alice, "2. Detected super-weight candidates", 120_000)
    wait_idle(alice)
    assert_no_exception(alice)
    assert alice.get_by_text(re.compile(r"^Layer \d+: max \|output\|")).first.inner_text() == layer_text
    link = alice.url
    # The same link in another browser (a colleague: another owner cookie) shows the same view.
    bob = person()
    open_page(bob, link)
    wait_text(bob, "2. Detected super-weight candidates", 120_000)
    wait_idle(bob)
    assert bob.get_by_text(re.compile(r"^Layer \d+: max \|output\|")).first.inner_text() == layer_text
    # An out-of-range value: the reason under the field, Scan disabled, the scan still on screen.
    iters = alice.get_by_role("spinbutton", name="Max iterations")
    iters.fill("0")
    iters.press("Enter")
    wait_idle(alice)
    assert_no_exception(alice)
    text = main_text(alice)
    assert "Max iterations" in text and "Showing the last scan" in text
    assert "2. Detected super-weight candidates" in text
    assert alice.get_by_role("button", name="Scan").is_disabled()


def test_a_failed_model_load_leaves_the_sidebar_naming_the_loaded_model(lab):
    url, person = lab
    page = person()
    open_page(page, url)
    state = page.get_by_text("not loaded yet").or_(page.get_by_text("Loaded: gemma-3-270m"))
    state.first.wait_for(timeout=60_000)
    if "not loaded yet" in state.first.inner_text():  # (an earlier test may have loaded it)
        page.get_by_role("button", name="Load now").click()
    page.get_by_text("Loaded: gemma-3-270m").wait_for(timeout=120_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Other (HF id or local folder)...").click()
    wait_idle(page)
    box = sidebar.get_by_label("HF id or local folder")
    box.fill("no-such-org/nothing-here")
    box.press("Enter")
    wait_idle(page)
    sidebar.get_by_role("button", name="Load now").click()
    wait_idle(page)
    assert_no_exception(page)
    text = sidebar.inner_text()
    assert "Keeping gemma-3-270m" in text and "no-such-org/nothing-here" in text
    assert "Loaded: gemma-3-270m" in text
    shown = sidebar.locator('[data-testid="stSelectbox"]').first.locator("input").input_value()
    assert shown == "gemma-3-270m"


def _selected_caption(page) -> str:
    return page.get_by_text(re.compile(r"^Selected: ")).first.inner_text().split("(")[0].strip()


def test_attention_click_a_head_reload_and_share(lab):
    url, person = lab
    alice = person()
    prompt = "The cat sat on the mat. The cat sat on the mat."
    open_page(alice, f"{url}/Attention_self_interpretation?att_prompt={prompt.replace(' ', '+')}")
    wait_text(alice, "Model view", 180_000)
    wait_idle(alice)
    assert_no_exception(alice)
    assert "tokens ·" in main_text(alice)  # the prompt from the link was run
    before = _selected_caption(alice)
    # Click a cell of the model view (the second chart): that head becomes the selected one.
    model_view = alice.locator('[data-testid="stVegaLiteChart"]').nth(1)
    model_view.scroll_into_view_if_needed()
    box = model_view.locator("canvas, svg").first.bounding_box()
    assert box is not None
    for fx, fy in ((0.7, 0.6), (0.5, 0.7), (0.35, 0.55), (0.6, 0.5)):  # cells; a gap between them selects nothing
        alice.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        wait_idle(alice)
        picked = query(alice)
        if "att_layer" in picked or "att_head" in picked:
            break
    assert_no_exception(alice)
    assert "att_layer" in picked or "att_head" in picked, alice.url  # the click selected another head
    after = _selected_caption(alice)
    assert after != before, (before, after)
    # Reload: the same prompt and head.
    alice.reload()
    alice.locator('[data-testid="stSidebar"]').wait_for(timeout=60_000)
    wait_text(alice, "Model view", 180_000)
    wait_idle(alice)
    assert _selected_caption(alice) == after
    # A colleague opening the link sees the same view.
    bob = person()
    open_page(bob, alice.url)
    wait_text(bob, "Model view", 180_000)
    wait_idle(bob)
    assert _selected_caption(bob) == after
    assert "tokens ·" in main_text(bob)
