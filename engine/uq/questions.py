"""Question sets for the uncertainty experiment: read an uploaded CSV / JSONL faithfully, map columns, clean.

A set is a DataFrame with columns `id` (str, unique), `question` (str) and `references` (list[str]:
acceptable answers, `|`-separated in CSV cells; a list, a string or an answer object such as TriviaQA's
`{"value": ..., "aliases": [...]}` in JSON).

Faithful reading: a row that is skipped, padded, cut, joined, renamed or dropped is named in
`QuestionSet.messages` with its place in the file (line, or item of a JSON array) and the reason; a
file that cannot be read as it was meant (binary, a spreadsheet, a broken JSON document, a header with
thousands of columns, mostly malformed rows) is refused with one LabError line. Nothing here raises
anything but LabError on bad bytes. Cell text is never evaluated or unescaped: formulas (`=`, `+`, `-`,
`@`), HTML, markdown and scripts stay plain text. Parsing is cached per file content (sha256 of the
bytes, a small LRU), so a rerun of the page does not read a large upload again.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.paths import DATA_DIR

DEFAULT_SET = DATA_DIR / "uq_default_questions.csv"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # 50 MB
MAX_ROWS = 100_000  # larger files are cut to their first MAX_ROWS questions (with a warning)
MAX_QUESTION_CHARS = 20_000  # the engine cuts longer ones (with a warning); the web server refuses > question_chars
MAX_COLUMNS = 1_000  # a question file has a handful of columns; more is a wrong delimiter or no table at all
MAX_ANSWER_NESTING = 5  # levels of lists / objects inside one answer cell
MAX_LISTED = 8  # places named in one message ("lines 3, 7, ... and 12 more")
CACHE_SIZE = 8  # parsed files kept (per content hash)
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
ANSWER_OBJECT_KEYS = ("value", "text", "answer", "answers", "aliases")  # read in this order from an answer object
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DELIMITERS = (",", ";", "\t")  # `|` separates references inside a cell, so it cannot also separate cells
_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive: an .xlsx, .ods or .docx file saved under another name?"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (.xls or .doc)"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"7z\xbc\xaf", "a 7-zip archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"PAR1", "a Parquet file"),
    (b"\x7fELF", "a program"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what csv and io.StringIO(newline="") count as a line


@dataclasses.dataclass(frozen=True)
class RowLimits:
    """Limits a question set is read under (a shared server's; the command line has none): a row over one
    is skipped and named with its line, the other rows are kept. `where`: where the limits are set,
    named in the message ("server_limits.toml")."""

    question_chars: int
    references_per_question: int
    reference_chars: int
    where: str = ""

    def problem(self, question: str, references: Sequence[str]) -> tuple[str, str] | None:
        """(limit name, what is over it) for the first limit this row is over, or None."""
        if len(question) > self.question_chars:
            return "question_chars", f"{len(question):,} characters"
        if len(references) > self.references_per_question:
            return "references_per_question", f"{len(references):,} references"
        longest = max((len(r) for r in references), default=0)
        if longest > self.reference_chars:
            return "reference_chars", f"a reference of {longest:,} characters"
        return None

    def message(self, name: str, rows: Sequence[tuple[int, str]], unit: str) -> str:
        unit_of = {"question_chars": "characters", "references_per_question": "references"}
        limit = f"{getattr(self, name):,} {unit_of.get(name, 'characters')}"
        place = f"{name}" + (f" in {self.where}" if self.where else "")
        target = "a reference" if name == "reference_chars" else "the question"
        return (
            f"{len(rows):,} row(s) over this server's limit of {limit} for {target} ({place}) were skipped: "
            f"{_problems(unit, rows)}."
        )


@dataclasses.dataclass
class QuestionSet:
    """A cleaned question set and what was done to it (shown to the user, with the lines concerned)."""

    frame: pd.DataFrame  # id, question, references
    messages: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def with_references(self) -> int:
        """Questions that have a reference answer (the others cannot be graded automatically)."""
        return int(self.frame["references"].map(bool).sum())


# ------------------------------------------------------------------------------------------------
# Messages naming places in the file


def _places(unit: str, places: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """`line 4`, `lines 4, 9, 12 and 30 more` (places are numbers or already formatted strings)."""
    shown = ", ".join(str(p) for p in places[:limit])
    more = f" and {len(places) - limit:,} more" if len(places) > limit else ""
    return f"{unit}{'s' if len(places) > 1 else ''} {shown}{more}"


def _show(value: Any, limit: int = 40) -> str:
    """A name from the file as one short line of a message (line breaks and controls escaped)."""
    text = json.dumps(str(value), ensure_ascii=False)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _names(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(_show(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _problems(unit: str, problems: Sequence[tuple[int, str]], limit: int = MAX_LISTED) -> str:
    """`line 4 (why), line 9 (why) and 3 more`."""
    shown = ", ".join(f"{unit} {where} ({why})" for where, why in problems[:limit])
    return shown + (f" and {len(problems) - limit:,} more" if len(problems) > limit else "")


# ------------------------------------------------------------------------------------------------
# Bytes -> text


def decode_bytes(data: bytes) -> tuple[str, list[str]]:
    """Text of an uploaded file and notes on how it was decoded.

    UTF-8 (with or without BOM), UTF-16 (BOM, or detected by its NUL bytes), else Windows-1252 /
    latin-1 (with a note, since that is a guess). Bytes that cannot be decoded in a file that is otherwise
    UTF-8 are replaced by U+FFFD, with a note naming their lines. Spreadsheets, archives, images and other
    binary files are refused; so is a file where most lines hold NUL bytes (a few such lines are kept here
    and skipped by the reader, each named).
    """
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise LabError(f"This file is binary, not a CSV or JSONL text file ({what}): export it as CSV UTF-8.")
    sample = data[:4096]
    if data.startswith(codecs.BOM_UTF8):
        codec, data = "utf-8", data[3:]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec = "utf-16"
    elif (
        sample
        and sample.count(b"\x00") > len(sample) // 4
        and (sample[1::2].count(0) > len(sample) // 3 or sample[0::2].count(0) > len(sample) // 3)
    ):
        # UTF-16 without BOM: every other byte is NUL for ASCII text.
        codec = "utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be"
    else:
        codec = ""
    notes: list[str] = []
    if codec:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            text = data.decode(codec, errors="replace")
            bad = [i + 1 for i, line in enumerate(_LINE_BREAK.split(text)) if "\ufffd" in line]
            notes.append(f"Bytes that are not valid {codec.upper()} were replaced by \ufffd on {_places('line', bad)}.")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            lenient = data.decode("utf-8", errors="replace")
            if any(ord(ch) > 127 and ch != "\ufffd" for ch in lenient):  # UTF-8 with a few stray bytes
                text = lenient
                bad = [i + 1 for i, line in enumerate(_LINE_BREAK.split(text)) if "\ufffd" in line]
                notes.append(f"Bytes that are not valid UTF-8 were replaced by \ufffd on {_places('line', bad)}.")
            else:
                try:
                    text, name = data.decode("cp1252"), "Windows-1252"
                except UnicodeDecodeError:
                    text, name = data.decode("latin-1"), "Latin-1"
                notes.append(
                    f"The file is not UTF-8; it was read as {name}: check accented letters in the preview "
                    "(save it as CSV UTF-8 to be sure)."
                )
    if "\x00" in text:
        lines = _LINE_BREAK.split(text)
        with_nul = [i + 1 for i, line in enumerate(lines) if "\x00" in line]
        if 2 * len(with_nul) > sum(1 for line in lines if line.strip()):
            raise LabError(
                f"This file looks binary (NUL bytes on {_places('line', with_nul, 3)}), not a CSV or JSONL text file."
            )
    head = text[:4096]
    controls = sum(1 for ch in head if ord(ch) < 32 and ch not in "\r\n\t\x00")
    if controls > max(8, len(head) // 50):
        raise LabError("This file looks binary (many control characters), not a CSV or JSONL text file.")
    return text, notes


# ------------------------------------------------------------------------------------------------
# Text -> raw table (a DataFrame whose attrs say where each row is in the file)


@dataclasses.dataclass
class _Table:
    rows: list[dict[str, Any]] | list[list[str]]
    columns: list[str] | None  # None: the rows are dicts (JSON)
    lines: list[int]  # place of each row in the file
    unit: str  # "line" or "item"
    notes: list[str]

    def frame(self) -> pd.DataFrame:
        if self.columns is None:
            frame = pd.DataFrame(self.rows, dtype=object) if self.rows else pd.DataFrame()
        else:
            frame = pd.DataFrame(self.rows, columns=pd.Index(self.columns, dtype=object), dtype=object)
        frame.attrs.update(lines=np.asarray(self.lines, dtype=np.int64), unit=self.unit, notes=list(self.notes))
        return frame


def _column_names(header: list[str], notes: list[str]) -> list[str]:
    """Header cells as column names: stripped, blank ones named `column<n>`, repeated ones suffixed `.1`."""
    names = [str(c).strip().lstrip("\ufeff") or f"column{j + 1}" for j, c in enumerate(header)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            renamed = f"{name}.{seen[name]}"
            while renamed in names or renamed in out:
                seen[name] += 1
                renamed = f"{name}.{seen[name]}"
            out.append(renamed)
        else:
            seen[name] = 0
            out.append(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        notes.append(
            f"The header repeats the column name(s) {_names(repeated)}; the repeats are read as "
            f"{_names([o for o, n in zip(out, names) if o != n])} (map the one you mean)."
        )
    return out


def _records(text: str, delimiter: str):
    """(first line, record) pairs of a CSV text, or (first line, csv.Error) for a record that is malformed."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, skipinitialspace=True)
    previous = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield previous + 1, err
        else:
            yield previous + 1, record
        previous = reader.line_num


def _csv_reason(err: csv.Error) -> str:
    message = str(err)
    if "expected after" in message:
        return "text after the closing quote of a cell"
    if "unexpected end of data" in message:
        return "a quote opened here is never closed: the rest of the file is inside it"
    if "field larger than field limit" in message:
        return f"a cell longer than {csv.field_size_limit():,} characters"
    return message


def _excel_separator(text: str) -> str | None:
    """The delimiter an Excel `sep=;` first line declares, if there is one."""
    first = _LINE_BREAK.split(text[:100], maxsplit=1)[0].strip().strip('"')
    match = re.fullmatch(r"sep=(.)", first)
    return match.group(1) if match else None


def _sniff_delimiter(text: str) -> str:
    """The delimiter (, ; or tab) that splits the header into the most columns with the most rows agreeing
    with it (first 64 kB); `,` when none splits the header."""
    sample = text[:65536]
    best, best_score = ",", (0.0, 1)
    for delimiter in DELIMITERS:
        records = []
        for _, record in _records(sample, delimiter):
            if isinstance(record, list) and any(c.strip() for c in record):
                records.append(record)
            if len(records) > 50:
                break
        if len(text) > len(sample) and len(records) > 1:
            records = records[:-1]  # maybe cut by the sample
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        agree = sum(len(r) == width for r in records[1:]) / max(1, len(records) - 1)
        if (agree, width) > best_score:
            best, best_score = delimiter, (agree, width)
    return best


def _read_csv(text: str, max_rows: int) -> _Table:
    """Every record checked against the header's width: more non-empty cells (an unquoted delimiter
    inside a cell) -> skipped, fewer -> padded with empty cells, malformed quoting or NUL bytes -> skipped;
    all named."""
    notes: list[str] = []
    delimiter = _excel_separator(text)
    skip_first = delimiter is not None
    if delimiter is None:
        delimiter = _sniff_delimiter(text)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    wide: list[int] = []
    short: list[int] = []
    broken: list[tuple[int, str]] = []
    nul: list[int] = []
    for line, record in _records(text, delimiter):
        if skip_first and line == 1:
            continue
        if isinstance(record, csv.Error):
            if header is None:
                raise LabError(f"Cannot read the header of this CSV (line {line}: {_csv_reason(record)}).")
            broken.append((line, _csv_reason(record)))
            continue
        if not any(c.strip() for c in record):
            continue  # a blank line holds nothing
        if any("\x00" in c for c in record):
            if header is None:
                raise LabError(f"The header (line {line}) holds NUL bytes: is this a text file?")
            nul.append(line)
            continue
        if header is None:
            if len(record) > MAX_COLUMNS:
                raise LabError(
                    f"The header (line {line}) has {len(record):,} columns; a question file has a few "
                    f"(the limit is {MAX_COLUMNS:,}). Is this a question table with one row per question?"
                )
            if len(record) == 1 and "|" in record[0]:
                raise LabError(
                    "This file seems to use '|' as its delimiter, which separates reference answers inside a "
                    "cell here: save it with commas, semicolons or tabs between cells."
                )
            header = _column_names(record, notes)
            continue
        width = len(header)
        if len(record) > width:
            if any(c.strip() for c in record[width:]):
                wide.append(line)
                continue
            record = record[:width]  # trailing empty cells (a delimiter at the end of the line)
        elif len(record) < width:
            short.append(line)
            record = record + [""] * (width - len(record))
        rows.append(record)
        lines.append(line)
        if len(rows) > max_rows:
            break
    if header is None:
        raise LabError("The file is empty.")
    shown = {"\t": "tab"}.get(delimiter, f"'{delimiter}'")
    if len(wide) + len(broken) > len(rows):
        first = _problems("line", sorted([(w, "more cells than the header") for w in wide] + broken), 3)
        raise LabError(
            f"Most rows cannot be read faithfully with the delimiter {shown} ({len(wide) + len(broken):,} "
            f"of {len(wide) + len(broken) + len(rows):,}: {first}). "
            + ("Quote cells that contain the delimiter." if len(wide) >= len(broken) else "Check the quotes.")
        )
    if wide:
        notes.append(
            f"{len(wide):,} row(s) have more cells than the header's {len(header)} (an unquoted {shown} "
            f"inside a cell?) and were skipped: {_places('line', wide)}. Put such cells in double quotes."
        )
    if short:
        notes.append(
            f"{len(short):,} row(s) have fewer cells than the header's {len(header)}; the missing cells are "
            f"read as empty: {_places('line', short)}."
        )
    if broken:
        notes.append(f"{len(broken):,} row(s) could not be read and were skipped: {_problems('line', broken)}.")
    if nul:
        notes.append(f"{len(nul):,} row(s) hold NUL bytes (binary data) and were skipped: {_places('line', nul)}.")
    return _Table(rows, header, lines, "line", notes)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a JSON boolean"
    return "a JSON number" if isinstance(value, (int, float)) else "a JSON value"


def _parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None), or (None, why it is not JSON): RecursionError included (deep nesting)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"{err.msg} (line {err.lineno}, column {err.colno})"
    except RecursionError:
        return None, "lists or objects nested too deeply (over about 1,000 levels)"


