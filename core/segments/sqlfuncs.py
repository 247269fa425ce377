"""SQL constructs whose spelling differs per dialect (JSON access, substring
search), written once as SQLAlchemy elements compiled per dialect."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement


class _JsonAccess(FunctionElement):
    """A typed read of one top-level key of a JSON column; NULL otherwise."""

    inherit_cache = True

    def __init__(self, column: Any, key: str) -> None:
        self.key = key
        super().__init__(column)


class json_text(_JsonAccess):  # noqa: N801 - SQL function style
    type = sa.String()
    name = "json_text"
    inherit_cache = True


class json_number(_JsonAccess):  # noqa: N801
    type = sa.Float()
    name = "json_number"
    inherit_cache = True


class json_bool(_JsonAccess):  # noqa: N801
    """1 for true, 0 for false."""

    type = sa.Integer()
    name = "json_bool"
    inherit_cache = True


class json_key(_JsonAccess):  # noqa: N801
    """The value's JSON text, for counting distinct values; NULL for null/missing."""

    type = sa.String()
    name = "json_key"
    inherit_cache = True


class text_contains(FunctionElement):  # noqa: N801
    type = sa.Boolean()
    name = "text_contains"
    inherit_cache = True


def _col(compiler, element, **kw) -> str:
    (column,) = list(element.clauses)
    return compiler.process(column, **kw)


def _path(element) -> str:
    return f"'$.{element.key}'"


@compiles(json_text, "sqlite")
def _sqlite_text(element, compiler, **kw):
    c, p = _col(compiler, element, **kw), _path(element)
    return f"(CASE WHEN json_type({c}, {p}) = 'text' THEN json_extract({c}, {p}) END)"


@compiles(json_number, "sqlite")
def _sqlite_number(element, compiler, **kw):
    c, p = _col(compiler, element, **kw), _path(element)
    return f"(CASE WHEN json_type({c}, {p}) IN ('integer', 'real') THEN json_extract({c}, {p}) END)"


@compiles(json_bool, "sqlite")
def _sqlite_bool(element, compiler, **kw):
    c, p = _col(compiler, element, **kw), _path(element)
    return f"(CASE json_type({c}, {p}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"


@compiles(json_key, "sqlite")
def _sqlite_key(element, compiler, **kw):
    c, p = _col(compiler, element, **kw), _path(element)
    # ->, unlike json_extract, keeps the JSON spelling: true stays true, not 1.
    return f"(CASE WHEN json_type({c}, {p}) <> 'null' THEN {c} -> {p} END)"


@compiles(json_text, "postgresql")
def _pg_text(element, compiler, **kw):
    c, k = _col(compiler, element, **kw), f"'{element.key}'"
    return f"(CASE WHEN jsonb_typeof({c} -> {k}) = 'string' THEN {c} ->> {k} END)"


@compiles(json_number, "postgresql")
def _pg_number(element, compiler, **kw):
    c, k = _col(compiler, element, **kw), f"'{element.key}'"
    return (
        f"(CASE WHEN jsonb_typeof({c} -> {k}) = 'number' THEN ({c} ->> {k})::double precision END)"
    )


@compiles(json_bool, "postgresql")
def _pg_bool(element, compiler, **kw):
    c, k = _col(compiler, element, **kw), f"'{element.key}'"
    return (
        f"(CASE WHEN {c} -> {k} = 'true'::jsonb THEN 1 WHEN {c} -> {k} = 'false'::jsonb THEN 0 END)"
    )


@compiles(json_key, "postgresql")
def _pg_key(element, compiler, **kw):
    c, k = _col(compiler, element, **kw), f"'{element.key}'"
    return f"(CASE WHEN jsonb_typeof({c} -> {k}) <> 'null' THEN ({c} -> {k})::text END)"


@compiles(text_contains, "sqlite")
def _sqlite_contains(element, compiler, **kw):
    haystack, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(instr({haystack}, {needle}) > 0)"


@compiles(text_contains, "postgresql")
def _pg_contains(element, compiler, **kw):
    haystack, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(strpos({haystack}, {needle}) > 0)"


# Other dialects: standard POSITION and the JSON_EXTRACT / JSON_TYPE family
# (MySQL, MariaDB). Compiled and checked for shape, not run against a server.
@compiles(text_contains)
def _default_contains(element, compiler, **kw):
    haystack, needle = (compiler.process(c, **kw) for c in element.clauses)
    return f"(POSITION({needle} IN {haystack}) > 0)"


def _extract(compiler, element, **kw) -> str:
    return f"JSON_EXTRACT({_col(compiler, element, **kw)}, {_path(element)})"


@compiles(json_text)
def _default_text(element, compiler, **kw):
    x = _extract(compiler, element, **kw)
    return f"(CASE WHEN JSON_TYPE({x}) = 'STRING' THEN JSON_UNQUOTE({x}) END)"


@compiles(json_number)
def _default_number(element, compiler, **kw):
    x = _extract(compiler, element, **kw)
    return (
        f"(CASE WHEN JSON_TYPE({x}) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') "
        f"THEN {x} + 0 END)"
    )


