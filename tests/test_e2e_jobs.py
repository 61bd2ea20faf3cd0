"""Jobs and results in a real browser (`streamlit run app.py` + Debian's Chromium): the page shows the
result of what was asked. On the uncertainty page a second upload's run stays on screen when it finishes
(the browser once took the picker back to the run it showed before), and a reload while a run generates
finds it again.
"""

from __future__ import annotations

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
)

reason = browser_missing_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

QUESTIONS_METRIC = """n => Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
    .some(m => m.innerText.startsWith('Questions') && m.innerText.trim().endsWith('\\n' + n))"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from engine.core.embedded import prepare_embedded

    runs_dir = tmp_path_factory.mktemp("lab_cache")
    (runs_dir / "models").symlink_to(prepare_embedded().parent)
    with streamlit_server({"LAB_CACHE_DIR": str(runs_dir)}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.set_default_timeout(240_000)
        yield url, page
        browser.close()


def _generate(page, csv_path) -> None:
    """Upload `csv_path`, K = 2, 4 new tokens, and press Generate."""
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(csv_path))
    wait_idle(page)
    for name, value in (("Samples K", "2"), ("Max new tokens", "4")):
        field = page.get_by_role("spinbutton", name=name)
        field.fill(value)
        field.press("Enter")
        wait_idle(page)
    page.get_by_role("button", name="Generate (or resume)").click()


def _run_in_url(page) -> str:
    return parse_qs(urlparse(page.url).query).get("uq_run", [""])[0]


def test_a_new_uploads_run_stays_on_screen_when_it_finishes(lab, tmp_path):
    url, page = lab
    first, second = tmp_path / "two.csv", tmp_path / "three.csv"
    first.write_text("question,answer\nWhat is the capital of France?,Paris\nHow many legs has a spider?,eight\n")
    second.write_text(
        "question,answer\nWho wrote Hamlet?,Shakespeare\nWhat colour is the sky?,blue\nHow many days in a week?,7\n"
    )
    open_page(page, f"{url}/Semantic_uncertainty")
    page.get_by_text("Upload a file").click()
    wait_idle(page)
    _generate(page, first)
    page.wait_for_function(QUESTIONS_METRIC, arg="2", timeout=300_000)
    wait_idle(page)
    run_a = _run_in_url(page)
    assert run_a
    _generate(page, second)
    page.wait_for_function(QUESTIONS_METRIC, arg="3", timeout=300_000)
    page.wait_for_timeout(4000)  # the finished job's last redraw has come and gone
    wait_idle(page)
    assert_no_exception(page)
    run_b = _run_in_url(page)
    assert run_b and run_b != run_a
    assert page.evaluate(QUESTIONS_METRIC, "3"), "the page went back to the previous run's results"
