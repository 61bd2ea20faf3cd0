"""AppTest of the uncertainty page: upload a CSV, generate (tiny model), see A1/A2/A3; bad uploads show a message."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from engine.core.jobs import RUNNER
from engine.uq import store
from engine.uq.config import EvalOptions
from engine.uq.evaluation import evaluate_run
from engine.uq.generation import job_key

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "2_Semantic_uncertainty.py")
CSV = (
    b"id,question,answer\nq1,the cat,cat\nq2,the dog,dog\nq3,<script>alert(1)</script> a bird?,bird\n"
    b"q4,the sky,sky | blue\n"
)


def _app(model_dir, tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    at.run()
    assert not at.exception
    at.radio(key="uq_source").set_value("Upload a file").run()
    return at


def test_upload_run_and_table(tiny_gemma3_dir, embedder, tmp_path, monkeypatch):
    at = _app(tiny_gemma3_dir, tmp_path, monkeypatch)
    at.file_uploader(key="uq_upload").upload("q.csv", CSV, "text/csv").run()
    assert not at.exception and not at.error
    assert "4 questions." in [c.value for c in at.caption]  # every one with a reference answer
    at.number_input(key="uq_k").set_value(2)
    at.number_input(key="uq_max_new").set_value(4)
    at.text_area(key="uq_prompt").set_value("Q: {question}\nA:")
    at.button(key="uq_start").click().run()
    assert not at.exception
    run_id = at.session_state["uq_run_id"]
    job = RUNNER.get(job_key(run_id))
    job.wait(180)
    assert job.error is None
    at.run()
    assert not at.exception, at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Questions"] == "4" and "A1 (all)" in labels and "A3 (semantic, 50%)" in labels
    assert at.dataframe and at.data_editor  # the score table and the editable results table render
    assert len(at.main.get("vega_lite_chart")) == 2  # A1/A2/A3 with intervals, and the rejection curves
    run = store.get_run(run_id)
    assert len(run.load_records()) == 4
    # the CLI's engine call on the same run gives the page's numbers
    page = at.session_state["_lab_slot_uq_eval"][-1][1].summary  # ui.state's slot "uq_eval"
    cli = evaluate_run(run, embedder, EvalOptions(seed=0)).summary
    assert (page.A1, page.A2, page.A3) == (cli.A1, cli.A2, cli.A3)
    assert page.methods["mean_token_nll"]["auroc_ci"] == cli.methods["mean_token_nll"]["auroc_ci"]
    # the answer leads the table, A1/A2/A3 under each judge, every decomposition's formula in an expander
    lead = [m.value for m in at.markdown if m.value.startswith("**Answer (auto judge):**")]
    assert lead and page.verdict.sentence in lead[0] and page.length.sentence in lead[0]
    judges = [d.value for d in at.dataframe if "A3 − A2" in d.value.columns]
    assert judges and list(judges[0]["judge"]) == ["auto (chosen)", "contains", "f1", "embedding"]
    formulas = " ".join(c.value for c in at.code)
    assert "S_w" in formulas and "lexical_map" in formulas and "ridge map" in formulas


def test_malformed_uploads_show_messages(tiny_gemma3_dir, tmp_path, monkeypatch):
    at = _app(tiny_gemma3_dir, tmp_path, monkeypatch)
    for content, message in (
        (b"foo,bar\nx,y\n", "No 'question' column"),
        (b"", "empty"),
        (b"\x00\x01\x02binary" * 50, "binary"),
    ):
        at.file_uploader(key="uq_upload").upload("bad.csv", content, "text/csv").run()
        assert not at.exception
        assert any(message in e.value for e in at.error), (
            message,
            [e.value for e in at.error],
            [i.value for i in at.info],
        )


def test_an_upload_with_problems_lists_them_all_and_keeps_the_good_rows(tiny_gemma3_dir, tmp_path, monkeypatch):
    limits = tmp_path / "limits.toml"
    limits.write_text("question_chars = 40\n")
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    at = _app(tiny_gemma3_dir, tmp_path, monkeypatch)
    data = (
        b"question,answer\nthe cat,cat\n" + b"a very long question " * 5 + b"?,x\n"  # line 3: over question_chars
        b"the dog,\n"  # line 4: no answer
        b"the bird,bird, a bird\n"  # line 5: an unquoted comma
        b"\x00\x00,y\n"  # line 6: NUL bytes
        b"the sky,sky\n"
    )
    at.file_uploader(key="uq_upload").upload("q.csv", data, "text/csv").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warnings = "\n".join(w.value for w in at.warning)
    for part in ("question_chars in limits.toml", "line 3 (", "line 5.", "NUL bytes", "line 6.", "no reference answer"):
        assert part in warnings, (part, warnings)
    assert "3 questions, 2 with reference answers." in [c.value for c in at.caption]
    assert not at.button(key="uq_start").disabled  # the good rows can run
