"""The uncertainty page's contrast section: the study's table and figure for the contrasts a run's summary
holds (the committed exploration stage's, here), the verdict on the primary family, labelled columns, and
the single-fold-seed note on page evaluations."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

SUMMARY = Path(__file__).resolve().parent.parent / "reports" / "uq" / "exploration" / "webquestions" / "summary.json"


def _section(n_seeds: int, empty: bool = False) -> AppTest:
    def app(path: str, n_seeds: int, empty: bool) -> None:
        import json as js

        from ui.uq_results import contrast_section

        summary = js.loads(open(path, encoding="utf-8").read())
        contrast_section([] if empty else summary["contrasts"], summary["n_graded"], n_seeds)

    at = AppTest.from_function(app, args=(str(SUMMARY), n_seeds, empty), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_section_shows_the_verdict_figure_and_a_labelled_table():
    summary = json.loads(SUMMARY.read_text(encoding="utf-8"))
    from engine.uq.contrasts import contrast_verdict

    at = _section(10)
    verdict = contrast_verdict(summary["contrasts"], summary["n_graded"])
    assert any(verdict.sentence in m.value for m in at.markdown)
    assert len(at.main.get("vega_lite_chart")) == 1
    table = at.dataframe[0].value
    assert {"contrast", "Δ (with − without)", "p (Holm)"} <= set(table.columns)
    assert not any("_" in c for c in table.columns if c not in ("contrast",))
    assert len(table) == len(summary["contrasts"])
    assert any("mean over 10 fold seeds" in c.value for c in at.caption)


def test_a_page_evaluation_says_it_has_one_fold_seed_and_no_decomposition_shows_nothing():
    at = _section(1)
    assert any("Single fold seed on this page" in c.value for c in at.caption)
    empty = _section(1, empty=True)
    assert not empty.subheader and not empty.main.get("vega_lite_chart") and not empty.dataframe
