"""Question-set loading: formats, encodings and every kind of bad input give a result or a LabError."""

import random

import pytest

from engine.core.errors import LabError
from engine.uq import questions as qm


def test_csv_with_references_and_ids():
    data = b"id,question,answer\na1,What is 2+2?,4 | four\na2,Capital of France?,Paris\n"
    qs = qm.load_questions(data, "x.csv")
    assert list(qs.frame["id"]) == ["a1", "a2"]
    assert qs.frame["references"][0] == ["4", "four"]
    assert qs.messages == []


def test_jsonl_nq_open_style_and_triviaqa_columns():
    data = (
        b'{"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"]}\n'
        b'{"question": "q2", "answer": ["x"]}\n'
    )
    qs = qm.load_questions(data, "nq.jsonl")
    assert qs.frame["references"][0] == ["Shakespeare", "William Shakespeare"]
    assert list(qs.frame["id"]) == ["q00000", "q00001"]
    trivia = b"Question,Answer\nWhich planet is red?,Mars\n"
    assert qm.load_questions(trivia, "t.csv").frame["question"][0] == "Which planet is red?"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "latin-1"])
def test_encodings(encoding):
    text = "question,answer\nQuelle est la capitale de la Réunion ?,Saint-Denis\n"
    qs = qm.load_questions(text.encode(encoding), "fr.csv")
    assert qs.frame["question"][0] == "Quelle est la capitale de la Réunion ?"
    assert qs.frame["references"][0] == ["Saint-Denis"]


def test_semicolon_and_tab_delimiters():
    for sep in (";", "\t"):
        qs = qm.load_questions(f"question{sep}answer\nWho?{sep}Me\nWhat?{sep}That\n".encode(), "x.csv")
        assert list(qs.frame["question"]) == ["Who?", "What?"]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"question,answer\n", "header but no rows"),
        (b"prompt_text,gold\nhi,there\n", "No 'question' column"),
        (b"question,answer\n ,x\n\t,y\n", "blank"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00" * 20, "binary"),
    ],
)
def test_bad_files_give_one_clear_message(data, match):
    with pytest.raises(LabError, match=match):
        qm.load_questions(data, "bad.csv")


def test_wrong_delimiter_hints_at_it():
    with pytest.raises(LabError, match="delimiter"):
        qm.load_questions(b"question|answer\nwho|me\n", "x.csv")


def test_blank_and_duplicate_rows_and_ids_are_reported():
    data = b"id,question,answer\n1,A?,a\n1,B?,b\n2,A?,a\n3,,c\n"
    qs = qm.load_questions(data, "x.csv")
    assert list(qs.frame["question"]) == ["A?", "B?"]
    assert list(qs.frame["id"]) == ["1#1", "1#2"]
    text = " ".join(qs.messages)
    assert "blank" in text and "duplicate" in text and "shared an id" in text


def test_size_and_row_limits():
    with pytest.raises(LabError, match="limit"):
        qm.read_table(b"question\n" + b"x?\n" * 100, max_bytes=50)
    raw = qm.read_table(b"question\n" + b"".join(b"q%d?\n" % i for i in range(1000)))
    qs = qm.prepare_questions(raw, max_rows=100)
    assert len(qs) == 100 and "first 100" in qs.messages[0]


def test_html_kept_as_text_and_hash_changes_with_content():
    qs = qm.load_questions(b'question,answer\n"<script>alert(1)</script> who?",<b>x</b>\n', "x.csv")
    assert qs.frame["question"][0] == "<script>alert(1)</script> who?"
    other = qm.load_questions(b'question,answer\n"<script>alert(1)</script> who?",y\n', "x.csv")
    assert qm.questions_hash(qs.frame) != qm.questions_hash(other.frame)


def test_default_set_is_large_with_references():
    qs = qm.default_questions()
    assert len(qs) >= 200
    assert qs.frame["references"].map(len).min() >= 1
    assert qs.frame["id"].is_unique


def test_ids_are_unique_by_construction():
    """Repeated ids get the smallest free #n suffix; ids that occur once never change (a, a, a#1 -> a#2, a#3, a#1)."""
    assert qm.unique_ids(["a", "a", "a#1"]) == (["a#2", "a#3", "a#1"], [0, 1])
    assert qm.unique_ids(["a", "a", "a#1", "a#1"])[0] == ["a#1", "a#2", "a#1#1", "a#1#2"]
    rng = random.Random(3)
    for _ in range(200):
        ids = [rng.choice(["a", "a#1", "a#2", "b", "b#1#1", "b#1", ""]) for _ in range(rng.randint(1, 12))]
        out, changed = qm.unique_ids(ids)
        assert len(set(out)) == len(out)
        assert all(out[i] == ids[i] for i in range(len(ids)) if i not in changed)
        assert all(ids.count(ids[i]) > 1 for i in changed)


def test_marks_of_duplicate_ids_are_not_shared():
    """Two rows with the same id become two questions with their own ids (marks are keyed by id)."""
    qs = qm.load_questions(b"id,question,answer\nx,A?,a\nx,B?,b\n", "x.csv")
    assert list(qs.frame["id"]) == ["x#1", "x#2"]
