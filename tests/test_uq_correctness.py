"""Automatic judges (SQuAD normalisation, containment, F1), marks, agreement, spreadsheet-safe export."""

import math

import pandas as pd

from engine.uq import correctness as c
from engine.uq.export import spreadsheet_safe


def test_normalisation_and_f1_known_values():
    assert c.normalize_answer("The  Eiffel-Tower!") == "eiffel tower"
    assert c.token_f1("William Shakespeare", "Shakespeare") == 2 * (0.5 * 1) / 1.5
    assert c.token_f1("Paris", "paris.") == 1.0
    assert c.token_f1("Rome", "Paris") == 0.0


def test_contains_uses_word_boundaries():
    assert c.contains_reference("It is Paris, France", ["Paris"])
    assert not c.contains_reference("Parisian", ["Paris"])
    assert not c.contains_reference("", ["Paris"])
    assert c.contains_reference("1945.", ["1945"])


def test_grade_automatic_auto_is_contains_or_f1():
    frame = c.grade_automatic(["Leonardo", "Rome", "x"], [["Leonardo da Vinci"], ["Paris"], []], f1_threshold=0.5)
    assert frame["f1"][0] == 2 * (1 * (1 / 3)) / (1 + 1 / 3)  # 0.5: not above the threshold 0.5, so wrong
    assert list(frame["auto"][:2]) == [False, False]
    assert frame["auto"][2] is None and math.isnan(frame["f1"][2])
    frame = c.grade_automatic(["Leonardo da Vinci's", "Vinci painter"], [["Leonardo da Vinci"], ["Vinci"]])
    assert list(frame["auto"]) == [True, True]  # contained / F1 2/3 > 0.5


def test_the_stricter_judge_rejects_one_shared_word():
    cases = [  # (answer, references): one word shared with a two-word reference, F1 = 0.5
        ("Julius Caesar", ["Augustus", "Caesar Augustus"]),
        ("Steve Wozniak", ["Steve Jobs"]),
        ("the Pacific Ocean", ["Atlantic", "Atlantic Ocean"]),
    ]
    frame = c.grade_automatic([a for a, _ in cases], [r for _, r in cases])
    assert list(frame["f1"]) == [0.5, 0.5, 0.5]
    for column in ("auto", "f1_correct", "contains"):
        assert [bool(v) for v in frame[column]] == [False, False, False], column


def test_embedding_judge(embedder):
    frame = c.grade_automatic(["Paris", "banana"], [["Paris"], ["Mount Everest"]], embedder=embedder)
    assert frame["embedding_sim"][0] > 0.99 and frame["embedding_sim"][1] < 0.5
    assert list(frame["embedding"]) == [True, False]


def test_marks_override_and_agreement():
    verdict = pd.Series([True, False, True], index=["a", "b", "c"])
    final = c.apply_marks(verdict, {"b": True, "zz": False})
    assert list(final) == [True, True, True]
    judges = pd.DataFrame({"x": [True, False, True, None], "y": [True, True, True, False]})
    agree = c.agreement(judges)
    assert agree["n"][0] == 3 and abs(agree["agreement"][0] - 2 / 3) < 1e-12


def test_judge_prompt_is_the_nature_prompt():
    text = c.judge_prompt("Q?", ["A", "B"], "C")
    assert "does the proposed answer mean the same as the expected answer? Respond only with yes or no." in text
    assert "A; B" in text


def test_spreadsheet_safe_only_touches_text():
    frame = pd.DataFrame({"answer": ["=1+1", "+x", "-y", "@z", "ok"], "score": [-1.0, 2.0, -3.0, 0.0, 1.0]})
    out = spreadsheet_safe(frame)
    assert list(out["answer"]) == ["'=1+1", "'+x", "'-y", "'@z", "ok"]
    assert list(out["score"]) == [-1.0, 2.0, -3.0, 0.0, 1.0]
