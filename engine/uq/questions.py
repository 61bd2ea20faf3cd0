"""Question sets for the uncertainty experiment: read an uploaded CSV / JSONL safely, map columns, clean.

A set is a DataFrame with columns `id` (str), `question` (str) and `references` (list[str]: acceptable
answers, `|`-separated in CSV cells, a list or a string in JSONL). Every problem a user can cause
(encoding, delimiter, binary file, size, missing column, blank rows) becomes a one-line LabError or a
warning in `QuestionSet.messages`; nothing here raises anything else on bad bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pandas as pd

from engine.core.errors import LabError
from engine.core.paths import DATA_DIR

DEFAULT_SET = DATA_DIR / "uq_default_questions.csv"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # 50 MB
MAX_ROWS = 100_000  # larger files are cut to their first MAX_ROWS questions (with a warning)
MAX_QUESTION_CHARS = 2_000
QUESTION_ALIASES = ("question", "questions", "q", "query", "prompt", "input", "text")
ANSWER_ALIASES = (
    "answer",
    "answers",
    "reference",
    "references",
    "gold",
    "target",
    "label",
    "output",
    "answer_text",
    "normalized_aliases",
    "aliases",
)
ID_ALIASES = ("id", "qid", "question_id", "idx", "index", "uid")


@dataclasses.dataclass
class QuestionSet:
    """A cleaned question set and what was done to it (shown to the user)."""

    frame: pd.DataFrame  # id, question, references
    messages: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.frame)


# ------------------------------------------------------------------------------------------------
# Bytes -> raw table


def decode_bytes(data: bytes) -> str:
    """Text of an uploaded file: UTF-8 (with or without BOM), UTF-16 (BOM), else latin-1/cp1252.

    A file with NUL bytes or many control characters that is not UTF-16 is refused as binary.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    sample = data[:4096]
    if (
        sample
        and sample.count(b"\x00") > len(sample) // 4
        and (sample[1::2].count(0) > len(sample) // 3 or sample[0::2].count(0) > len(sample) // 3)
    ):
        # UTF-16 without BOM: every other byte is NUL for ASCII text.
        codec = "utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be"
        return data.decode(codec, errors="replace")
    if b"\x00" in sample:
        raise LabError("This file looks binary (it contains NUL bytes), not a CSV or JSONL text file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace") if _mostly_cp1252(data) else data.decode("latin-1")
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\r\n\t")
    if controls > max(8, len(text[:4096]) // 50):
        raise LabError("This file looks binary (many control characters), not a CSV or JSONL text file.")
    return text


def _mostly_cp1252(data: bytes) -> bool:
    try:
        data.decode("cp1252")
        return True
    except UnicodeDecodeError:
        return False


def _sniff_delimiter(text: str) -> str:
    head = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t").delimiter
    except csv.Error:
        first = text.splitlines()[0] if text else ""
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def read_table(
    data: bytes, filename: str = "upload.csv", *, max_bytes: int = MAX_UPLOAD_BYTES, max_rows: int = MAX_ROWS
) -> pd.DataFrame:
    """Parse an uploaded CSV (delimiter , ; or tab, sniffed) or JSONL into a DataFrame of strings/lists.

    CSV reading stops after max_rows + 1 rows (prepare_questions then says the file was cut)."""
    if len(data) > max_bytes:
        raise LabError(
            f"The file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB. "
            "Split it or pass --limit on the command line."
        )
    if not data.strip():
        raise LabError("The file is empty.")
    text = decode_bytes(data)
    if not text.strip():
        raise LabError("The file is empty.")
    name = filename.lower()
    if name.endswith((".jsonl", ".json", ".ndjson")) or text.lstrip().startswith(("{", "[")):
        return _read_jsonl(text)
    delimiter = _sniff_delimiter(text)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            on_bad_lines="skip",
            engine="c",
            nrows=max_rows + 1,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as err:
        raise LabError(f"Cannot read this file as CSV: {str(err).splitlines()[0]}") from err
    frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    return frame


def _read_jsonl(text: str) -> pd.DataFrame:
    stripped = text.strip()
    rows: list[dict] = []
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise LabError(f"Cannot read this JSON file: {err.msg} (line {err.lineno}).") from err
        rows = [r for r in parsed if isinstance(r, dict)] if isinstance(parsed, list) else []
    else:
        bad = 0
        for line in stripped.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
        if bad and not rows:
            raise LabError("Cannot read this file as JSONL: no line is a JSON object.")
    if not rows:
        raise LabError("The JSON file holds no question objects.")
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Raw table -> question set


def guess_columns(frame: pd.DataFrame) -> dict[str, str | None]:
    """Best guess of the question / answer / id columns by name (case-insensitive), None when absent."""
    lower = {str(c).strip().lower(): c for c in frame.columns}

    def pick(aliases):
        for alias in aliases:
            if alias in lower:
                return lower[alias]
        return None

    return {"question": pick(QUESTION_ALIASES), "answer": pick(ANSWER_ALIASES), "id": pick(ID_ALIASES)}


def split_references(value) -> list[str]:
    """Acceptable answers of one cell: a list (JSONL), a JSON list string, or `a | b | c`."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    elif isinstance(value, dict):
        items = [str(v) for v in (value.get("aliases") or value.get("value") or [])] if value else []
        if isinstance(value.get("value"), str):
            items = [value["value"]] + items
    else:
        text = str(value).strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
                if isinstance(parsed, list):
                    return list(dict.fromkeys(str(v).strip() for v in parsed if str(v).strip()))
            except json.JSONDecodeError:
                pass
        items = text.split("|")
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))  # deduplicated, in order


def prepare_questions(
    frame: pd.DataFrame,
    question_col: str | None = None,
    answer_col: str | None = None,
    id_col: str | None = None,
    *,
    source: str = "",
    max_rows: int = MAX_ROWS,
) -> QuestionSet:
    """Clean a raw table into a QuestionSet (columns guessed by name when not given).

    Blank questions are dropped, exact duplicate rows are dropped, duplicate ids get a suffix, over-long
    questions are cut, and more than `max_rows` questions keep the first `max_rows`: each with a message.
    """
    if frame is None or frame.shape[1] == 0:
        raise LabError("The file has no columns.")
    guessed = guess_columns(frame)
    question_col = question_col or guessed["question"]
    answer_col = answer_col if answer_col is not None else guessed["answer"]
    id_col = id_col if id_col is not None else guessed["id"]
    columns = [str(c) for c in frame.columns]
    if question_col is None or question_col not in frame.columns:
        shown = ", ".join(columns[:8]) + ("..." if len(columns) > 8 else "")
        hint = ""
        if len(columns) == 1 and any(d in columns[0] for d in ";\t|"):
            hint = " It has a single column: is the delimiter something other than , ; or tab?"
        raise LabError(f"No 'question' column: found [{shown}]. Map one of them to the question.{hint}")
    if len(frame) == 0:
        raise LabError("The file has a header but no rows.")
    messages: list[str] = []
    if len(frame) > max_rows:
        messages.append(f"The file has more than {max_rows:,} rows; only the first {max_rows:,} are kept.")
        frame = frame.iloc[:max_rows]
    questions = frame[question_col].map(
        lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else " ".join(str(v).split())
    )
    refs = (
        frame[answer_col].map(split_references)
        if answer_col in frame.columns
        else pd.Series([[] for _ in range(len(frame))], index=frame.index)
    )
    if id_col in frame.columns:
        ids = frame[id_col].map(lambda v: str(v).strip())
    else:
        ids = pd.Series([f"q{i:05d}" for i in range(len(frame))], index=frame.index)
    out = pd.DataFrame({"id": ids.values, "question": questions.values, "references": refs.values})
    blank = out["question"].str.len() == 0
    if blank.any():
        messages.append(f"{int(blank.sum())} row(s) with a blank question were skipped.")
        out = out[~blank]
    if out.empty:
        raise LabError("Every question in the file is blank.")
    long = out["question"].str.len() > MAX_QUESTION_CHARS
    if long.any():
        messages.append(f"{int(long.sum())} question(s) longer than {MAX_QUESTION_CHARS} characters were cut.")
        out.loc[long, "question"] = out.loc[long, "question"].str.slice(0, MAX_QUESTION_CHARS)
    key = out["question"] + "\x1f" + out["references"].map(lambda r: "|".join(r))
    dup = key.duplicated()
    if dup.any():
        messages.append(f"{int(dup.sum())} duplicate row(s) (same question and answers) were dropped.")
        out = out[~dup]
    empty_ids = out["id"].str.len() == 0
    if empty_ids.any():
        out.loc[empty_ids, "id"] = [f"row{i}" for i in out.index[empty_ids]]
    dup_id = out["id"].duplicated(keep=False)
    if dup_id.any():
        counts: dict[str, int] = {}
        new_ids = []
        for value, is_dup in zip(out["id"], dup_id):
            if is_dup:
                counts[value] = counts.get(value, 0) + 1
                new_ids.append(f"{value}#{counts[value]}")
            else:
                new_ids.append(value)
        out["id"] = new_ids
        messages.append(f"{int(dup_id.sum())} row(s) shared an id; a #n suffix makes them unique.")
    if not out["references"].map(bool).any():
        messages.append(
            "No reference answers: automatic correctness needs them; mark answers by hand "
            "or use a set with an answer column."
        )
    return QuestionSet(out.reset_index(drop=True), messages, source)


def load_questions(data: bytes, filename: str = "upload.csv", **columns) -> QuestionSet:
    """read_table + prepare_questions in one call (the CLI path)."""
    return prepare_questions(read_table(data, filename), source=filename, **columns)


def load_question_file(path: str | Path, **columns) -> QuestionSet:
    """A question set from a file on disk (LabError when it is missing or unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"Question file not found: {path}")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise LabError(f"The file is {size / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB.")
    return load_questions(path.read_bytes(), path.name, **columns)


def default_questions() -> QuestionSet:
    """The bundled set written for the lab (engine/data/uq_default_questions.csv)."""
    return load_question_file(DEFAULT_SET)


def questions_hash(frame: pd.DataFrame) -> str:
    """A short hash of (id, question, references) in order: a run's question-set fingerprint."""
    digest = hashlib.sha256()
    for qid, question, refs in zip(frame["id"], frame["question"], frame["references"]):
        digest.update(json.dumps([qid, question, list(refs)], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]