def _holds_objects(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(x, dict) for x in value[:100])


def _unwrap(doc: Any, notes: list[str], path: str = "", depth: int = 0) -> tuple[list, str]:
    """The question items of a parsed JSON document, and their unit ("item" or "line").

    A list is the items; an object with a question field is one question, or columns when that field
    holds a list (`{"question": [...], "answer": [...]}`); any other object is a wrapper whose one list of
    objects (`{"questions": [...]}`, `{"data": {"rows": [...]}}`) is unwrapped, with a note."""
    if isinstance(doc, list):
        if path:
            notes.append(
                f"The questions were read from the '{_show(path, 80)}' list of the JSON object ({len(doc):,} items)."
            )
        return doc, "item"
    if not isinstance(doc, dict):
        raise LabError(f"The JSON file holds {_json_kind(doc)}, not question objects.")
    question_key = next((k for k in doc if str(k).strip().lower() in QUESTION_ALIASES), None)
    if question_key is not None and _holds_objects(doc[question_key]):
        question_key = None  # {"questions": [{...}, ...]}: a wrapper, not a column
    if question_key is not None:
        value = doc[question_key]
        if isinstance(value, dict):
            raise LabError(
                f"The '{_show(question_key)}' field is an object keyed by row (pandas orient='columns'?): write one "
                "object per question, e.g. to_json(orient='records', lines=True)."
            )
        if not isinstance(value, list):
            return [doc], "line"
        columns = {k: v for k, v in doc.items() if isinstance(v, list)}
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{_show(k)}: {n}" for k, n in list(lengths.items())[:8])
            raise LabError(f"The JSON object holds columns of different lengths ({shown}): one list per column.")
        ignored = [str(k) for k in doc if k not in columns]
        notes.append(
            f"The JSON object was read as columns ({_names(list(columns))}; {len(value):,} questions)"
            + (f"; fields that are not lists were ignored: {_names(ignored)}." if ignored else ".")
        )
        return [{k: v[i] for k, v in columns.items()} for i in range(len(value))], "item"
    lists = {k: v for k, v in doc.items() if _holds_objects(v)}
    inner = {k: v for k, v in doc.items() if isinstance(v, dict)}
    keys = _names(list(doc), 10)
    if len(lists) > 1:
        raise LabError(
            f"The JSON object holds several lists of objects ({_names(list(lists))}): upload one of them "
            "alone (one question object per line)."
        )
    if lists:
        key, items = next(iter(lists.items()))
        return _unwrap(items, notes, f"{path}.{key}" if path else str(key), depth + 1)
    for key, value in inner.items() if depth < 3 else ():
        found: list[str] = []
        try:
            items, _ = _unwrap(value, found, f"{path}.{key}" if path else str(key), depth + 1)
        except LabError:
            continue
        notes.extend(found)
        return items, "item"
    raise LabError(
        f"The JSON object (keys: {keys}) holds no list of questions: write one question object per line, "
        'a list of them, or {"questions": [...]}.'
    )


