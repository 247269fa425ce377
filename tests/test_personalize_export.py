"""ESP-native export of segment-aware blocks, round-tripped: the exported
conditions, evaluated by small Mailchimp and Klaviyo interpreters here, show
each person what segflow's own render shows them."""

from __future__ import annotations

import html
import itertools
import re
from datetime import UTC, datetime

import pytest

from core.config import Settings
from core.personalize.errors import TemplateError
from core.personalize.export import Field, export_template
from core.personalize.templates import TEMPLATES_DIR, TemplateSet

TEMPLATES = sorted(p.name.removesuffix(".html.j2") for p in TEMPLATES_DIR.glob("*.html.j2"))

# -- Mailchimp: *|IF:X|* *|IFNOT:X|* *|ELSEIF:X|* *|ELSE:|* *|END:IF|* *|X|* *|TITLE:X|* --------

MC_TOKEN = re.compile(
    r"\*\|(?:(IF|IFNOT|ELSEIF):([A-Z0-9_]+)|(ELSE):|(END):IF|(?:(TITLE|UPPER|LOWER):)?([A-Z0-9_]+))\|\*"
)


def tokenize(pattern: re.Pattern, text: str) -> list:
    """Text between the tags, and each tag's groups, in order."""
    tokens: list = []
    pos = 0
    for m in pattern.finditer(text):
        tokens.append(text[pos : m.start()])
        tokens.append(m.groups())
        pos = m.end()
    tokens.append(text[pos:])
    return tokens


def mailchimp(text: str, merge: dict[str, str]) -> str:
    tokens = tokenize(MC_TOKEN, text)
    out, rest = _mc_block(tokens, 0, merge)
    assert rest == len(tokens), "unbalanced *|IF|*"
    return out


def _mc_block(tokens: list, i: int, merge: dict[str, str]) -> tuple[str, int]:
    out = []
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, str):
            out.append(tok)
            i += 1
            continue
        kind, name, else_, end, case, var = tok
        if kind in ("ELSEIF",) or else_ or end:
            return "".join(out), i
        if kind in ("IF", "IFNOT"):
            branches = []  # (holds, text)
            holds = bool(merge.get(name)) == (kind == "IF")
            body, i = _mc_block(tokens, i + 1, merge)
            branches.append((holds, body))
            while True:
                kind, name, else_, end, *_ = tokens[i]
                if kind == "ELSEIF":
                    body, i = _mc_block(tokens, i + 1, merge)
                    branches.append((bool(merge.get(name)), body))
                elif else_:
                    body, i = _mc_block(tokens, i + 1, merge)
                    branches.append((True, body))
                else:
                    assert end
                    i += 1
                    break
            out.append(next((b for h, b in branches if h), ""))
            continue
        value = html.escape(merge.get(var, ""))
        out.append(
            {"TITLE": str.title, "UPPER": str.upper, "LOWER": str.lower}.get(case, str)(value)
        )
        i += 1
    return "".join(out), i


# -- Klaviyo: {% if a and not b or c %} {% elif %} {% else %} {% endif %} {{ x|default:'y' }} ---

KL_TOKEN = re.compile(r"{%\s*(if|elif|else|endif)\s*(.*?)\s*%}|{{\s*(.*?)\s*}}")
OPERAND = re.compile(r"person\|lookup:'([^']*)'|([a-z_]+)")


def klaviyo(text: str, person: dict) -> str:
    tokens = tokenize(KL_TOKEN, text)
    out, rest = _kl_block(tokens, 0, person)
    assert rest == len(tokens), "unbalanced {% if %}"
    return out


def _kl_value(operand: str, person: dict):
    found = OPERAND.fullmatch(operand)
    assert found, operand
    return person.get(found.group(1) or found.group(2))


def _kl_test(expression: str, person: dict) -> bool:
    # Django's precedence: or < and < not; no parentheses
    return any(
        all(
            (not _kl_value(atom[4:], person))
            if atom.startswith("not ")
            else bool(_kl_value(atom, person))
            for atom in conjunct.split(" and ")
        )
        for conjunct in expression.split(" or ")
    )


def _kl_block(tokens: list, i: int, person: dict) -> tuple[str, int]:
    out = []
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, str):
            out.append(tok)
            i += 1
            continue
        tag, expression, var = tok
        if tag in ("elif", "else", "endif"):
            return "".join(out), i
        if tag == "if":
            branches = []
            body, i = _kl_block(tokens, i + 1, person)
            branches.append((_kl_test(expression, person), body))
            while True:
                tag, expression, _ = tokens[i]
                if tag == "endif":
                    i += 1
                    break
                body, i = _kl_block(tokens, i + 1, person)
                branches.append((True if tag == "else" else _kl_test(expression, person), body))
            out.append(next((b for h, b in branches if h), ""))
            continue
        operand, *filters = re.split(r"\|(?!lookup)", var)
        value = _kl_value(operand, person)
        for f in filters:
            name, _, arg = f.partition(":")
            if name == "default":
                value = value or arg.strip("'\"")
            else:
                value = getattr(str, {"title": "title", "upper": "upper", "lower": "lower"}[name])(
                    value or ""
                )
        out.append(html.escape(value or ""))
        i += 1
    return "".join(out), i


