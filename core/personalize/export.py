"""Segment-aware blocks in an ESP's own template language, for teams that send from the ESP.

A template's segment-aware blocks are its ``{% block %}``s that test segment
membership (``{% if "cart_abandoners" in segments %}``). Exported, a block
becomes Mailchimp conditional merge tags (``*|IF:CART_ABAND|*`` ...
``*|ELSE:|*`` ... ``*|END:IF|*``) or Klaviyo template tags (``{% if
person|lookup:'segflow_cart_abandoners' %}`` ...), so the ESP shows each
person the branch segflow would. The ESP decides from profile data segflow
syncs to it: a Mailchimp merge field per segment ("Y" for members, empty
otherwise) and a Klaviyo profile property ``segflow_<segment>`` (true or
false); the export's header lists the fields it uses.

What an exported block may hold is what the ESPs can express: text and HTML,
``if`` / ``elif`` / ``else`` over segment tests and profile attributes
combined with ``and`` / ``or`` / ``not``, and profile attributes
(``profile.first_name``, ``profile.last_name``, ``profile.email``,
``profile.attributes.NAME``) with ``or "fallback"`` / ``default("fallback")``
and the ``title`` / ``upper`` / ``lower`` filters. Anything else (loops,
products, other variables) is an error naming its file and line. An ESP does
not tell a missing field from an empty one, so ``default`` is exported as
``or``. Compound tests become nested conditions (Mailchimp has no ``and`` /
``or``; Klaviyo's have no parentheses), repeating a branch where needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import nodes

from core.personalize.errors import TemplateError

if TYPE_CHECKING:
    from core.config import Settings

Esp = Literal["mailchimp", "klaviyo"]
ESPS: tuple[str, ...] = ("mailchimp", "klaviyo")
KLAVIYO_PREFIX = "segflow_"
# Mailchimp's own merge fields, and Klaviyo's own profile variables.
MAILCHIMP_BUILTIN = {"first_name": "FNAME", "last_name": "LNAME", "email": "EMAIL"}
KLAVIYO_BUILTIN = {"first_name": "first_name", "last_name": "last_name", "email": "email"}
MERGE_TAG_LENGTH = 10  # Mailchimp's limit
CASES = ("title", "upper", "lower")

# -- what a block is made of, whatever the ESP -----------------------------------


@dataclass(frozen=True)
class Field:
    kind: Literal["segment", "attribute"]
    name: str


@dataclass(frozen=True)
class Var:
    field: Field
    fallback: str | None = None
    case: str | None = None


@dataclass(frozen=True)
class Test:
    op: Literal["field", "not", "and", "or"]
    field: Field | None = None
    args: tuple[Test, ...] = ()


@dataclass(frozen=True)
class Cond:
    test: Test
    then: tuple[Any, ...]
    otherwise: tuple[Any, ...]


Part = str | Var | Cond


@dataclass(frozen=True)
class Block:
    name: str
    file: str
    line: int
    parts: tuple[Part, ...]


class _Reader:
    """Turns a block's Jinja nodes into parts, refusing what no ESP can express."""

    def __init__(self, file: str, esp: str) -> None:
        self.file, self.esp = file, esp

    def refuse(self, node: nodes.Node, what: str) -> TemplateError:
        return TemplateError(
            f"{self.file}:{node.lineno}: {what} cannot be exported to {self.esp}: a "
            "segment-aware block holds text, if/elif/else over segments and profile "
            "attributes, and profile attributes"
        )

    def body(self, items: Sequence[nodes.Node]) -> tuple[Part, ...]:
        out: list[Part] = []
        for node in items:
            if isinstance(node, nodes.Output):
                for child in node.nodes:
                    if isinstance(child, nodes.TemplateData):
                        out.append(child.data)
                    elif isinstance(child, nodes.Const) and isinstance(child.value, str):
                        out.append(child.value)
                    else:
                        out.append(self.var(child))
            elif isinstance(node, nodes.If):
                out.append(self.cond(node))
            elif isinstance(node, nodes.Block):
                out.extend(self.body(node.body))
            else:
                raise self.refuse(node, f"{{% {type(node).__name__.lower()} %}}")
        return tuple(out)

    def cond(self, node: nodes.If) -> Cond:
        otherwise: tuple[Part, ...] = self.body(node.else_)
        for branch in reversed(node.elif_):
            otherwise = (Cond(self.test(branch.test), self.body(branch.body), otherwise),)
        return Cond(self.test(node.test), self.body(node.body), otherwise)

    def test(self, node: nodes.Expr) -> Test:
        if isinstance(node, nodes.Not):
            return Test("not", args=(self.test(node.node),))
        if isinstance(node, nodes.And | nodes.Or):
            op: Literal["and", "or"] = "and" if isinstance(node, nodes.And) else "or"
            return Test(op, args=(self.test(node.left), self.test(node.right)))
        if (
            isinstance(node, nodes.Compare)
            and isinstance(node.expr, nodes.Const)
            and isinstance(node.expr.value, str)
            and len(node.ops) == 1
            and node.ops[0].op in ("in", "notin")
            and isinstance(node.ops[0].expr, nodes.Name)
            and node.ops[0].expr.name == "segments"
        ):
            test = Test("field", Field("segment", node.expr.value))
            return test if node.ops[0].op == "in" else Test("not", args=(test,))
        found = self.attribute(node)
        if found is None:
            raise self.refuse(node, "this test")
        return Test("field", found)

    def var(self, node: nodes.Expr) -> Var:
        case = None
        if isinstance(node, nodes.Filter) and node.name in CASES and not node.args:
            case, node = node.name, node.node
        fallback = None
        if isinstance(node, nodes.Or) and _text(node.right) is not None:
            fallback, node = _text(node.right), node.left
        elif (
            isinstance(node, nodes.Filter)
            and node.name in ("default", "d")
            and node.args
            and _text(node.args[0]) is not None
        ):
            fallback, node = _text(node.args[0]), node.node
        if case is None and isinstance(node, nodes.Filter) and node.name in CASES:
            case, node = node.name, node.node
        found = self.attribute(node)
        if found is None:
            raise self.refuse(node, "this value")
        return Var(found, fallback, case)

    @staticmethod
    def attribute(node: nodes.Expr) -> Field | None:
        """``profile.first_name`` / ``.last_name`` / ``.email`` /
        ``profile.attributes.NAME`` / ``profile.attributes["NAME"]``."""
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            key = node.attr if isinstance(node, nodes.Getattr) else _text(node.arg)
            inner = node.node
            if key is None:
                return None
            if isinstance(inner, nodes.Name) and inner.name == "profile":
                return Field("attribute", key) if key in MAILCHIMP_BUILTIN else None
            if (
                isinstance(inner, nodes.Getattr)
                and inner.attr == "attributes"
                and isinstance(inner.node, nodes.Name)
                and inner.node.name == "profile"
            ):
                return Field("attribute", key)
        return None


