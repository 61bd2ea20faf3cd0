"""Malformed and hostile question uploads: every file of tests/data/uploads/ (and a few huge ones made here)
has its outcome asserted - how many questions, which warnings naming which lines - or its one-line refusal.
Nothing is dropped, shifted or rewritten without a message; every failure is a LabError."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import pytest

from engine.core.errors import LabError
from engine.uq import questions as qm

UPLOADS = Path(__file__).parent / "data" / "uploads"
FRENCH = "Quelle est la capitale de la Réunion ?"


@dataclasses.dataclass(frozen=True)
class Case:
    file: str  # a file of tests/data/uploads/, or "gen:<name>" made by GENERATED
    n: int | None = None  # questions read; None: the file is refused
    refused: str = ""  # part of the refusal
    warns: tuple[str, ...] = ()  # parts of the warnings; () means no warning at all
    questions: tuple[str, ...] = ()  # the first questions, exactly
    refs: tuple[tuple[str, ...], ...] = ()  # the first questions' references, exactly
    ids: tuple[str, ...] = ()  # the first ids, exactly


NO_REFS = "No reference answers"
GENERATED = {
    "huge_field.csv": lambda: b"question,answer\n" + b"x" * 200_000 + b",a\nshort?,b\n",
    "long_question.csv": lambda: b"question,answer\n" + b"why " * 6_000 + b",a\n",
    "wide_14mb.csv": lambda: b",".join(b"c%d" % i for i in range(1_500_000)) + b"\n" + b"x," * 1_499_999 + b"x\n",
    "rows_over_limit.csv": lambda: b"question,answer\n" + b"".join(b"q%d?,a\n" % i for i in range(qm.MAX_ROWS + 10)),
    "over_50mb.csv": lambda: b"question\n" + b"q?\n" * (qm.MAX_UPLOAD_BYTES // 3 + 1),
    "deep_array_100k.json": lambda: b"[" * 100_000 + b"]" * 100_000,
    "deep_object_100k.jsonl": lambda: (
        b'{"question": "q1", "answer": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001 + b'\n{"question": "q2"}\n'
    ),
    "many_bad_lines.jsonl": lambda: b"{broken\n" * 30 + b"".join(b'{"question": "q%d"}\n' % i for i in range(40)),
}

CASES = [
    # encodings
    Case("enc_utf8_bom.csv", 1, questions=(FRENCH,), refs=(("Saint-Denis",),)),
    Case("enc_utf16_le_bom.csv", 1, questions=(FRENCH,)),
    Case("enc_utf16_be_bom.csv", 1, questions=(FRENCH,)),
    Case("enc_utf16_le_no_bom.csv", 1, questions=(FRENCH,)),
    Case("enc_cp1252.csv", 1, warns=("not UTF-8", "Windows-1252"), questions=("What does ‘café’ cost in €?",)),
    Case("enc_latin1.csv", 1, warns=("not UTF-8",), questions=("Où est né Dvorák ?",)),
    Case(
        "enc_utf8_stray_byte.csv", 2, warns=("not valid UTF-8", "line 3"), questions=("Qui a écrit Les Misérables ?",)
    ),
    Case("enc_utf8_bom_jsonl.jsonl", 1, questions=("Où est Paris ?",)),
    # delimiters
    Case("delim_semicolon.csv", 2, questions=("What is 1,5 plus 1?",), refs=(("2,5",),)),
    Case("delim_tab.tsv", 2, questions=("Who wrote Hamlet, the play?",)),
    Case("delim_pipe.csv", refused="delimiter"),
    Case("delim_excel_sep_line.csv", 2, questions=("Who, really, wrote Hamlet?",)),
    # unquoted delimiters, short and long rows, quotes
    Case("comma_unquoted_first_row.csv", 2, warns=("more cells than the header", "line 2"), ids=("2", "3")),
    Case("comma_unquoted_later_row.csv", 3, warns=("more cells", "skipped: line 4."), ids=("1", "2", "4")),
    Case("comma_unquoted_every_row.csv", refused="Most rows cannot be read faithfully"),
    Case("comma_crlf_and_lone_cr.csv", 2, warns=("line 3",), questions=("Capital of France?", "Red planet?")),
    Case("rows_short.csv", 2, warns=("fewer cells", "read as empty: line 2."), refs=((), ("Rome",))),
    Case("rows_trailing_delimiters.csv", 2, refs=(("Paris",), ("Rome",))),
    Case("quote_never_closed.csv", 3, warns=("line 5 (a quote opened here is never closed",)),
    Case("quote_text_after_closing.csv", 2, warns=("line 2 (text after the closing quote",)),
    Case(
        "quote_multiline_cell.csv",
        2,
        warns=("joined", "line 2."),
        questions=("Who are you?", 'Quoted "inner" text, with comma'),
    ),
    # headers and empty files
    Case("header_repeated_column.csv", 1, warns=("repeats the column name(s) question", "question.1")),
    Case("header_blank_column.csv", 2),
    Case("header_case_and_spaces.csv", 1, refs=(("Paris", "paris"),)),
    Case("header_only.csv", refused="header but no rows"),
    Case("no_question_column.csv", refused="No 'question' column: found [prompt_text, gold]"),
    Case("empty.csv", refused="empty"),
    Case("whitespace_only.csv", refused="empty"),
    Case("blank_questions_some.csv", 2, warns=("2 row(s) with a blank question were skipped: lines 3, 4.",)),
    Case("blank_questions_all.csv", refused="blank"),
    # ids and duplicates
    Case(
        "dup_ids_suffix_collision.csv",
        3,
        warns=("shared an id", "lines 2 (a -> a#2), 3 (a -> a#3)"),
        ids=("a#2", "a#3", "a#1"),
    ),
    Case("dup_ids_blank_and_taken.csv", 3, warns=("blank id", "lines 3, 4"), ids=("row1", "row1#1", "row2")),
    Case("dup_rows.csv", 2, warns=("duplicate row", "line 3 (same as 2)"), ids=("1", "3")),
    # formulas, HTML, markdown and scripts stay plain text
    Case(
        "formula_cells.csv",
        5,
        questions=("=1+1", '=HYPERLINK("http://example.com","click")', "-2+3", "@SUM(A1:A2)", "+cmd /C calc"),
    ),
    Case(
        "html_markdown_script.csv",
        3,
        questions=(
            "<script>alert(1)</script> Who?",
            "**bold** [link](javascript:alert(1))",
            "<img src=x onerror=alert(1)>",
        ),
        refs=(("<b>x</b>",),),
    ),
    Case("html_markdown_script.jsonl", 2, warns=("joined", "line 2."), questions=("<script>alert('x')</script>",)),
    # JSON and JSONL shapes
    Case("jsonl_nq_open.jsonl", 2, refs=(("Shakespeare", "William Shakespeare"), ("Mars",))),
    Case(
        "jsonl_broken_array_string_lines.jsonl",
        2,
        warns=("line 2 (not valid JSON", "line 3 (a JSON array", "line 4 (a JSON string"),
        questions=("q one", "q five"),
    ),
    Case("jsonl_all_broken.jsonl", refused="Cannot read this JSON file"),
    Case("jsonl_unicode_line_separator.jsonl", 2, warns=("joined",), questions=("a b?", "d e?")),
    Case("jsonl_numbers_and_booleans.jsonl", 2, ids=("7", "8"), refs=(("true",), ("5",))),
    Case("json_array.json", 2, questions=("q1", "q2")),
    Case("json_array_of_strings.json", refused="item 1 (a JSON string, not a question object)"),
    Case("json_wrapper_questions.json", 2, warns=("'questions' list",), questions=("q1", "q2")),
    Case("json_wrapper_nested.json", 2, warns=("'data.rows' list",)),
    Case("json_wrapper_several_lists.json", refused="several lists of objects (train, test)"),
    Case("json_object_without_questions.json", refused="holds no list of questions"),
    Case("json_columns.json", 2, warns=("read as columns",), refs=(("a",), ("b",))),
    Case("json_columns_uneven.json", refused="different lengths (question: 2, answer: 1)"),
    Case("json_pretty_broken.json", refused="(line 4, column 1)"),
    Case("json_scalar.json", refused="a JSON number"),
    # nested answers: flattened to aliases, or the row refused with its line
    Case("nested_answer_value_object.jsonl", 1, refs=(("5",),)),
    Case("nested_answer_triviaqa.jsonl", 1, refs=(("Paris", "City of Light"),)),
    Case("nested_answer_list_of_objects.json", 1, refs=(("a", "b"),)),
    Case("nested_answer_list_of_lists.jsonl", 1, refs=(("a", "b", "c", "d"),)),
    Case("nested_answer_in_csv_cell.csv", 2, refs=(("a", "b"), ("c",))),
    Case("nested_answer_unknown_object.jsonl", 1, warns=("line 1 (an answer object without value",), ids=("q00001",)),
    Case("nested_answer_too_deep.jsonl", 1, warns=("line 1 (answers nested more than",)),
    Case("nested_question_object.jsonl", 1, warns=("line 1 (the question is an object, not text)",)),
    # not text at all
    Case("binary_garbage.csv", refused="binary"),
    Case("xlsx_renamed.csv", refused=".xlsx"),
    Case("pdf_renamed.csv", refused="PDF"),
    Case("gzip_renamed.jsonl", refused="gzip"),
    Case("control_characters.csv", refused="binary"),
    # huge and deep, made here
    Case("gen:huge_field.csv", 1, warns=("line 2 (a cell longer than 131,072 characters)",), questions=("short?",)),
    Case("gen:long_question.csv", 1, warns=(f"longer than {qm.MAX_QUESTION_CHARS} characters were cut: line 2.",)),
    Case("gen:wide_14mb.csv", refused="1,500,000 columns"),
    Case("gen:rows_over_limit.csv", qm.MAX_ROWS, warns=(f"only the first {qm.MAX_ROWS:,} are kept",)),
    Case("gen:over_50mb.csv", refused="the limit is 52 MB"),
    Case("gen:deep_array_100k.json", refused="nested too deeply"),
    Case("gen:deep_object_100k.jsonl", 1, warns=("line 1 (not valid JSON: lists or objects nested too deeply",)),
    Case("gen:many_bad_lines.jsonl", 40, warns=("30 line(s) were skipped", "line 8 (not valid JSON", "and 22 more")),
]


def _upload(file: str) -> tuple[bytes, str]:
    if file.startswith("gen:"):
        name = file[4:]
        return GENERATED[name](), name
    return (UPLOADS / file).read_bytes(), file


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file)
def test_upload_outcome(case):
    data, name = _upload(case.file)
    if case.n is None:
        with pytest.raises(LabError) as refusal:
            qm.load_questions(data, name)
        message = str(refusal.value)
        assert case.refused in message and "\n" not in message and len(message) < 400
        return
    qset = qm.load_questions(data, name)
    assert len(qset) == case.n
    messages = [m for m in qset.messages if not m.startswith(NO_REFS)]
    if case.warns:
        text = "\n".join(messages)
        assert all(w in text for w in case.warns), messages
    else:
        assert messages == []
    frame = qset.frame
    assert frame["id"].is_unique and list(frame.columns) == ["id", "question", "references"]
    assert list(frame["question"][: len(case.questions)]) == list(case.questions)
    assert [tuple(r) for r in frame["references"][: len(case.refs)]] == list(case.refs)
    assert list(frame["id"][: len(case.ids)]) == list(case.ids)


def test_every_corpus_file_has_its_case():
    assert len(list(UPLOADS.iterdir())) >= 40
    assert sorted(p.name for p in UPLOADS.iterdir()) == sorted(c.file for c in CASES if not c.file.startswith("gen:"))


def test_parsed_once_per_content(monkeypatch):
    """A rerun with the same bytes is served from the cache (also a refusal); other bytes are parsed."""
    calls = []
    qm._TABLES.clear()
    qm._SETS.clear()
    parse = qm._read_table
    monkeypatch.setattr(qm, "_read_table", lambda *a: calls.append(1) or parse(*a))
    wide = GENERATED["wide_14mb.csv"]()
    data = b"question,answer\nq_cache?,a\n"
    first = qm.load_questions(data, "x.csv")
    first.frame.loc[0, "question"] = "changed by a caller"
    assert qm.load_questions(data, "x.csv").frame["question"][0] == "q_cache?"
    assert qm.read_table(data, "x.csv")["question"][0] == "q_cache?"
    for _ in range(2):
        with pytest.raises(LabError, match="columns"):
            qm.read_table(wide, "wide.csv")
    assert len(calls) == 2
    qm.load_questions(data + b"q2?,b\n", "x.csv")
    assert len(calls) == 3


def test_check_lines_count_and_warnings():
    qset = qm.load_question_file(UPLOADS / "comma_unquoted_first_row.csv")
    lines = qm.check_lines(qset)
    assert lines[0] == "2 questions (2 with reference answers) in comma_unquoted_first_row.csv."
    assert lines[1].startswith("warning: 1 row(s) have more cells") and "line 2" in lines[1]


def test_deep_nesting_is_refused_in_a_server_thread():
    """Streamlit runs the page in a thread: the refusal is the same there (no RecursionError, no crash)."""
    errors = []

    def parse():
        try:
            qm.load_questions(b"[" * 100_000 + b"{}" + b"]" * 100_000 + b" ", "deep.json")
        except LabError as err:
            errors.append(str(err))

    thread = threading.Thread(target=parse)
    thread.start()
    thread.join(60)
    assert errors and "nested too deeply" in errors[0]


def test_read_table_names_lines_for_a_column_mapping():
    """The page maps columns itself: read_table's frame carries each row's line, prepare_questions names it."""
    raw = qm.read_table(b"a,b,c\n1,,x\n2,q?,y\n", "x.csv")
    assert list(raw.attrs["lines"]) == [2, 3]
    qset = qm.prepare_questions(raw, "b", "c", "a")
    assert list(qset.frame["id"]) == ["2"] and "line 2" in qset.messages[0]


def test_mutated_corpus_gives_a_set_or_one_line_refusal():
    """Random byte edits of the corpus (delimiters, quotes, brackets, NULs, cuts): every outcome is a clean
    set (unique ids, text questions, lists of text references) or a one-line LabError, nothing else."""
    rng = random.Random(12)
    files = sorted(UPLOADS.iterdir())
    for _ in range(400):
        path = rng.choice(files)
        data = bytearray(path.read_bytes()) or bytearray(b"x")
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[i] = rng.choice(b'",;\t|\n\r{}[]:\\ \x00\xff\xe9a0')
            else:
                del data[i : i + rng.randint(1, 8)]
            data = data or bytearray(b"x")
        try:
            qset = qm.load_questions(bytes(data), rng.choice([path.name, "x.csv", "x.jsonl"]))
        except LabError as err:
            assert "\n" not in str(err)
            continue
        frame = qset.frame
        assert frame["id"].is_unique and all(isinstance(q, str) and q for q in frame["question"])
        assert all(isinstance(r, list) and all(isinstance(x, str) for x in r) for r in frame["references"])