def _looks_like_jsonl(lines: list[str]) -> bool:
    """Whether a text that is no JSON document is JSONL (one object per line, some lines broken) rather than
    a broken pretty-printed document: it does not open like one (`[`, `{`, `"key": [` alone on the first
    line) and some line is a whole object."""
    head = [line.strip() for line in lines[:10_000] if line.strip()]
    if len(head) < 2:
        return False
    first = head[0]
    if first.endswith(("[", "{")) or (first.startswith("[") and _parse_json(first)[1] is not None):
        return False
    return any(isinstance(_parse_json(line)[0], dict) for line in head[:1000])


def _read_json(text: str, max_rows: int) -> _Table:
    """A JSON document (list, wrapper, one object, columns) or JSONL (one object per line; broken lines,
    arrays and strings are skipped and named)."""
    notes: list[str] = []
    doc, error = _parse_json(text)
    physical = _LINE_BREAK.split(text)
    problems: list[tuple[int, str]] = []
    if error is None:
        items, unit = _unwrap(doc, notes)
        places = list(range(1, len(items) + 1))
        if unit == "line":  # one object: its line is where it starts
            places = [next(i + 1 for i, line in enumerate(physical) if line.strip())]
    elif _looks_like_jsonl(physical):
        unit, items, places = "line", [], []
        for number, line in enumerate(physical, 1):
            if not line.strip():
                continue
            value, why = _parse_json(line)
            if why is not None:
                problems.append((number, f"not valid JSON: {why.rsplit(' (line', 1)[0]}"))
            else:
                items.append(value)
                places.append(number)
    else:
        raise LabError(f"Cannot read this JSON file: {error}.")
    rows: list[dict] = []
    lines: list[int] = []
    for place, item in zip(places, items):
        if isinstance(item, dict):
            rows.append(item)
            lines.append(place)
            if len(rows) > max_rows:
                break
        else:
            problems.append((place, f"{_json_kind(item)}, not a question object"))
    problems.sort()
    if not rows:
        first = f": {_problems(unit, problems, 3)}" if problems else ""
        raise LabError(f"The JSON file holds no question objects{first}.")
    if problems:
        notes.append(f"{len(problems):,} {unit}(s) were skipped: {_problems(unit, problems)}.")
    keys = dict.fromkeys(k for row in rows for k in row)
    if len(keys) > MAX_COLUMNS:
        raise LabError(
            f"The question objects have {len(keys):,} different fields; a question file has a few "
            f"(the limit is {MAX_COLUMNS:,})."
        )
    return _Table(rows, None, lines, unit, notes)


