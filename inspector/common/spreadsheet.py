"""CSV files that a spreadsheet opens as data: a text cell that a spreadsheet would run as a formula
(it begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: CSV injection, OWASP) is written
with a leading apostrophe, which spreadsheets show as text and do not display. Plain numbers stay as they
are. Every CSV the project writes for people (results.csv, labels.csv, the evaluation tables) goes
through :func:`csv_text`."""

from __future__ import annotations

import csv
import io
import math

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def safe_cell(value):
    """``value`` as a cell no spreadsheet runs: a formula-like text gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def csv_text(header, rows) -> str:
    """A CSV document: ``header`` (column names), then ``rows`` (sequences, or dicts keyed by the
    header's names), every cell passed through :func:`safe_cell`."""
    header = list(header)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        cells = [row.get(h, "") for h in header] if isinstance(row, dict) else row
        writer.writerow([safe_cell(c) for c in cells])
    return buf.getvalue()
