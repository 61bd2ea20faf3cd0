"""The uncertainty page's blind marking view (ui/uq_marking.py): the owner marks a seeded sample one answer at a
time without any judge's verdict or the stratum on screen, a mark is saved and survives a reload, the judges'
agreement appears (with "too few hand marks for a kappa" at a few marks); on a run without an owner (the study's)
or one shared with them, anyone marks in private: their marks are kept over a reload and nobody else sees them.

The run is written without a model (tests/test_uq_handmarks.fake_run: 90 questions whose judges disagree on a
third) and the sentence embedder is a seeded stand-in, so no real model loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_uq_handmarks import HashEmbedder, fake_run

from engine.core.db import lab_db
from engine.uq import handmarks
from engine.uq.config import EvalOptions, MarkSample

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "2_Semantic_uncertainty.py")
ALICE_KEY = "alice-key-marking-0123456789"
BOB_KEY = "bob-key-marking-0123456789ab"
CAROL_KEY = "carol-key-marking-0123456789"
ALICE = hashlib.sha256(ALICE_KEY.encode()).hexdigest()[:16]  # ui.identity.owner_id of the key
BOB = hashlib.sha256(BOB_KEY.encode()).hexdigest()[:16]
VERDICT_WORDS = {"judge", "correct", "auto", "contains", "f1", "embedding", "stratum", "manual", "llm judge"}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("ui.models.get_embedder", lambda *a, **k: HashEmbedder())
    return fake_run(90)


def _open(model_dir, run_id: str, owner_key: str) -> AppTest:
    """A fresh session (a reload) on the run, the blind view switched on and a sample of 20 + 5 drawn."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    at.session_state["_lab_owner_key"] = owner_key
    at.query_params["uq_run"] = run_id
    at.run()
    assert not at.exception, at.exception
    at.toggle(key="uq_blind").set_value(True).run()
    if any(n.key == "uq_mark_n" for n in at.number_input):
        at.number_input(key="uq_mark_n").set_value(20)
        at.number_input(key="uq_mark_extra").set_value(5).run()
    assert not at.exception, at.exception
    return at


def _shown_text(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "text") for e in at.main.get(kind))


def _sample(run) -> list[str]:
    """The question ids of the sample the view draws (20 at random + 5 the judges disagree on, seed 0)."""
    answers, verdicts = handmarks.judge_verdicts(run.load_records(), EvalOptions(), HashEmbedder())
    sample = handmarks.sample_for(answers, verdicts, MarkSample(20, 5, 0))
    assert (sample["stratum"] == "disagreement").sum() == 5
    return list(sample["question_id"])


def _card(at: AppTest, qid: str) -> bool:
    i = int(qid[1:])
    return at.text[0].value == f"Question: Which one is {i}?\nReference answers: alpha {i} omega"


def test_the_owner_marks_blind_and_the_mark_survives_a_reload(run, tiny_gemma3_dir):
    lab_db().claim_run("uq", run.run_id, ALICE, "fake.csv")
    ids = _sample(run)
    first = run.load_records()[int(ids[0][1:])]
    at = _open(tiny_gemma3_dir, run.run_id, ALICE_KEY)
    assert not at.error, [e.value for e in at.error]
    assert "A1 (all)" not in {m.label for m in at.metric}  # the results (and their verdicts) are hidden
    assert not at.data_editor
    assert _card(at, ids[0]) and at.text[1].value == f"The model's answer: {first.answer}"
    assert len(at.text) == 2 and "0 of 25 answers marked" in _shown_text(at)
    shown = _shown_text(at).lower()
    assert "random" not in shown and "disagreement" not in shown  # nothing says why an answer was drawn
    at.text_input(key=f"uq_mark_note_{ids[0]}").set_value("plainly right")
    at.button(key="uq_mark_right").click().run()
    assert not at.exception, at.exception
    saved = handmarks.load_hand_marks(run)
    assert saved.to_dict("records") == [
        {"question_id": ids[0], "answer": first.answer, "mark": True, "note": "plainly right"}
    ]
    assert _card(at, ids[1])  # the next answer of the sample
    at.button(key="uq_mark_wrong").click().run()
    at.button(key="uq_mark_skip").click().run()
    assert "2 of 25 answers marked** (1 skipped)" in _shown_text(at)

    again = _open(tiny_gemma3_dir, run.run_id, ALICE_KEY)  # a reload: a new session
    assert "2 of 25 answers marked" in _shown_text(again)
    assert _card(again, ids[2])  # skipping lasts a session only
    tables = [d.value for d in again.dataframe]
    for table in tables:
        assert not VERDICT_WORDS & {c.lower() for c in table.columns}, table.columns
    (marks_table,) = [t for t in tables if "mark" in t.columns]
    assert list(marks_table["question id"]) == ids[:2] and list(marks_table["mark"]) == ["right", "wrong"]
    assert again.get("download_button")

    again.toggle(key="uq_mark_agreement").set_value(True).run()
    assert not again.exception, again.exception
    (agreement,) = [d.value for d in again.dataframe if "Cohen's kappa" in d.value.columns]
    assert list(agreement["judge"]) == ["auto", "contains", "f1", "embedding"]
    assert {"accuracy", "Cohen's kappa"} <= set(agreement.columns) and (agreement["answers marked"] == 2).all()
    assert any("Too few hand marks for a kappa" in i.value for i in again.info)


