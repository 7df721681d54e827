"""The one text toolkit every renderer shares: output formats, number and byte
formatting, fixed-width and Markdown tables, and DataFrame -> JSON records.

Pure functions of their arguments; no pandas import at module import time beyond what
:func:`records` needs when called, no printing, no files (that is
:mod:`ckprof.report.output`). Every renderer (analysis tables, compare, sweep, ranks,
HTA) formats through here, so a missing value reads ``—`` everywhere and a table
looks the same whichever command printed it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FORMATS",
    "MISSING",
    "check_format",
    "format_bytes",
    "format_ms",
    "format_pct",
    "format_signed_bytes",
    "format_signed_ms",
    "format_signed_pct",
    "is_missing",
    "jsonable",
    "markdown_table",
    "records",
    "text_table",
]

#: The output formats of every command that renders a result.
FORMATS: tuple[str, ...] = ("table", "json", "csv", "markdown")

#: How a value that is unknown or does not apply is shown to people.
MISSING = "—"


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is one of :data:`FORMATS`; else raise
    :class:`~ckprof.errors.UsageError` (the one error for a bad format, exit 2)."""
    if fmt not in FORMATS:
        from ckprof.errors import UsageError

        raise UsageError(f"unknown format {fmt!r}", hint=f"Choose one of {', '.join(FORMATS)}")
    return fmt


def is_missing(x: Any) -> bool:
    """None or a float NaN (numpy floats included)."""
    if x is None:
        return True
    try:
        return (isinstance(x, float) and math.isnan(x)) or (
            hasattr(x, "dtype") and x.dtype.kind == "f" and math.isnan(float(x)))
    except (TypeError, ValueError):
        return False


def format_ms(x: Any, *, digits: int = 3) -> str:
    """``1234.5 -> '1,234.500'``; missing -> ``—``."""
    return MISSING if is_missing(x) else f"{float(x):,.{digits}f}"


def format_signed_ms(x: Any) -> str:
    """``1.5 -> '+1.500'``; missing -> ``—``."""
    return MISSING if is_missing(x) else f"{float(x):+,.3f}"


def format_pct(x: Any) -> str:
    """``12.34 -> '12.3%'``; missing -> ``—``."""
    return MISSING if is_missing(x) else f"{float(x):.1f}%"


def format_signed_pct(x: Any) -> str:
    """``12.34 -> '+12.3%'``; missing -> ``—``."""
    return MISSING if is_missing(x) else f"{float(x):+.1f}%"


def format_bytes(n: Any, *, missing: str = MISSING) -> str:
    """Binary units with one decimal: ``1536 -> '1.5 KiB'``; None/NaN -> ``missing``."""
    if is_missing(n):
        return missing
    value = float(n)
    if math.isinf(value):
        return missing
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"


def format_signed_bytes(n: Any) -> str:
    """Like :func:`format_bytes` with an explicit ``+`` on gains."""
    text = format_bytes(n)
    if text != MISSING and not text.startswith("-"):
        return "+" + text
    return text


def _one_line(cell: str) -> str:
    """A table cell never breaks its row: newlines and tabs become visible escapes."""
    if "\n" in cell or "\r" in cell or "\t" in cell:
        return cell.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return cell


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Fixed-width table lines (header, dashes, rows), indented two spaces.

    ``align`` has one character per column, ``l`` or ``r``."""
    heads = [_one_line(h) for h in headers]
    cells = [[_one_line(c) for c in row] for row in rows]
    widths = [len(h) for h in heads]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(values: list[str]) -> str:
        parts = [v.ljust(w) if a == "l" else v.rjust(w)
                 for v, w, a in zip(values, widths, align, strict=True)]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(heads), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in cells)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """GitHub pipe-table lines; ``|`` inside a cell is escaped."""

    def esc(s: str) -> str:
        return _one_line(s).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


def jsonable(value: Any, *, digits: int | None = None) -> Any:
    """A JSON-safe scalar: numpy scalars -> Python, NaN/inf -> None, floats optionally
    rounded to ``digits``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, digits) if digits is not None else value
    return value


def records(df: pd.DataFrame, *, digits: int | None = None) -> list[dict[str, Any]]:
    """A DataFrame as a list of JSON-safe dicts (see :func:`jsonable`); keys are str."""
    return [{str(k): jsonable(v, digits=digits) for k, v in rec.items()}
            for rec in df.to_dict(orient="records")]