def is_json_name(filename: str) -> bool:
    return filename.lower().endswith(JSON_SUFFIXES)


def _read_table(data: bytes, json_name: bool, max_bytes: int, max_rows: int) -> pd.DataFrame:
    if len(data) > max_bytes:
        raise LabError(
            f"The file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB. "
            "Split it or pass --limit on the command line."
        )
    if not data.strip():
        raise LabError("The file is empty.")
    text, notes = decode_bytes(data)
    if not text.strip():
        raise LabError("The file is empty.")
    if json_name or text.lstrip().startswith(("{", "[")):
        table = _read_json(text, max_rows)
    else:
        table = _read_csv(text, max_rows)
    table.notes[:0] = notes
    return table.frame()


class _Cache:
    """A small thread-safe LRU of parse outcomes (a value, or the LabError message of a refusal)."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[tuple, tuple[bool, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
        if hit is None:
            try:
                hit = (True, make())
            except LabError as err:
                hit = (False, str(err))
            with self.lock:
                self.items[key] = hit
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        ok, value = hit
        if not ok:
            raise LabError(value)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_TABLES = _Cache(CACHE_SIZE)
_SETS = _Cache(CACHE_SIZE)


def _copy(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy a caller may change without changing the cached frame."""
    copy = frame.copy(deep=False)
    copy.attrs = {k: (v.copy() if isinstance(v, (list, np.ndarray)) else v) for k, v in frame.attrs.items()}
    return copy