def _text(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


# -- writing a block in an ESP's language ----------------------------------------------


@dataclass
class Writer:
    """One ESP's syntax, and the fields a block used."""

    esp: str
    names: dict[Field, str] = field(default_factory=dict)

    def parts(self, parts: Sequence[Part]) -> str:
        return "".join(self.part(p) for p in parts)

    def part(self, part: Part) -> str:
        if isinstance(part, str):
            return part
        if isinstance(part, Var):
            return self.var(part)
        return self.chain(part)

    def chain(self, cond: Cond) -> str:
        """An if / elif / else chain, written as one when its tests are simple
        enough for the ESP, else as nested conditions."""
        branches: list[tuple[str, str]] = []
        current: Cond | None = cond
        rest = ""
        while current is not None:
            openers = self.openers(current.test, first=not branches)
            if openers is None:
                then, otherwise = self.parts(current.then), self.parts(current.otherwise)
                rest = self.nested(current.test, then, otherwise)
                break
            then = self.parts(current.then)
            branches += [(opener, then) for opener in openers]
            tail = current.otherwise
            if len(tail) == 1 and isinstance(tail[0], Cond):
                current = tail[0]
            else:
                rest, current = self.parts(tail), None
        if not branches:
            return rest
        if self.esp == "mailchimp":
            out = [branches[0][0] + branches[0][1]]
            out += [f"*|ELSEIF:{o.removeprefix('*|IF:')}{t}" for o, t in branches[1:]]
            if rest:
                out.append(f"*|ELSE:|*{rest}")
            return "".join(out) + "*|END:IF|*"
        out = [branches[0][0] + branches[0][1]]
        out += [f"{{% elif {o.removeprefix('{% if ')}{t}" for o, t in branches[1:]]
        if rest:
            out.append(f"{{% else %}}{rest}")
        return "".join(out) + "{% endif %}"

    def openers(self, test: Test, first: bool) -> list[str] | None:
        """The tags opening branches on ``test`` (several, with the same body,
        for a Mailchimp ``or``), or None when the ESP needs nesting."""
        if self.esp == "mailchimp":
            if test.op == "field":
                assert test.field is not None
                return [f"*|IF:{self.name(test.field)}|*"]
            if first and test.op == "not" and test.args[0].op == "field":
                assert test.args[0].field is not None
                return [f"*|IFNOT:{self.name(test.args[0].field)}|*"]
            if test.op == "or":
                left = self.openers(test.args[0], first)
                right = self.openers(test.args[1], False)
                return None if left is None or right is None else left + right
            return None
        expression = self.klaviyo(test, 0)
        return None if expression is None else [f"{{% if {expression} %}}"]

    def klaviyo(self, test: Test, level: int) -> str | None:
        """``test`` as a Klaviyo (Django) condition, which has no parentheses:
        None unless the precedence or < and < not already groups it right."""
        if test.op == "field":
            assert test.field is not None
            return self.name(test.field)
        if test.op == "not":
            inner = test.args[0]
            return None if inner.op != "field" else f"not {self.klaviyo(inner, 3)}"
        mine = 1 if test.op == "or" else 2
        if mine < level:
            return None
        parts = [self.klaviyo(arg, mine) for arg in test.args]
        if any(p is None for p in parts):
            return None
        return f" {test.op} ".join(p for p in parts if p is not None)

    def nested(self, test: Test, then: str, otherwise: str) -> str:
        if test.op == "not":
            inner = test.args[0]
            if inner.op == "field" and then:
                assert inner.field is not None
                return self.condition(inner.field, then, otherwise, negated=True)
            return self.nested(inner, otherwise, then)
        if test.op == "and":
            return self.nested(test.args[0], self.nested(test.args[1], then, otherwise),
                               otherwise)  # fmt: skip
        if test.op == "or":
            return self.nested(test.args[0], then, self.nested(test.args[1], then, otherwise))
        assert test.field is not None
        return self.condition(test.field, then, otherwise)

    def condition(self, field_: Field, then: str, otherwise: str, negated: bool = False) -> str:
        name = self.name(field_)
        if not then:
            then, otherwise, negated = otherwise, "", not negated
            if not then:
                return ""
        if self.esp == "mailchimp":
            rest = f"*|ELSE:|*{otherwise}" if otherwise else ""
            return f"*|{'IFNOT' if negated else 'IF'}:{name}|*{then}{rest}*|END:IF|*"
        rest = f"{{% else %}}{otherwise}" if otherwise else ""
        return f"{{% if {'not ' if negated else ''}{name} %}}{then}{rest}{{% endif %}}"

    def var(self, var: Var) -> str:
        name = self.name(var.field)
        if self.esp == "mailchimp":
            shown = f"*|{var.case.upper()}:{name}|*" if var.case else f"*|{name}|*"
            if var.fallback is None:
                return shown
            return f"*|IF:{name}|*{shown}*|ELSE:|*{var.fallback}*|END:IF|*"
        filters = f"|{var.case}" if var.case else ""
        if var.fallback is not None:
            filters += f"|default:{_klaviyo_string(var.fallback)}"
        return f"{{{{ {name}{filters} }}}}"

    def name(self, field_: Field) -> str:
        found = self.names.get(field_)
        if found is None:
            found = self.names[field_] = self._new_name(field_)
        return found

    def _new_name(self, field_: Field) -> str:
        if self.esp == "klaviyo":
            if field_.kind == "attribute" and field_.name in KLAVIYO_BUILTIN:
                return KLAVIYO_BUILTIN[field_.name]
            key = field_.name if field_.kind == "attribute" else KLAVIYO_PREFIX + field_.name
            return f"person|lookup:{_klaviyo_string(key)}"
        if field_.kind == "attribute" and field_.name in MAILCHIMP_BUILTIN:
            return MAILCHIMP_BUILTIN[field_.name]
        base = re.sub(r"[^A-Z0-9]+", "_", field_.name.upper()).strip("_") or "FIELD"
        base = base[:MERGE_TAG_LENGTH].rstrip("_")
        taken = set(self.names.values()) | set(MAILCHIMP_BUILTIN.values())
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            suffix = str(n)
            candidate = base[: MERGE_TAG_LENGTH - len(suffix)] + suffix
        return candidate

    def legend(self) -> list[str]:
        lines = []
        for field_, name in sorted(self.names.items(), key=lambda kv: kv[1]):
            if self.esp == "klaviyo":
                name = name.removeprefix("person|lookup:").strip("'\"")
            if field_.kind == "segment":
                value = (
                    '"Y" for members of segment {}, empty otherwise'
                    if self.esp == "mailchimp"
                    else "true for members of segment {}, false otherwise"
                )
                lines.append(f"  {name}: {value.format(field_.name)}")
            else:
                lines.append(f"  {name}: the profile attribute {field_.name}")
        return lines


def _klaviyo_string(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise TemplateError(f"{text!r}: a Klaviyo string cannot hold both kinds of quote")


# -- the export ------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    template: str
    version: str
    esp: str
    blocks: tuple[tuple[Block, str], ...]  # each block and its ESP text
    fields: dict[Field, str]  # what the ESP must hold per person, and its name there

    @property
    def text(self) -> str:
        head = [
            f"<!-- segflow: the segment-aware blocks of {self.template} (version "
            f"{self.version}) for {self.esp.capitalize()}.",
            "Fields each person needs in the ESP (segflow's sync keeps them current):",
            *_legend(self.esp, self.fields),
            "-->",
        ]
        out = ["\n".join(head)]
        for block, text in self.blocks:
            out.append(f"<!-- block {block.name} ({block.file}:{block.line}) -->\n{text.strip()}")
        return "\n\n".join(out) + "\n"


def _legend(esp: str, fields: dict[Field, str]) -> list[str]:
    writer = Writer(esp, dict(fields))
    return writer.legend()


def segment_blocks(template: nodes.Template, file: str, esp: str) -> list[Block]:
    """The blocks of a parsed template that test segment membership, in order."""
    found = []
    for node in template.find_all(nodes.Block):
        tests = [
            n
            for n in node.find_all(nodes.Compare)
            if n.ops and isinstance(n.ops[0].expr, nodes.Name) and n.ops[0].expr.name == "segments"
        ]
        if not tests:
            continue
        reader = _Reader(file, esp)
        found.append(Block(node.name, file, node.lineno, reader.body(node.body)))
    return found


def export_template(
    name: str, to: str, *, settings: Settings | None = None, block: str | None = None
) -> Export:
    """The segment-aware blocks of template NAME (or only ``block``) for ESP ``to``.

    TemplateError when the template has none, or one holds what the ESP cannot express.
    """
    from core.personalize.render import templates_for

    if to not in ESPS:
        raise TemplateError(f"cannot export to {to!r}: choose one of {', '.join(ESPS)}")
    if settings is None:
        from core.config import load_settings

        settings = load_settings()
    templates = templates_for(settings)
    compiled = templates.get(name)
    source, _, _ = templates.loader.get_source(templates.html_env, compiled.html.name)
    try:
        parsed = templates.html_env.parse(source)
    except Exception as exc:
        raise templates.error(exc, compiled.html_file) from None
    blocks = segment_blocks(parsed, compiled.html_file, to)
    if block is not None:
        blocks = [b for b in blocks if b.name == block]
        if not blocks:
            raise TemplateError(f"{compiled.html_file}: no segment-aware block named {block!r}")
    if not blocks:
        raise TemplateError(
            f"{compiled.html_file}: no segment-aware block (a {{% block %}} testing "
            '"name" in segments)'
        )
    writer = Writer(to)
    written = tuple((b, writer.parts(b.parts)) for b in blocks)
    return Export(compiled.name, compiled.version, to, written, dict(writer.names))
