"""Number fields that refuse a value with its reason right under the field.

A `number_input` with bounds never passes an out-of-range value to Python: the browser keeps the old
value without a word. So the lab's number fields have no browser-side bounds; the value is checked here
and, when refused, the reason (the allowed range, or the server limit by name) is shown under the field,
only the button it feeds is disabled, and the results on screen stay.
"""

from __future__ import annotations

from collections.abc import Callable

from ui.limits import limits, over_limit

Check = Callable[[float | None], str | None]


def number_text(x: float) -> str:
    """2 -> '2', 2000 -> '2,000', 0.05 -> '0.05', 2.5e-05 -> '2.5e-05'."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def range_problem(
    what: str,
    value: float | None,
    low: float,
    high: float,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
    limit: str | None = None,
) -> str | None:
    """Why `value` is refused, or None: missing; not whole (`integer`); over this server's limit `limit` when
    that is tighter than `high` (the message names the limit and its file); outside [low, high] (an end is
    open with `low_open` / `high_open`; `note` says where the bound comes from)."""
    if value is None:
        return f"{what}: enter a number."
    if integer and not float(value).is_integer():
        return f"{what} must be a whole number (got {number_text(value)})."
    server = getattr(limits(), limit) if limit else None
    if server is not None and server < high and value > server:
        return over_limit(limit, value, what)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if above and below:
        return None
    if low_open or high_open:
        span = f"in {'(' if low_open else '['}{number_text(low)}, {number_text(high)}{')' if high_open else ']'}"
    else:
        span = f"between {number_text(low)} and {number_text(high)}"
    kind = "a whole number " if integer else ""
    return f"{what} must be {kind}{span}{note} (got {number_text(value)})."


def between(what: str, low: float, high: float, **options) -> Check:
    """`range_problem` as a check of one value (the options of `range_problem`)."""
    return lambda value: range_problem(what, value, low, high, **options)


def number_field(
    where,
    label: str,
    default: float | None,
    key: str,
    check: Check,
    *,
    step: float | None = None,
    help: str | None = None,
    format: str | None = None,
) -> tuple[float | None, bool]:
    """A number field bound to the URL (`?<key>=`) with no browser-side bounds: (the value as typed, whether
    `check` accepts it); a refusal is shown right under the field (in `where`: a column, or `st`)."""
    value = where.number_input(label, value=default, step=step, key=key, help=help, format=format, bind="query-params")
    problem = check(value)
    if problem:
        where.error(problem, icon=":material/block:")
    return value, problem is None