def read_table(
    data: bytes, filename: str = "upload.csv", *, max_bytes: int = MAX_UPLOAD_BYTES, max_rows: int = MAX_ROWS
) -> pd.DataFrame:
    """Parse an uploaded CSV (delimiter , ; or tab, sniffed; an Excel `sep=` line honoured) or JSON / JSONL
    into a DataFrame of cells (strings; JSON values as parsed).

    `frame.attrs`: "lines" (np.int64 array: each row's line in the file, or item of a JSON array),
    "unit" ("line" / "item") and "notes" (what reading skipped or padded, by line). Reading stops after
    max_rows + 1 rows (prepare_questions then says the file was cut). Cached per content."""
    key = (hashlib.sha256(data).hexdigest(), is_json_name(filename), max_bytes, max_rows)
    return _copy(_TABLES.get(key, lambda: _read_table(data, is_json_name(filename), max_bytes, max_rows)))


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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scalar_text(value: Any) -> str:
    """A JSON scalar as the text the file holds (true, 5, 2.5, text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten_answers(value: Any, depth: int = 0) -> list[str]:
    """Every answer string inside nested lists and answer objects (LabError when there is none to read)."""
    if depth > MAX_ANSWER_NESTING:
        raise LabError(f"answers nested more than {MAX_ANSWER_NESTING} levels deep")
    if _missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _flatten_answers(item, depth + 1)]
    if isinstance(value, dict):
        keys = [k for k in ANSWER_OBJECT_KEYS if k in value]
        if not keys:
            shown = _names(list(value), 6) or "none"
            raise LabError(f"an answer object without {'/'.join(ANSWER_OBJECT_KEYS)} (its keys: {shown})")
        return [text for key in keys for text in _flatten_answers(value[key], depth + 1)]
    return [_scalar_text(value)]


def split_references(value: Any) -> list[str]:
    """Acceptable answers of one cell: `a | b | c` (text), a JSON list string, a list (lists of lists and
    answer objects such as `{"value": 5, "aliases": [...]}` flattened); deduplicated, in order.
    LabError (a short reason) for a structure with no readable answer."""
    if isinstance(value, (list, tuple, dict)):
        items = _flatten_answers(value)
    elif _missing(value):
        return []
    else:
        text = _scalar_text(value).strip()
        items = text.split("|")
        if text[:1] in "[{" and text[-1:] in "]}":
            parsed, why = _parse_json(text)
            if why is None and isinstance(parsed, (list, dict)):
                items = _flatten_answers(parsed)
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))


def _question_text(value: Any) -> str:
    """A question cell as text (LabError for a list or object)."""
    if _missing(value):
        return ""
    if isinstance(value, (list, dict)):
        raise LabError(f"the question is {'a list' if isinstance(value, list) else 'an object'}, not text")
    return _scalar_text(value)


def _id_text(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return _scalar_text(value).strip()


def unique_ids(ids: Sequence[str]) -> tuple[list[str], list[int]]:
    """Ids made unique by construction: every repeated id gets the smallest `#n` suffix not taken by any id
    of the set (a, a, a#1 -> a#2, a#3, a#1). Returns the ids and the positions that changed."""
    counts: dict[str, int] = {}
    for value in ids:
        counts[value] = counts.get(value, 0) + 1
    taken = {value for value, n in counts.items() if n == 1}
    suffix: dict[str, int] = {}
    out, changed = [], []
    for position, value in enumerate(ids):
        if counts[value] == 1:
            out.append(value)
            continue
        n = suffix.get(value, 0)
        while True:
            n += 1
            candidate = f"{value}#{n}"
            if candidate not in taken:
                break
        suffix[value] = n
        taken.add(candidate)
        out.append(candidate)
        changed.append(position)
    return out, changed


def prepare_questions(
    frame: pd.DataFrame,
    question_col: str | None = None,
    answer_col: str | None = None,
    id_col: str | None = None,
    *,
    source: str = "",
    max_rows: int = MAX_ROWS,
    limits: RowLimits | None = None,
) -> QuestionSet:
    """Clean a raw table into a QuestionSet (columns guessed by name when not given).

    Rows whose question or answer cannot be read are skipped, blank questions are skipped, questions
    spanning lines are joined into one, over-long questions are cut, exact duplicate rows are dropped,
    blank ids are named, repeated ids get a `#n` suffix (unique by construction), and more than
    `max_rows` questions keep the first `max_rows`, rows over `limits` (a server's) are skipped, and rows
    without a reference answer among rows that have one are counted: each with a message naming the lines
    concerned (`frame.attrs["lines"]` from read_table; row numbers otherwise). Every problem of the file is
    listed at once; only a file with no usable row is refused.
    """
    if frame is None or frame.shape[1] == 0:
        raise LabError("The file has no columns.")
    guessed = guess_columns(frame)
    question_col = question_col or guessed["question"]
    answer_col = answer_col if answer_col is not None else guessed["answer"]
    id_col = id_col if id_col is not None else guessed["id"]
    columns = [str(c) for c in frame.columns]
    if question_col is None or question_col not in frame.columns:
        shown = _names(columns)
        hint = ""
        if len(columns) == 1 and any(d in columns[0] for d in ";\t|"):
            hint = " It has a single column: is the delimiter something other than , ; or tab?"
        raise LabError(f"No 'question' column: found [{shown}]. Map one of them to the question.{hint}")
    if len(frame) == 0:
        raise LabError("The file has a header but no rows.")
    unit = frame.attrs.get("unit", "row")
    lines = frame.attrs.get("lines")
    if lines is None or len(lines) != len(frame):
        lines = range(1, len(frame) + 1)
    lines = [int(x) for x in lines]
    messages: list[str] = list(frame.attrs.get("notes", []))
    if len(frame) > max_rows:
        messages.append(
            f"The file has more than {max_rows:,} rows; only the first {max_rows:,} are kept "
            f"(up to {unit} {lines[max_rows - 1]})."
        )
        frame, lines = frame.iloc[:max_rows], lines[:max_rows]
    raw_questions = frame[question_col].tolist()
    raw_refs = frame[answer_col].tolist() if answer_col in frame.columns else [None] * len(frame)
    has_ids = id_col in frame.columns
    raw_ids = frame[id_col].tolist() if has_ids else [f"q{i:05d}" for i in range(len(frame))]
    named = {_id_text(v) for v in raw_ids} if has_ids else set()
    kept: list[tuple[int, str, str, list[str]]] = []  # (position, id, question, references)
    unreadable: list[tuple[int, str]] = []
    blank, joined, cut, unnamed = [], [], [], []
    over: dict[str, list[tuple[int, str]]] = {}
    for position, (question, refs, qid) in enumerate(zip(raw_questions, raw_refs, raw_ids)):
        line = lines[position]
        try:
            text = _question_text(question)
            references = split_references(refs)
        except LabError as err:
            unreadable.append((line, str(err)))
            continue
        clean = " ".join(text.split())
        if not clean:
            blank.append(line)
            continue
        if clean != text.strip():
            joined.append(line)
        refused = limits.problem(clean, references) if limits is not None else None
        if refused is not None:
            over.setdefault(refused[0], []).append((line, refused[1]))
            continue
        if len(clean) > MAX_QUESTION_CHARS:
            cut.append(line)
            clean = clean[:MAX_QUESTION_CHARS]
        name = _id_text(qid)
        if not name:
            name, n = f"row{position}", 0
            while name in named:  # never take a name the file gives another row
                n += 1
                name = f"row{position}#{n}"
            unnamed.append(line)
        kept.append((position, name, clean, references))
    unread = f"{len(unreadable):,} row(s) could not be read and were skipped: {_problems(unit, unreadable)}."
    if unreadable:
        messages.append(unread)
    if blank:
        messages.append(f"{len(blank):,} row(s) with a blank question were skipped: {_places(unit, blank)}.")
    refusals = [limits.message(name, rows, unit) for name, rows in over.items()] if limits is not None else []
    messages += refusals
    if not kept:
        if not unreadable and not over:
            raise LabError("Every question in the file is blank.")
        skipped = ([unread] if unreadable else []) + refusals
        raise LabError(skipped[0] if len(skipped) == 1 else "No row can be used: " + " ".join(skipped))
    if joined:
        messages.append(
            f"{len(joined):,} question(s) had line breaks, tabs or repeated spaces, joined into single spaces: "
            f"{_places(unit, joined)}."
        )
    if cut:
        messages.append(
            f"{len(cut):,} question(s) longer than {MAX_QUESTION_CHARS} characters were cut: {_places(unit, cut)}."
        )
    first_of: dict[tuple[str, tuple[str, ...]], int] = {}
    duplicates: list[str] = []
    unique_rows = []
    for row in kept:
        key = (row[2], tuple(row[3]))
        if key in first_of:
            duplicates.append(f"{lines[row[0]]} (same as {lines[first_of[key]]})")
            continue
        first_of[key] = row[0]
        unique_rows.append(row)
    if duplicates:
        messages.append(
            f"{len(duplicates):,} duplicate row(s) (same question and answers) were dropped: "
            f"{_places(unit, duplicates)}."
        )
    if unnamed and has_ids:
        messages.append(f"{len(unnamed):,} row(s) have a blank id and were named row<n>: {_places(unit, unnamed)}.")
    ids, changed = unique_ids([row[1] for row in unique_rows])
    if changed:
        renamed = [f"{lines[unique_rows[i][0]]} ({_show(unique_rows[i][1])} -> {_show(ids[i])})" for i in changed]
        messages.append(
            f"{len(changed):,} row(s) shared an id; a #n suffix makes them unique: {_places(unit, renamed)}."
        )
    out = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object),
            "question": pd.Series([row[2] for row in unique_rows], dtype=object),
            "references": pd.Series([row[3] for row in unique_rows], dtype=object),
        }
    )
    if not any(row[3] for row in unique_rows):
        messages.append(
            "No reference answers: automatic correctness needs them; mark answers by hand "
            "or use a set with an answer column."
        )
    else:
        ungraded = [lines[row[0]] for row in unique_rows if not row[3]]
        if ungraded:
            messages.append(
                f"{len(ungraded):,} of {len(unique_rows):,} question(s) have no reference answer: they are kept but "
                f"not graded automatically (A1, A2, A3 leave them out unless you mark them by hand): "
                f"{_places(unit, ungraded)}."
            )
    return QuestionSet(out, messages, source)


