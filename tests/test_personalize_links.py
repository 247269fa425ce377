"""Tracking added once, after rendering: signed click links, the pixel, one-click
unsubscribe; previews without any; the link scanner agrees with html.parser."""

from __future__ import annotations

import html
import re
import socket
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import css_inline
import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import Settings
from core.personalize import render_email
from core.personalize.links import HTML_LINK, Links, rewrite_html, rewrite_text
from core.personalize.templates import TEMPLATES_DIR
from core.tracking import verify
from tests.helpers import serving
from tests.shop import build_shop

SECRET = "a-test-secret-of-enough-length"
BASE = "https://t.example.com"
TEMPLATES = sorted(p.name.removesuffix(".html.j2") for p in TEMPLATES_DIR.glob("*.html.j2"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop")
    return build_shop(f"sqlite:///{folder}/segflow.db", folder)


def hrefs(markup: str) -> list[str]:
    return [html.unescape(v) for v in re.findall(r'<a [^>]*?href="([^"]*)"', markup)]


def token(url: str, path: str) -> str:
    return url.split(path, 1)[1].removesuffix(".gif")


def test_every_link_is_signed_once_centrally_and_the_preview_has_none(shop):
    settings = Settings(secret_key=SECRET, email={"base_url": BASE})
    ada = shop.ids["u_ada"]
    for name in TEMPLATES:
        preview = render_email(shop.engine, name, ada, settings=settings, tracking=False)
        email = render_email(shop.engine, name, ada, settings=settings, message_key=f"m-{name}")
        # the preview: links as written, no pixel, no headers, unsubscribe leads nowhere
        assert "/t/c/" not in preview.html + preview.text and "/t/o/" not in preview.html
        assert preview.headers == {}
        assert f"{BASE}/t/u/preview" in hrefs(preview.html)
        written = [u for u in hrefs(preview.html) if u != f"{BASE}/t/u/preview"]
        assert written and all(u.startswith("https://shop.example.com") for u in written)
        # the email: every one of those links signed, pointing where the template did
        unsubscribe = email.headers["List-Unsubscribe"].strip("<>")
        assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert verify("unsubscribe", token(unsubscribe, "/t/u/"), SECRET) == {
            "m": f"m-{name}",
            "u": "u_ada",
            "e": "ada@example.com",
            "c": name,
        }
        tracked = hrefs(email.html)
        assert unsubscribe in tracked  # the footer's link, left unsigned as a click
        clicks = [verify("click", token(u, "/t/c/"), SECRET) for u in tracked if u != unsubscribe]
        assert [c["d"] for c in clicks] == written
        numbers = {c["d"]: c["l"] for c in clicks}
        assert sorted(set(numbers.values())) == list(range(1, len(numbers) + 1))
        assert all(c["m"] == f"m-{name}" and c["c"] == name for c in clicks)
        # the text part's URLs: the same destinations under the same numbers
        text_clicks = [
            verify("click", token(u, "/t/c/"), SECRET)
            for u in re.findall(r"https?://\S+", email.text)
            if "/t/c/" in u
        ]
        assert text_clicks and all(numbers[c["d"]] == c["l"] for c in text_clicks)
        assert not re.search(r"https://shop\.example\.com", email.text)
        # the pixel, once, just before </body>
        pixels = re.findall(r'<img src="([^"]*/t/o/[^"]*)"[^>]*></body>', email.html)
        assert len(pixels) == 1 and email.html.count("/t/o/") == 1
        assert verify("open", token(html.unescape(pixels[0]), "/t/o/"), SECRET)["m"] == f"m-{name}"


def test_what_is_not_an_http_link_stays_as_it_is():
    signed = []

    def sign(url: str, number: int) -> str:
        if not urlsplit(url).netloc:
            raise ValueError("no host")  # as core.tracking.click_url does
        signed.append((url, number))
        return f"{BASE}/t/c/{number}"

    links = Links(sign, f"{BASE}/t/u/x")
    markup = css_inline.inline(
        '<html><body><a href="mailto:help@shop.example.com">mail</a><a href="tel:+4930123">call</a>'
        '<a href="#top">top</a><a href="/relative">rel</a><a href="https://t.example.com/t/u/x">'
        'unsub</a><a title="a > b" href="https://shop.example.com/?a=1&amp;b=2">q</a>'
        '<a href="http://">empty</a><map><area href="https://shop.example.com/map"></map>'
        '<!-- <a href="https://shop.example.com/commented"> --></body></html>'
    )
    out = rewrite_html(markup, links)
    for kept in ("mailto:help@", "tel:+4930123", '"#top"', '"/relative"', "/t/u/x", '"http://"'):
        assert kept in out
    assert signed == [("https://shop.example.com/?a=1&b=2", 1), ("https://shop.example.com/map", 2)]
    assert 'title="a > b" href="https://t.example.com/t/c/1"' in out
    assert "commented" in out  # comments are left alone
    text = rewrite_text(
        "Shop: https://shop.example.com/?a=1&b=2. Map (https://shop.example.com/map), "
        "new: https://shop.example.com/new! Leave: https://t.example.com/t/u/x",
        links,
    )
    assert text == (
        "Shop: https://t.example.com/t/c/1. Map (https://t.example.com/t/c/2), "
        "new: https://t.example.com/t/c/3! Leave: https://t.example.com/t/u/x"
    )


class HrefParser(HTMLParser):
    """The standard library's view of the links: what the scanner must agree with."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("a", "area"):
            self.found += [v or "" for k, v in attrs if k == "href"][:1]


def scanned(markup: str) -> list[str]:
    return [html.unescape(m.group(2)) for m in HTML_LINK.finditer(markup) if m.group(1)]


def parsed(markup: str) -> list[str]:
    parser = HrefParser()
    parser.feed(markup)
    parser.close()
    return parser.found


def test_the_scanner_finds_the_links_html_parser_finds_in_every_built_in_template(shop):
    settings = Settings(secret_key=SECRET)
    for name in TEMPLATES:
        for who in ("u_ada", "u_bob"):
            email = render_email(shop.engine, name, shop.ids[who], settings=settings)
            assert scanned(email.html) == parsed(email.html) != []


# Valid markup (what a template writes) in every attribute form, with values
# holding what the serialised form must escape or may leave raw (<, >, &, quotes).
value = st.text(alphabet="ab <>&\"'=/#x\u00e9", max_size=12)
UNQUOTABLE = r"[\s\"'=<>`]"  # what an unquoted attribute value cannot hold
piece = st.one_of(
    st.builds(
        lambda v, h: f'<a title="{html.escape(v)}" href="{html.escape(h)}">x</a>', value, value
    ),
    st.builds(
        lambda v, h: f"<a data-x='{v.replace(chr(39), '')}' HREF='{h.replace(chr(39), '')}'>y</a>",
        value,
        value,
    ),
    st.builds(lambda h: f"<a href={re.sub(UNQUOTABLE, '', h) or 'z'}>z</a>", value),
    st.builds(lambda t: f'<p>{html.escape(t)} href="{html.escape(t)}"</p>', value),
    st.builds(
        lambda h: f'<!-- <a href="{h}"> -->', value.filter(lambda v: "--" not in v and ">" not in v)
    ),
    st.builds(lambda h: f'<area href="{html.escape(h)}">', value),
    st.builds(
        lambda h: f'<abbr href="{html.escape(h)}">b</abbr><link href="{html.escape(h)}">', value
    ),
    st.just("<style>a[href] { color: red }</style>"),
    st.just(
        '<table><tr><td><a class="c" href="https://x.example/?q=1&amp;r=2">t</a></td></tr></table>'
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(piece, max_size=8))
def test_the_scanner_agrees_with_html_parser_on_generated_markup(pieces):
    markup = css_inline.inline(f"<html><body>{''.join(pieces)}</body></html>")
    assert scanned(markup) == parsed(markup)


# -- through the real server ---------------------------------------------------------------


@pytest.fixture
def served(fresh_sqlite, tmp_path) -> Iterator[tuple[str, object, dict[str, int]]]:
    from core.api import create_app

    url = fresh_sqlite()
    built = build_shop(url, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(database_url=url, secret_key=SECRET)
    with serving(create_app(built.engine, settings), port=port) as base:
        yield base, built.engine, built.ids


def email_events(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT type, campaign, url FROM events WHERE type LIKE 'email_%' OR "
                "type = 'unsubscribe' ORDER BY id"
            )
        ).all()


def test_a_rendered_email_records_its_open_and_clicks_and_a_preview_records_nothing(served):
    base, engine, ids = served
    settings = Settings(secret_key=SECRET, email={"base_url": base})
    preview = render_email(engine, "cart_abandonment", ids["u_ada"], settings=settings,
                           tracking=False)  # fmt: skip
    email = render_email(engine, "cart_abandonment", ids["u_ada"], settings=settings)
    with httpx.Client() as client:
        # a marketer opening the preview and following every link into segflow
        for url in re.findall(r'(?:href|src)="([^"]*)"', preview.html):
            if html.unescape(url).startswith(base):
                assert client.get(html.unescape(url)).status_code == 404
        assert email_events(engine) == []
        pixel = re.search(r'<img src="([^"]*/t/o/[^"]*)"', email.html).group(1)
        assert client.get(html.unescape(pixel)).status_code == 200
        cart = next(u for u in hrefs(email.html) if "/t/c/" in u and
                    verify("click", token(u, "/t/c/"), SECRET)["d"].endswith("/cart"))  # fmt: skip
        answer = client.get(cart)
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://shop.example.com/cart"
    assert email_events(engine) == [
        ("email_open", "cart_abandonment", None),
        ("email_click", "cart_abandonment", "https://shop.example.com/cart"),
    ]
