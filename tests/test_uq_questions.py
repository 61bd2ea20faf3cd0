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


def test_every_problem_of_an_upload_is_listed_at_once_and_bad_rows_are_skipped():
    """One long question, a NUL line past the first 5 KB, a row without an answer and an unquoted comma:
    the good rows are kept and every problem is named with its line, in one read."""
    filler = b"".join(b"filler question %d?,answer %d\n" % (i, i) for i in range(200))  # past 5 KB
    data = (
        b"question,answer\n"
        + b"What is two plus two?,4\n"  # line 2
        + b"x" * 600
        + b"?,long\n"  # line 3: over question_chars
        + b"Who wrote Hamlet?,\n"  # line 4: no answer
        + b"Capital of Italy?,Rome, Italy\n"  # line 5: an unquoted comma
        + filler  # lines 6..205
        + b"bad\x00row?,x\n"  # line 206: NUL
        + b"Red planet?,Mars\n"  # line 207
    )
    assert data.index(b"\x00") > 5_000
    limits = qm.RowLimits(question_chars=500, references_per_question=8, reference_chars=200, where="limits.toml")
    qset = qm.load_questions(data, "mixed.csv", limits=limits)
    assert len(qset) == 1 + 1 + 200 + 1  # lines 2, 4, the filler and 207
    text = "\n".join(qset.messages)
    assert "more cells than the header" in text and "line 5." in text
    assert "NUL bytes" in text and "line 206" in text
    assert "question_chars in limits.toml" in text and "line 3 (601 characters)" in text
    assert "1 of 203 question(s) have no reference answer" in text and "line 4." in text
    assert qset.with_references == 202
    # without limits (the command line) the long question is kept, as before
    assert len(qm.load_questions(data, "mixed.csv")) == 204


def test_a_nul_line_near_the_top_is_skipped_with_its_line_and_a_binary_file_is_still_refused():
    qset = qm.load_questions(b"question,answer\nq1?,a\n\x00\x00junk,b\nq3?,c\n", "nul.csv")
    assert list(qset.frame["question"]) == ["q1?", "q3?"]
    assert any("NUL bytes" in m and "line 3." in m for m in qset.messages)
    with pytest.raises(LabError, match="binary.*NUL bytes on lines 1, 2, 3"):
        qm.load_questions(b"a\x00b\nc\x00d\ne\x00f\nq?\n", "bin.csv")


def test_a_file_whose_every_row_is_over_a_limit_is_refused_naming_them_all():
    limits = qm.RowLimits(question_chars=5, references_per_question=1, reference_chars=50)
    with pytest.raises(LabError) as refusal:
        qm.load_questions(b"question,answer\nlong question one?,a\nlong question two?,b|c\n", "x.csv", limits=limits)
    assert "line 2 (18 characters), line 3 (18 characters)" in str(refusal.value)
