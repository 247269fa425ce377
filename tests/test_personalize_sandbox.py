"""Email templates: the sandbox, escaping, compile-once, located errors, filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.personalize.context import Cart
from core.personalize.errors import TemplateError
from core.personalize.render import render_parts
from core.personalize.sandbox import EmailSandbox
from core.personalize.templates import TEMPLATES_DIR, TemplateSet, shown, template_set


def write(folder: Path, name: str, html: str, text: str = "text\n", front: str = "") -> None:
    (folder / f"{name}.html.j2").write_text(front or "{# subject: Hello #}\n" + html)
    (folder / f"{name}.txt.j2").write_text(text)


def context(**extra) -> dict:
    profile = {"id": 1, "first_name": "Ada", "email": "ada@example.com", "attributes": {}}
    return {
        "profile": profile,
        "segments": {"cart_abandoners": datetime(2026, 4, 30, 23, 30, tzinfo=UTC)},
        "locale": "en_US",
        "timezone": "UTC",
        "currency": "USD",
        **extra,
    }


def render(folder: Path, name: str, ctx: dict | None = None) -> tuple[str, str, str]:
    templates = TemplateSet([folder])
    return render_parts(templates, templates.get(name), ctx or context())


def test_html_is_escaped_in_every_html_template_the_text_part_and_subject_are_not(tmp_path):
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "bit.html.j2").write_text("<i>{{ profile.first_name }}</i>")
    page = '<p>{{ profile.first_name }}</p>{% include "partials/bit.html.j2" %}'
    write(
        tmp_path,
        "hello",
        page * 2,
        text="Hi {{ profile.first_name }}\n",
        front="{# subject: Hi {{ profile.first_name }} #}\n" + page * 2,
    )
    name = "<b>Tom & Jerry</b>"
    ctx = context(profile={"first_name": name})
    subject, markup, text = render(tmp_path, "hello", ctx)
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in markup and name not in markup
    assert markup.count("&lt;b&gt;Tom") == 4  # the page and the .html.j2 partial, twice
    assert text == f"Hi {name}\n"
    assert subject == f"Hi {name}"


def test_templates_compile_once_and_are_kept(tmp_path, monkeypatch):
    write(tmp_path, "hello", '{% include "partials/part.html.j2" %}{{ profile.first_name }}')
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "part.html.j2").write_text("<b>part</b>")
    compiled_sources: list[str | None] = []
    original = EmailSandbox.compile

    def counting(self, source, name=None, filename=None, *args, **kwargs):
        compiled_sources.append(name)
        return original(self, source, name, filename, *args, **kwargs)

    monkeypatch.setattr(EmailSandbox, "compile", counting)
    templates = template_set([tmp_path], {})
    first = render_parts(templates, templates.get("hello"), context())
    after_first = len(compiled_sources)
    # the page, its text part, its subject and the partial: each compiled once
    assert sorted(n for n in compiled_sources if n) == [
        "hello.html.j2",
        "hello.txt.j2",
        "partials/part.html.j2",
    ]
    again = template_set([tmp_path], {})
    assert again is templates and again.get("hello") is templates.get("hello")
    second = render_parts(again, again.get("hello"), context(profile={"first_name": "Bob"}))
    assert len(compiled_sources) == after_first  # nothing parsed or compiled again
    assert "Ada" in first[1] and "Bob" in second[1]


def test_an_undefined_name_names_the_file_line_and_variable(tmp_path):
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "greet.html.j2").write_text("line one\n{{ greeting }}\n")
    write(tmp_path, "typo", "<p>one</p>\n<p>{{ profile.frist_name }}</p>\n")
    write(tmp_path, "deep", '<p>one</p>\n{% include "partials/greet.html.j2" %}\n')
    with pytest.raises(TemplateError) as typo:
        render(tmp_path, "typo")
    file = shown(str(tmp_path / "typo.html.j2"))
    # the front matter is line 1, so the second line of markup is line 3
    assert str(typo.value).startswith(f"{file}:3: undefined key 'frist_name'")
    assert "email, first_name" in str(typo.value)  # the keys the mapping does have
    with pytest.raises(TemplateError) as deep:
        render(tmp_path, "deep")
    partial = shown(str(tmp_path / "partials" / "greet.html.j2"))
    assert str(deep.value) == f"{partial}:2: undefined variable 'greeting'"
    assert "\n" not in str(typo.value) + str(deep.value)


@pytest.mark.parametrize(
    ("expression", "refusal"),
    [
        ("{{ profile.__class__ }}", "'__class__'"),
        ("{{ cycler.__init__.__globals__ }}", "'__init__'"),
        ("{{ cycler.mro() }}", "'mro'"),
        ('{{ "{0.__class__.__mro__}".format(profile) }}', "'__class__'"),
        ('{{ "{x.__class__}".format_map({"x": profile}) }}', "'__class__'"),
        ("{% for i in range(10**9) %}{% endfor %}", "range"),
        ('{{ "x" * 10**9 }}', "too large"),
        ("{{ [1] * 10**9 }}", "too large"),
        ("{{ 10 ** 100000000 }}", "too large"),
        ('{% set _ = segments.update({"vip": 1}) %}', "'update'"),
        ("{{ segments.clear() }}", "'clear'"),
        ('{% for i in range(99999) %}{{ "x" * 99999 }}{% endfor %}', "the output passed"),
    ],
)
def test_the_sandbox_refuses_escapes_and_bombs_with_a_clear_error(tmp_path, expression, refusal):
    write(tmp_path, "evil", f"<p>ok</p>\n{expression}\n")
    ctx = context()
    with pytest.raises(TemplateError) as refused:
        render(tmp_path, "evil", ctx)
    message = str(refused.value)
    file = shown(str(tmp_path / "evil.html.j2"))
    # the output cap acts after the template's own code: no line to name
    line = "" if "output" in refusal else ":3"
    assert message.startswith(f"{file}{line}: refused by the template sandbox"), message
    assert refusal in message
    assert list(ctx["segments"]) == ["cart_abandoners"]  # nothing was changed


def test_syntax_errors_front_matter_and_missing_parts_are_located(tmp_path):
    write(tmp_path, "broken", "<p>one</p>\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"broken\.html\.j2:3: syntax error"):
        TemplateSet([tmp_path]).get("broken")
    (tmp_path / "nofront.html.j2").write_text("<p>no subject</p>")
    (tmp_path / "nofront.txt.j2").write_text("x")
    with pytest.raises(TemplateError, match=r"nofront\.html\.j2:1: no front matter"):
        TemplateSet([tmp_path]).get("nofront")
    write(tmp_path, "badkey", "x", front="{#\nsubject: Hi\nsubjekt: Hi\n#}\n")
    with pytest.raises(TemplateError, match=r"badkey\.html\.j2:3: front matter lines"):
        TemplateSet([tmp_path]).get("badkey")
    (tmp_path / "lonely.html.j2").write_text("{# subject: Hi #}")
    with pytest.raises(TemplateError, match=r"lonely\.html\.j2: no text part"):
        TemplateSet([tmp_path]).get("lonely")
    write(tmp_path, "badsubject", "x", front="{# subject: Hi {{ #}\n")
    with pytest.raises(TemplateError, match=r"badsubject\.html\.j2:1: syntax error in the subj"):
        TemplateSet([tmp_path]).get("badsubject")
    with pytest.raises(TemplateError, match="no template 'nothing'"):
        TemplateSet([tmp_path]).get("nothing")


def test_front_matter_subject_folded_marketing_and_description(tmp_path):
    front = (
        "{#\nsubject: {% if 'cart_abandoners' in segments %}Your cart\n"
        "description: A receipt\nmarketing: false\n#}\n"
    )
    write(
        tmp_path,
        "receipt",
        "<p>x</p>",
        front=front.replace("Your cart\n", "Your   cart{% endif %}\n"),
    )
    templates = TemplateSet([tmp_path])
    compiled = templates.get("receipt")
    assert not compiled.marketing and compiled.description == "A receipt"
    subject, _, _ = render_parts(templates, compiled, context())
    assert subject == "Your cart"
    subject, _, _ = render_parts(templates, compiled, context(segments={}))
    assert subject == ""


def test_an_installation_folder_overrides_built_in_templates_and_partials(tmp_path):
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "footer.html.j2").write_text("<tr><td>OUR OWN FOOTER</td></tr>")
    templates = TemplateSet([tmp_path])
    assert templates.folders == [tmp_path, TEMPLATES_DIR]
    assert "cart_abandonment" in templates.names()
    ctx = {
        **context(),
        "cart": Cart(),
        "recommendations": [],
        "recently_viewed": [],
        "site_url": "https://shop.example.com",
        "company": "Shop",
        "postal_address": "1 Road",
        "unsubscribe_url": "u",
        "preferences_url": "u",
    }
    _, markup, _ = render_parts(templates, templates.get("cart_abandonment"), ctx)
    assert "OUR OWN FOOTER" in markup and "1 Road" not in markup
    _, markup, _ = render_parts(TemplateSet([]), TemplateSet([]).get("cart_abandonment"), ctx)
    assert "OUR OWN FOOTER" not in markup and "1 Road" in markup


def test_money_date_and_truncate_in_the_persons_locale_and_timezone(tmp_path):
    line = (
        "{{ 1234.5|money }}|{{ 10|money('EUR') }}|{{ entered|date }}|"
        "{{ entered|date('short', time=true) }}|{{ name|truncate(20) }}|{{ none|money }}"
    )
    write(tmp_path, "fmt", line, text=line)
    entered = datetime(2026, 4, 30, 23, 30, tzinfo=UTC)
    name = "Ultralight Backpacking Tent for Two"
    us = render(tmp_path, "fmt", context(entered=entered, name=name, none=None))[2]
    assert "$1,234.50|€10.00|Apr 30, 2026|4/30/26, 11:30\u202fPM|Ultralight\u2026|" in us
    de = render(
        tmp_path,
        "fmt",
        context(locale="de_DE", timezone="Europe/Berlin", entered=entered, name=name, none=None),
    )[2]
    # in Berlin it is already 1 May, 01:30
    assert "1.234,50\xa0$|10,00\xa0€|01.05.2026|01.05.26, 01:30|Ultralight\u2026|" in de
