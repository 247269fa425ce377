"""The SQL a segment run executes, for people to read (``segflow segments sql``).

``compiled_sql`` takes the statements from ``core.segments.batch.statements``,
the function ``evaluate_sql`` itself executes, and only lays them out;
``explain_sql`` adds the database's plan of the query.
"""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.segments.batch import Statements, statements
from core.segments.language import Segment, SegmentError


def compiled_sql(
    segments: dict[str, Segment],
    names: list[str],
    as_of: datetime,
    dialect: sa.Dialect,
    *,
    incremental: bool = False,
    plan: str | None = None,
) -> Statements:
    """The statements a run evaluating ``names`` executes (the other segments
    are there for ``segment:`` references); unknown names are an error
    listing the known ones."""
    unknown = [n for n in names if n not in segments]
    if unknown:
        known = ", ".join(sorted(segments)) or "none"
        raise SegmentError(f"unknown segment {', '.join(map(repr, unknown))}; known: {known}")
    return statements(segments, as_of, dialect, incremental=incremental, only=set(names), plan=plan)


def format_sql(text: str) -> str:
    """SQLAlchemy's one-clause-per-line text, subqueries indented by depth and
    the select list one column a line (as dbt's compile output reads)."""
    text = _outside_quotes(text, " LEFT OUTER JOIN ", "\nLEFT OUTER JOIN ")
    text = _outside_quotes(text, ") JOIN ", ")\nJOIN ")
    text = re.sub(r"(?<!OUTER) JOIN ", "\nJOIN ", text)
    text = _outside_quotes(text, " GROUP BY ", "\nGROUP BY ")
    text = _outside_quotes(text, "(SELECT ", "(\nSELECT ")
    out: list[str] = []
    depth = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        pieces = _split_columns(line) if line.startswith("SELECT ") else [line]
        for i, piece in enumerate(pieces):
            pad = "    " * depth + ("    " if i else "")
            out.append(pad + piece)
        for ch in line:
            depth += ch == "("
            depth -= ch == ")"
        depth = max(depth, 0)
    return "\n".join(out)


def _outside_quotes(text: str, old: str, new: str) -> str:
    """``text.replace(old, new)`` except inside string literals."""
    parts = text.split("'")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace(old, new)
    return "'".join(parts)


def _split_columns(line: str) -> list[str]:
    """``SELECT a, b(c, d), e`` as ``SELECT a,`` / ``b(c, d),`` / ``e``: top-level commas."""
    parts, level, start, quote = [], 0, 0, False
    for i, ch in enumerate(line):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            level += 1
        elif not quote and ch == ")":
            level -= 1
        elif not quote and ch == "," and level == 0:
            parts.append(line[start : i + 1].strip())
            start = i + 1
    parts.append(line[start:].strip())
    return parts


def explain_sql(conn: Connection, st: Statements) -> list[str]:
    """The database's plan of ``st.query`` (the candidate table created empty
    first when the statements are incremental)."""
    cur = conn.connection.cursor()
    try:
        for sql in st.setup:
            cur.execute(sql)
        for sql in st.analyze:
            cur.execute(sql)
        if conn.dialect.name == "sqlite":
            cur.execute(f"EXPLAIN QUERY PLAN {st.query}")
            rows = cur.fetchall()
            depth = {0: -1}
            lines = []
            for node, parent, _, detail in rows:
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            return lines
        cur.execute(f"EXPLAIN {st.query}")
        return [r[0] for r in cur.fetchall()]
    finally:
        cur.close()


__all__ = ["compiled_sql", "explain_sql", "format_sql"]