@compiles(json_bool)
def _default_bool(element, compiler, **kw):
    x = _extract(compiler, element, **kw)
    return (
        f"(CASE WHEN JSON_TYPE({x}) = 'BOOLEAN' "
        f"THEN (CASE WHEN {x} = CAST('true' AS JSON) THEN 1 ELSE 0 END) END)"
    )


@compiles(json_key)
def _default_key(element, compiler, **kw):
    x = _extract(compiler, element, **kw)
    return f"(CASE WHEN JSON_TYPE({x}) <> 'NULL' THEN CAST({x} AS CHAR) END)"


def starts_with(x: ColumnElement, prefix: str) -> ColumnElement:
    return sa.func.substr(x, 1, len(prefix)) == prefix


class epoch_seconds(FunctionElement):  # noqa: N801
    """Whole seconds since 1970 of a UTC timestamp column (fractions dropped)."""

    type = sa.BigInteger()
    name = "epoch_seconds"
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _sqlite_epoch(element, compiler, **kw):
    (column,) = list(element.clauses)
    return f"CAST(strftime('%s', {compiler.process(column, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _pg_epoch(element, compiler, **kw):
    (column,) = list(element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(column, **kw)})) AS BIGINT)"


@compiles(epoch_seconds)
def _default_epoch(element, compiler, **kw):
    (column,) = list(element.clauses)
    return f"UNIX_TIMESTAMP({compiler.process(column, **kw)})"


class unindexed(FunctionElement):  # noqa: N801
    """The expression, kept from driving an index: SQLite's unary ``+``.

    SQLite knows nothing of a temporary table's size and would rather walk
    (type, ts) over every candidate type than look the candidates' events up
    by (profile_id, ts); this makes the lookup its only choice. Elsewhere
    (PostgreSQL analyses the table) the expression is left as it is.
    """

    inherit_cache = True
    name = "unindexed"

    def __init__(self, expr: Any) -> None:
        self.type = expr.type
        super().__init__(expr)


@compiles(unindexed, "sqlite")
def _sqlite_unindexed(element, compiler, **kw):
    (expr,) = list(element.clauses)
    return f"+{compiler.process(expr, **kw)}"


@compiles(unindexed)
def _default_unindexed(element, compiler, **kw):
    (expr,) = list(element.clauses)
    return compiler.process(expr, **kw)


class candidate_ids(FunctionElement):  # noqa: N801
    """``column`` is one of the ids in table ``ids`` (a second, redundant
    test beside the join, for PostgreSQL's sake).

    On PostgreSQL ``= ANY(ARRAY(SELECT id ...))``: an array built once whose
    size the planner cannot guess small or large, so it probes the
    (profile_id, ts) index instead of hashing a scan of all candidate event
    types. Elsewhere nothing (TRUE): the join already says it.
    """

    type = sa.Boolean()
    inherit_cache = True
    name = "candidate_ids"

    def __init__(self, column: Any, ids: Any) -> None:
        self.ids = ids
        super().__init__(column)


@compiles(candidate_ids, "postgresql")
def _pg_candidates(element, compiler, **kw):
    (column,) = list(element.clauses)
    ids = element.ids
    return f"{compiler.process(column, **kw)} = ANY(ARRAY(SELECT {ids.name}.id FROM {ids.name}))"


@compiles(candidate_ids)
def _default_candidates(element, compiler, **kw):
    return "1"


class _Extreme(FunctionElement):
    """The smallest (``least_known``) or largest (``greatest_known``) of the
    arguments that are not NULL; NULL when all are."""

    inherit_cache = True

    def __init__(self, *columns: Any, type_: Any = None) -> None:
        super().__init__(*columns)
        if type_ is not None:
            self.type = type_


class least_known(_Extreme):  # noqa: N801
    name = "least_known"
    inherit_cache = True


class greatest_known(_Extreme):  # noqa: N801
    name = "greatest_known"
    inherit_cache = True


def _extreme(element, compiler, function: str, **kw) -> str:
    # The scalar function is NULL as soon as one argument is: each argument
    # falls back to the first known one, so only "all unknown" gives NULL.
    args = [compiler.process(c, **kw) for c in element.clauses]
    known = f"coalesce({', '.join(args)})"
    return f"{function}({', '.join(f'coalesce({a}, {known})' for a in args)})"


@compiles(least_known, "postgresql")
def _pg_least(element, compiler, **kw):
    return f"LEAST({', '.join(compiler.process(c, **kw) for c in element.clauses)})"


@compiles(greatest_known, "postgresql")
def _pg_greatest(element, compiler, **kw):
    return f"GREATEST({', '.join(compiler.process(c, **kw) for c in element.clauses)})"


@compiles(least_known, "sqlite")
def _sqlite_least(element, compiler, **kw):
    return _extreme(element, compiler, "min", **kw)


@compiles(greatest_known, "sqlite")
def _sqlite_greatest(element, compiler, **kw):
    return _extreme(element, compiler, "max", **kw)


@compiles(least_known)
def _default_least(element, compiler, **kw):
    return _extreme(element, compiler, "LEAST", **kw)


@compiles(greatest_known)
def _default_greatest(element, compiler, **kw):
    return _extreme(element, compiler, "GREATEST", **kw)