def test_anyone_marks_a_run_without_owner_in_private_and_keeps_their_marks(run, tiny_gemma3_dir):
    ids = _sample(run)
    bob = _open(tiny_gemma3_dir, run.run_id, BOB_KEY)  # made outside the server (the study's runs): no owner
    assert not bob.error, [e.value for e in bob.error]
    assert _card(bob, ids[0]) and "0 of 25 answers marked" in _shown_text(bob)
    bob.text_input(key=f"uq_mark_note_{ids[0]}").set_value("bob's own reading")
    bob.button(key="uq_mark_wrong").click().run()
    assert not bob.exception, bob.exception
    assert handmarks.load_hand_marks(run).empty  # not the run's (owner's) marks file
    mine = handmarks.load_hand_marks(run, BOB)
    assert mine.to_dict("records") == [
        {"question_id": ids[0], "answer": mine["answer"][0], "mark": False, "note": "bob's own reading"}
    ]
    assert handmarks.hand_marks_path(run, BOB) == run.path / "hand_marks" / f"{BOB}.csv"

    again = _open(tiny_gemma3_dir, run.run_id, BOB_KEY)  # a reload keeps them
    assert "1 of 25 answers marked" in _shown_text(again) and _card(again, ids[1])
    (marks_table,) = [d.value for d in again.dataframe if "mark" in d.value.columns]
    assert list(marks_table["question id"]) == [ids[0]] and list(marks_table["mark"]) == ["wrong"]
    again.toggle(key="uq_mark_agreement").set_value(True).run()
    assert any((d.value["answers marked"] == 1).all() for d in again.dataframe if "Cohen's kappa" in d.value.columns)

    carol = _open(tiny_gemma3_dir, run.run_id, CAROL_KEY)  # someone else sees none of Bob's marks
    assert "0 of 25 answers marked" in _shown_text(carol) and _card(carol, ids[0])
    assert "bob's own reading" not in _shown_text(carol) and "You marked it" not in _shown_text(carol)
    assert not any("mark" in d.value.columns for d in carol.dataframe) and not carol.get("download_button")
    assert not any(t.key == "uq_mark_agreement" for t in carol.toggle)


def test_on_a_shared_run_the_owner_and_a_reader_keep_their_marks_apart(run, tiny_gemma3_dir):
    lab_db().claim_run("uq", run.run_id, ALICE, "fake.csv")
    lab_db().set_shared("uq", run.run_id, ALICE, True)
    handmarks.save_hand_marks(run, ALICE, {"q000": ("alpha 0 omega", True, "alice's note")})
    assert handmarks.hand_marks_path(run, ALICE) == handmarks.hand_marks_path(run)  # the owner's: hand_marks.csv
    bob = _open(tiny_gemma3_dir, run.run_id, BOB_KEY)
    assert not bob.error, [e.value for e in bob.error]
    assert "alice's note" not in _shown_text(bob) and "0 of 25 answers marked" in _shown_text(bob)
    assert not any("mark" in d.value.columns for d in bob.dataframe)
    bob.button(key="uq_mark_right").click().run()
    assert len(handmarks.load_hand_marks(run, BOB)) == 1
    assert handmarks.load_hand_marks(run, ALICE)["note"].tolist() == ["alice's note"]  # the owner's, unchanged
