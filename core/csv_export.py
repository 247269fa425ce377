"""The one CSV writer every export goes through, neutralising formula injection.

A cell a spreadsheet would read as a formula (``=HYPERLINK("http://evil",
"click")``, ``+cmd|' /C calc'!A0``, ``@SUM(...)``) comes from whatever a
visitor typed into a form or an event property; opened in Excel, LibreOffice
or Google Sheets it runs. OWASP's advice, followed here: a text cell starting
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
single quote, which spreadsheets show as text and do not evaluate. Numbers
are written as numbers (``-5`` is no formula), so only text is touched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, TextIO

# OWASP's list; the fullwidth forms too, which some spreadsheets fold to ASCII.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")


def safe_cell(value: Any) -> str | int | float:
    """``value`` as a CSV cell no spreadsheet evaluates: None is empty, numbers
    stay numbers, dates are ISO 8601, lists and dicts are JSON, and text that
    starts like a formula is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime | date):
        text = value.isoformat()
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_csv(out: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write ``header`` and ``rows`` to ``out`` as CSV (RFC 4180 quoting, CRLF
    line ends), every cell through ``safe_cell``; the number of rows written."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_cell(h) for h in header])
    count = 0
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
        count += 1
    return count
