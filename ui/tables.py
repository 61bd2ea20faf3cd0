"""Tables as a person reads them: every column named in words, never a "None", "nan" or empty cell.

`readable(table, labels)` renames the columns by `labels` (a column not in it: its name with spaces for
underscores, so no raw snake_case name reaches the page), drops rows with no value at all, and writes a
column with a missing value, booleans or objects as text (`cell_text`: MISSING for a missing value, yes /
no, numbers to 4 significant digits); complete numeric columns stay numbers (they sort as numbers).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

MISSING = "—"  # a value a table does not have (never "None" or "nan")


def cell_text(value: Any) -> str:
    """A table cell as text: MISSING for None / NaN / an empty text, yes / no for booleans, numbers to 4
    significant digits."""
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip()):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def column_name(column: str, labels: dict[str, str]) -> str:
    """A column's name in words: its label, else its name with spaces for underscores."""
    return labels.get(column, str(column).replace("_", " "))


def readable(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The table to show (module doc)."""
    table = table.dropna(how="all").copy()
    for column in table.columns:
        values = table[column]
        missing = values.isna() | values.map(lambda v: isinstance(v, str) and not v.strip())
        if missing.any() or values.dtype == bool or values.dtype == object:
            table[column] = values.map(cell_text)
    return table.rename(columns={c: column_name(c, labels) for c in table.columns})
