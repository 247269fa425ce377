"""Turn flat rows (CSV and the like) into canonical event dicts.

A mapping says which column feeds which field, with an optional cast
(``CustomerID=user_id:int``), constants (``type=purchase``), computed fields
(``value = abs(Quantity * UnitPrice)``) and rules (``InvoiceNo`` starting with
``C`` sets ``type=refund``). Columns the mapping does not name go to
``properties`` under their own name, so nothing in the file is lost; columns
already named like event fields (``user_id``, ``ts``...) need no mapping.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core.ingestion.schema import Event
from core.types import ReadOptions

# Fields a column can feed directly; properties are reached as properties.NAME.
EVENT_FIELDS = frozenset(set(Event.model_fields) - {"properties", "traits"})


class MappingError(ValueError):
    """The mapping itself is wrong (a usage error, not a bad input line).

    ``at`` is where in the mapping (``also[1].set``), so the message can name
    the mapping file's line (``located``).
    """

    def __init__(self, message: str, at: str | None = None) -> None:
        super().__init__(message)
        self.at = at

    def located(self, mapping_file: str | None) -> MappingError:
        """This error naming ``mapping_file`` and the line of ``at`` in it."""
        if not mapping_file:
            return self
        line = None
        try:
            import yaml

            from core.automation.language import line_of

            with open(mapping_file) as fh:
                line = line_of(yaml.compose(fh, Loader=yaml.SafeLoader), self.at)
        except (OSError, yaml.YAMLError):
            pass
        where = f"{mapping_file}:{line}" if line else mapping_file
        return MappingError(f"{where}: {self}", self.at)


def _to_int(text: str) -> int:
    # IDs exported from spreadsheets often arrive as floats: "17850.0".
    f = float(text)
    if not f.is_integer():
        raise ValueError
    return int(f)


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "y", "t"}:
        return True
    if low in {"0", "false", "no", "n", "f"}:
        return False
    raise ValueError


CASTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "str": (str, "text"),
    "int": (_to_int, "an integer"),
    "float": (float, "a number"),
    "bool": (_to_bool, "true/false"),
}

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_FUNCS = {"abs": abs, "round": round, "min": min, "max": max}


def compile_expression(text: str, field_name: str) -> Callable[[dict[str, str]], float]:
    """Arithmetic over numeric columns; nothing else is allowed, so it is safe."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise MappingError(
            f"computed field '{field_name}': bad expression {text!r}: {exc.msg}"
        ) from None

    def build(node: ast.AST) -> Callable[[dict[str, str]], float]:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            value = float(node.value)
            return lambda row: value
        if isinstance(node, ast.Name):
            col = node.id

            def column(row: dict[str, str]) -> float:
                raw = row.get(col)
                if raw is None or raw == "":
                    raise ValueError(f"column '{col}' is empty (needed for {field_name})")
                try:
                    return float(raw)
                except ValueError:
                    raise ValueError(
                        f"column '{col}': {raw!r} is not a number (needed for {field_name})"
                    ) from None

            return column
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op, left, right = _BINOPS[type(node.op)], build(node.left), build(node.right)
            return lambda row: op(left(row), right(row))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = build(node.operand)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return lambda row: sign * inner(row)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            fn, args = _FUNCS[node.func.id], [build(a) for a in node.args]
            return lambda row: fn(*(a(row) for a in args))
        raise MappingError(
            f"computed field '{field_name}': only numbers, columns, + - * / and "
            f"abs/round/min/max are allowed, not {ast.unparse(node)!r}"
        )

    return build(tree)


Condition = Callable[[str | None], bool]


def _condition(column: str, spec: Any) -> Condition:
    if not isinstance(spec, dict):
        expected = str(spec)
        return lambda v: v == expected
    checks: list[Condition] = []
    for op, arg in spec.items():
        if op == "equals":
            checks.append(lambda v, a=str(arg): v == a)
        elif op == "starts_with":
            checks.append(lambda v, a=str(arg): v is not None and v.startswith(a))
        elif op == "in":
            allowed = {str(a) for a in arg}
            checks.append(lambda v, a=allowed: v in a)
        elif op == "matches":
            rx = re.compile(str(arg))
            checks.append(lambda v, r=rx: v is not None and r.search(v) is not None)
        elif op == "empty":
            checks.append(lambda v, a=bool(arg): (v in (None, "")) == a)
        else:
            raise MappingError(
                f"rule on column '{column}': unknown test {op!r} "
                "(use equals, starts_with, in, matches, empty)"
            )
    return lambda v: all(c(v) for c in checks)