# ------------------------------------------------------------------------------------------------
# Files


def load_questions(
    data: bytes, filename: str = "upload.csv", *, limits: RowLimits | None = None, **columns
) -> QuestionSet:
    """read_table + prepare_questions in one call, cached per file content, columns and limits (the command
    line reads without `limits`; a shared server passes its own)."""
    key = (hashlib.sha256(data).hexdigest(), filename, tuple(sorted(columns.items())), limits)
    qset = _SETS.get(
        key, lambda: prepare_questions(read_table(data, filename), source=filename, limits=limits, **columns)
    )
    return dataclasses.replace(qset, frame=qset.frame.copy(deep=False), messages=list(qset.messages))


def load_question_file(path: str | Path, **columns) -> QuestionSet:
    """A question set from a file on disk (LabError when it is missing or unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"Question file not found: {path}")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise LabError(f"The file is {size / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB.")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LabError(f"Cannot read the question file {path}: {err.strerror or err}") from err
    return load_questions(data, path.name, **columns)


def check_lines(qset: QuestionSet) -> list[str]:
    """What `uq --questions FILE --check` prints: the question count, then every warning (with lines)."""
    with_refs = int(qset.frame["references"].map(bool).sum())
    head = f"{len(qset):,} questions ({with_refs:,} with reference answers) in {qset.source or 'the file'}."
    return [head] + [f"warning: {message}" for message in qset.messages]


def default_questions() -> QuestionSet:
    """The bundled set written for the lab (engine/data/uq_default_questions.csv)."""
    return load_question_file(DEFAULT_SET)


def questions_hash(frame: pd.DataFrame) -> str:
    """A short hash of (id, question, references) in order: a run's question-set fingerprint."""
    digest = hashlib.sha256()
    for qid, question, refs in zip(frame["id"], frame["question"], frame["references"]):
        digest.update(json.dumps([qid, question, list(refs)], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]