# -- the round trip ------------------------------------------------------------------------------


def normal(text: str) -> str:
    return " ".join(html.unescape(text).split())


def segflow_block(templates: TemplateSet, name: str, block: str, segments, first_name) -> str:
    template = templates.get(name).html
    ctx = {
        "profile": {"first_name": first_name, "last_name": None, "attributes": {}},
        "segments": dict.fromkeys(segments, datetime(2026, 5, 1, tzinfo=UTC)),
        "site_url": "https://shop.example.com",
        "company": "Shop",
        "locale": "en_US",
        "timezone": "UTC",
    }
    return "".join(template.blocks[block](template.new_context(ctx)))


@pytest.mark.parametrize("name", TEMPLATES)
def test_exported_blocks_show_each_person_what_segflow_shows(name):
    settings = Settings()
    templates = TemplateSet([])
    chimp = export_template(name, "mailchimp", settings=settings)
    klav = export_template(name, "klaviyo", settings=settings)
    assert [b.name for b, _ in chimp.blocks] == [b.name for b, _ in klav.blocks] != []
    segments = sorted(f.name for f in chimp.fields if f.kind == "segment")
    assert segments, "a segment-aware block tests segments"
    checked = 0
    for (block, chimp_text), (_, klav_text) in zip(chimp.blocks, klav.blocks, strict=True):
        for n in range(len(segments) + 1):
            for member_of in itertools.combinations(segments, n):
                for first_name in ("Ada", None):
                    ours = normal(segflow_block(templates, name, block.name, member_of, first_name))
                    merge = {chimp.fields[Field("segment", s)]: "Y" for s in member_of}
                    merge["FNAME"] = first_name or ""
                    assert normal(mailchimp(chimp_text, merge)) == ours, (block.name, member_of)
                    person = {f"segflow_{s}": s in member_of for s in segments}
                    person["first_name"] = first_name or ""
                    assert normal(klaviyo(klav_text, person)) == ours, (block.name, member_of)
                    checked += 1
    assert checked >= 8


def test_what_an_esp_cannot_express_is_refused_with_its_line(tmp_path):
    def template(body: str) -> None:
        (tmp_path / "offer.html.j2").write_text("{# subject: x #}\n{% block hero %}\n" + body)
        (tmp_path / "offer.txt.j2").write_text("x")

    settings = Settings(email={"templates": [tmp_path]})
    template(
        '{% if "vip" in segments %}\n{% for p in recommendations %}{% endfor %}{% endif %}'
        "{% endblock %}"
    )
    with pytest.raises(
        TemplateError, match=r"offer\.html\.j2:4: \{% for %\} cannot be exported to"
    ):
        export_template("offer", "mailchimp", settings=settings)
    template('{% if "vip" in segments %}\n\n{{ cart.total }}{% endif %}{% endblock %}')
    with pytest.raises(TemplateError, match=r"offer\.html\.j2:5: this value cannot be exported"):
        export_template("offer", "klaviyo", settings=settings)
    template('{% if "vip" in segments or cart %}x{% endif %}{% endblock %}')
    with pytest.raises(TemplateError, match=r"offer\.html\.j2:3: this test cannot be exported"):
        export_template("offer", "klaviyo", settings=settings)
    template("no segments here{% endblock %}")
    with pytest.raises(TemplateError, match="no segment-aware block"):
        export_template("offer", "klaviyo", settings=settings)
    # attributes, not, and: nested where Mailchimp has no operator for it
    template(
        '{% if "vip" in segments and "lapsed" not in segments %}'
        "Hi {{ profile.attributes.city|upper }}"
        "{% elif not profile.last_name %}{{ profile.email }}{% endif %}{% endblock %}"
    )
    chimp = export_template("offer", "mailchimp", settings=settings)
    ((_, text),) = chimp.blocks
    assert text.strip() == (
        "*|IF:VIP|**|IFNOT:LAPSED|*Hi *|UPPER:CITY|**|ELSE:|**|IFNOT:LNAME|**|EMAIL|**|END:IF|*"
        "*|END:IF|**|ELSE:|**|IFNOT:LNAME|**|EMAIL|**|END:IF|**|END:IF|*"
    )
    assert "CITY: the profile attribute city" in chimp.text
    klav = export_template("offer", "klaviyo", settings=settings)
    assert klav.blocks[0][1].strip() == (
        "{% if person|lookup:'segflow_vip' and not person|lookup:'segflow_lapsed' %}"
        "Hi {{ person|lookup:'city'|upper }}{% elif not last_name %}{{ email }}{% endif %}"
    )