@dataclass(frozen=True)
class Target:
    path: tuple[str, ...]  # ("user_id",) or ("properties", "country")
    cast: Callable[[str], Any]
    cast_name: str
    spec: str


def parse_target(
    column: str, spec: str, fields: frozenset[str] = EVENT_FIELDS, properties: bool = True
) -> Target:
    """``spec`` (``FIELD[:cast]``) as the target of ``column``: one of ``fields``
    or, when ``properties``, ``properties.NAME``."""
    name, _, cast = spec.partition(":")
    cast = cast or "str"
    if cast not in CASTS:
        raise MappingError(f"column '{column}': unknown cast ':{cast}' (use {', '.join(CASTS)})")
    path = tuple(name.split("."))
    if properties and path[0] == "properties" and len(path) == 2 and path[1]:
        pass
    elif len(path) != 1 or path[0] not in fields:
        extra = " or properties.NAME" if properties else ""
        raise MappingError(
            f"column '{column}': unknown field {name!r} "
            f"(use one of {', '.join(sorted(fields))}{extra})"
        )
    fn, desc = CASTS[cast]
    return Target(path, fn, desc, spec)


def _set(record: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    if len(path) == 1:
        record[path[0]] = value
    else:
        record.setdefault("properties", {})[path[1]] = value


@contextmanager
def _at(at: str) -> Iterator[None]:
    """Mapping errors inside name ``at`` (where in the mapping), unless they do already."""
    try:
        yield
    except MappingError as exc:
        if exc.at is None:
            exc.at = at
        raise


# What an ``also`` event takes from its row's event before its own ``set``.
INHERITED = ("user_id", "anonymous_id", "email", "ts", "session_id")


@dataclass(frozen=True)
class Extra:
    """One more event a row yields (``also``): when its tests hold, the row
    event's person and time with its own fields set and computed."""

    conditions: list[tuple[str, Condition]]
    sets: list[tuple[tuple[str, ...], Any]]
    computed: list[tuple[tuple[str, ...], Callable[[dict[str, str]], float]]]


class RowMapper:
    """Compiled once per import; ``map(row)`` gives an event dict or raises ValueError
    (``events(row, number)``: the row's events, ``also`` ones included)."""

    def __init__(self, options: ReadOptions) -> None:
        try:
            self._compile(options)
        except MappingError as exc:
            raise exc.located(options.mapping_file) from None

    def _compile(self, options: ReadOptions) -> None:
        # Events keep unmapped columns as properties; other records (products)
        # have only their own fields.
        self.properties = options.record_fields is None
        self.fields = EVENT_FIELDS if self.properties else frozenset(options.record_fields or ())
        self.targets = {}
        for col, spec in options.columns.items():
            with _at(f"columns.{col}"):
                self.targets[col] = self.target(col, spec)
        self.constants = []
        for name, value in options.constants.items():
            with _at(f"constants.{name}"):
                target = self.target(f"--set {name}", name)
            self.constants.append((target.path, value))
        self.computed = []
        for name, expr in options.computed.items():
            with _at(f"computed.{name}"):
                path = self.target(f"--compute {name}", name).path
                self.computed.append((path, compile_expression(expr, name)))
        self.rules = []
        for i, rule in enumerate(options.rules, 1):
            if not isinstance(rule, dict) or set(rule) != {"when", "set"}:
                raise MappingError(f"rule {i}: needs exactly 'when' and 'set'", f"rules[{i - 1}]")
            conds = [(col, _condition(col, spec)) for col, spec in rule["when"].items()]
            sets = [(self.target(f"rule {i}", k).path, v) for k, v in rule["set"].items()]
            self.rules.append((conds, sets))
        self.extras = [self._extra(i, spec) for i, spec in enumerate(options.also)]
        self.row_id = self._row_id(options.row_id)

    def _extra(self, i: int, spec: Any) -> Extra:
        at = f"also[{i}]"
        if (
            not isinstance(spec, dict)
            or "set" not in spec
            or set(spec) - {"when", "set", "computed"}
        ):
            raise MappingError(f"{at}: an extra event is {{when (optional), set, computed}}", at)
        parts: dict[str, Any] = {}
        for key in ("when", "set", "computed"):
            value = spec.get(key, {})
            if not isinstance(value, dict):
                raise MappingError(
                    f"{at}.{key}: expected a mapping of names to values", f"{at}.{key}"
                )
            parts[key] = value
        if "type" not in parts["set"]:
            raise MappingError(f"{at}.set: needs the event's type", f"{at}.set")

        def target(name: str, key: str) -> tuple[str, ...]:
            try:
                return self.target(f"{at}.{key}", name).path
            except MappingError as exc:
                raise MappingError(str(exc), f"{at}.{key}.{name}") from None

        conditions, computed = [], []
        for col, test in parts["when"].items():
            with _at(f"{at}.when.{col}"):
                conditions.append((col, _condition(col, test)))
        for name, expr in parts["computed"].items():
            path = target(name, "computed")
            with _at(f"{at}.computed.{name}"):
                computed.append((path, compile_expression(str(expr), name)))
        sets = [(target(name, "set"), value) for name, value in parts["set"].items()]
        return Extra(conditions, sets, computed)

    def _row_id(self, spec: dict[str, str] | None) -> tuple[tuple[str, ...], str] | None:
        if spec is None:
            return None
        if set(spec) - {"field", "prefix"} or "field" not in spec:
            raise MappingError("row_id: expected {field: NAME, prefix: TEXT (optional)}", "row_id")
        try:
            path = self.target("row_id", str(spec["field"])).path
        except MappingError as exc:
            raise MappingError(str(exc), "row_id.field") from None
        return path, str(spec.get("prefix", ""))

    def target(self, column: str, spec: str) -> Target:
        return parse_target(column, spec, self.fields, self.properties)

    def bind_header(self, header: list[str], where: str) -> None:
        """Columns named like event fields map to them unless mapped otherwise; a
        mapping that names a column the file lacks is a usage error, before any row."""
        claimed = {t.path for t in self.targets.values()}
        for col in header:
            if col in self.fields and col not in self.targets and (col,) not in claimed:
                self.targets[col] = self.target(col, col)
        named = set(self.targets) | {c for conds, _ in self.rules for c, _ in conds}
        named |= {c for extra in self.extras for c, _ in extra.conditions}
        missing = sorted(named - set(header))
        if missing:
            raise MappingError(
                f"{where}: column(s) {', '.join(missing)} not in the header ({', '.join(header)})"
            )

    def map(self, row: dict[str, str | None]) -> dict[str, Any]:
        record: dict[str, Any] = {"properties": {}} if self.properties else {}
        for col, raw in row.items():
            if raw is None or raw == "" or col is None:
                continue
            target = self.targets.get(col)
            if target is None:
                if self.properties:
                    record["properties"][col] = raw
                continue
            try:
                value = target.cast(raw.strip())
            except ValueError:
                raise ValueError(
                    f"column '{col}' ({target.spec}): {raw!r} is not {target.cast_name}"
                ) from None
            _set(record, target.path, value)
        for path, value in self.computed_values(row):
            _set(record, path, value)
        for conds, sets in self.rules:
            if all(test(row.get(col)) for col, test in conds):
                for path, value in sets:
                    _set(record, path, value)
        for path, value in self.constants:
            if len(path) == 1:
                record.setdefault(path[0], value)
            else:
                record.setdefault("properties", {}).setdefault(path[1], value)
        return record

    def events(self, row: dict[str, str | None], number: int) -> list[dict[str, Any]]:
        """The row's event, then its ``also`` events whose tests hold; ``number``
        is the data row's (1 = the first after the header), for ``row_id``."""
        record = self.map(row)
        if self.row_id is not None:
            path, prefix = self.row_id
            _set(record, path, f"{prefix}{number}")
        out = [record]
        for extra in self.extras:
            if not all(test(row.get(col)) for col, test in extra.conditions):
                continue
            event: dict[str, Any] = {k: record[k] for k in INHERITED if k in record}
            event["properties"] = {}
            for path, value in extra.sets:
                _set(event, path, value)
            for path, fn in extra.computed:
                try:
                    _set(event, path, round(fn(row), 6))  # type: ignore[arg-type]
                except ZeroDivisionError:
                    raise ValueError(f"division by zero computing {'.'.join(path)}") from None
            out.append(event)
        return out

    def computed_values(self, row: dict[str, str | None]):
        for path, fn in self.computed:
            try:
                yield path, round(fn(row), 6)
            except ZeroDivisionError:
                raise ValueError(f"division by zero computing {'.'.join(path)}") from None
