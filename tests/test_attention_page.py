"""AppTest of the attention page (type a prompt, pick a head, see its description; empty and long
prompts), and the page and the CLI ranking the same induction / previous-token heads."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "3_Attention_self_interpretation.py")


def new_app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.run()
    assert not at.exception
    return at


def test_prompt_head_description_empty_and_truncated(embedded_lm):
    at = new_app()
    at.text_area(key="att_prompt").set_value("Alice met Bob. Alice thanked Bob.").run()
    at.selectbox(key="att_layer").set_value(2)
    at.selectbox(key="att_head").set_value(3)
    at.run()
    assert not at.exception and not at.error
    text = at.main.get("code")[0].value
    lines = text.splitlines()
    assert lines[0].startswith("0 \u27e8bos\u27e9 -> ") and "Alice@1" in text and "Bob@3" in text
    assert "layer 2, head 3" in at.markdown[0].value or any("layer 2, head 3" in m.value for m in at.markdown)
    table = next(d.value for d in at.dataframe if "attended #1" in d.value.columns)
    assert list(table["token"])[:2] == ["\u27e8bos\u27e9", "Alice@1"]
    assert "top1" not in table.columns and not table.isna().any().any() and not (table == "").any().any()
    assert len(at.get("vega_lite_chart")) >= 2  # head heatmap + model view
    # Empty prompt: the message, and no stale chart or description from the previous prompt.
    at.text_area(key="att_prompt").set_value("   ").run()
    assert not at.exception
    assert any("Empty prompt" in w.value for w in at.warning)
    assert len(at.main.get("code")) == 0 and len(at.get("vega_lite_chart")) == 0
    # Longer than the limit: truncated with a visible note.
    at.number_input(key="att_tokens").set_value(8)
    at.text_area(key="att_prompt").set_value("one two three four five six seven eight nine ten eleven").run()
    assert not at.exception
    assert any("truncated to its first 8 of" in w.value for w in at.warning)
    assert len(at.main.get("code")[0].value.splitlines()) == 8


def _top(text: str) -> list[str]:
    return re.findall(r"(\d+\.\d+) \(", text)


def test_page_and_cli_rank_the_same_heads_on_repeated_random_tokens(embedded_lm, tmp_path):
    from engine.cli import main

    at = new_app()
    at.checkbox(key="att_hf_builtin").uncheck()
    at.number_input(key="att_hf_random").set_value(2)
    at.run()
    at.button(key="att_hf_run").click().run()
    assert not at.exception
    captions = {c.value.split(":")[0]: c.value for c in at.caption if c.value.startswith("Top ")}
    page_induction = _top(captions["Top induction heads"])
    page_previous = _top(captions["Top previous-token heads"])
    assert len(page_induction) == 3 and len(page_previous) == 3

    assert main(["attention", "--prompt", "  ", "--out", str(tmp_path / "x")]) == 2  # empty: one-line error
    assert main(["heads", "--explain", "nonsense", "--out", str(tmp_path / "x")]) == 2
    assert main(["heads", "--no-builtin", "--random", "2", "--out", str(tmp_path)]) == 0
    long = pd.read_csv(tmp_path / "head_functions.csv")
    for fn, page_top in (("induction", page_induction), ("previous_token", page_previous)):
        rows = long[long["function"] == fn].sort_values("mean", ascending=False, kind="stable").head(3)
        assert [f"{a}.{b}" for a, b in zip(rows["layer"], rows["head"])] == page_top
    top_induction = long[long["function"] == "induction"]["mean"].max()
    assert top_induction > 0.25  # half the rows have an induction target: 0.5 is the ceiling
    wide = pd.read_csv(tmp_path / "head_labels.csv", dtype={"layer.head": str})
    assert wide.set_index("layer.head").loc[page_induction[0], "best_label"] == "induction"


def test_ask_and_score_tabs_with_a_tiny_model(tiny_gemma3_dir):
    """The explain and score tabs run end to end (tiny random Gemma 3 keeps it fast) and show a
    verdict for the selected head; a new prompt hides the old scores."""
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["lab_model_choice"] = (str(tiny_gemma3_dir), "none")
    at.run()
    at.text_area(key="att_prompt").set_value("The cat sat on the mat. The cat").run()
    at.selectbox(key="att_layer").set_value(1)
    at.selectbox(key="att_head").set_value(2)
    at.run()
    at.button(key="att_explain").click().run()
    assert not at.exception
    assert any(s.value.startswith("This head attends to") for s in at.success)
    at.number_input(key="att_score_queries").set_value(2)
    at.run()
    at.button(key="att_score_run").click().run()
    assert not at.exception and not at.error
    scores = next(d.value for d in at.dataframe if "top1 agreement" in d.value.columns)
    assert set(scores["layer.head"]) == {"1.2"} and len(scores) == 5 and (scores["n queries"] == 6).all()
    assert any("**1.2**" in m.value and "→" in m.value for m in at.markdown)
    at.text_area(key="att_prompt").set_value("A different prompt").run()
    assert not at.exception
    assert not any("top1 agreement" in d.value.columns for d in at.dataframe)
