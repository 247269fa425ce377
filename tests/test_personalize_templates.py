"""The built-in templates on the demo store, mail-client HTML, and the commands."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.cli import main
from core.config import Settings
from core.personalize import render_email, size_warning
from core.personalize.context import Cart
from core.personalize.render import render_parts
from core.personalize.templates import TEMPLATES_DIR, TemplateSet
from tests.shop import CHECKOUT, build_shop

SECRET = "a-test-secret-of-enough-length"
TEMPLATES = sorted(p.name.removesuffix(".html.j2") for p in TEMPLATES_DIR.glob("*.html.j2"))
RECOMMENDED = [
    {
        "id": f"R{n}",
        "name": f"Trail Pick {n}",
        "category": "backpacks",
        "price": 60.0 + n,
        "currency": "USD",
        "url": f"https://shop.example.com/p/R{n}",
        "image_url": None if n % 2 else f"https://shop.example.com/img/R{n}.jpg",
        "in_stock": True,
        "score": 1.0 / (n + 1),
    }
    for n in range(4)
]


def recommend(conn, profile_id, *, k, as_of):
    return RECOMMENDED[:k]


@pytest.fixture
def demo(demo_store):
    """The shared demo store, with the example scores and segments run on it."""
    return demo_store[0]


def demo_people(engine) -> dict[str, list[int]]:
    """Segment -> members with an email, and "none" -> people in no segment."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.name, p.id FROM profiles p LEFT JOIN memberships m ON m.profile_id = p.id"
                " LEFT JOIN segments s ON s.id = m.segment_id"
                " WHERE p.email IS NOT NULL AND p.merged_into IS NULL ORDER BY p.id"
            )
        ).all()
    out: dict[str, list[int]] = {}
    for name, pid in rows:
        out.setdefault(name or "none", []).append(pid)
    return out


def test_every_template_renders_mail_client_html_for_demo_people(demo):
    settings = Settings(secret_key=SECRET)
    people = demo_people(demo)
    chosen: list[int] = []
    for ids in people.values():  # a different person for each segment, where there is one
        chosen += [pid for pid in ids if pid not in chosen][:1]
    assert len(chosen) >= 5
    for name in TEMPLATES:
        for pid in chosen:
            email = render_email(demo, name, pid, settings=settings, recommendations=recommend)
            assert email.subject and "\n" not in email.subject and "{" not in email.subject
            markup = email.html
            # CSS inlined into style attributes; only the media queries stay in <style>
            assert re.findall(r"<style[^>]*>", markup) == ['<style data-css-inline="keep">']
            assert "@media only screen and (max-width: 620px)" in markup
            assert 'class="container" role="presentation"' in markup and 'width="600"' in markup
            assert 'style="border-collapse: collapse;' in markup
            # the footer: postal address and unsubscribe, in both parts
            for part in (markup, email.text):
                assert "1 Example Street, Springfield, USA" in part and "/t/u/" in part
            assert "Trail Pick 0" in markup and "Trail Pick 0" in email.text
            assert size_warning(email) is None and len(markup) < 40_000


def hero(name: str, segments: list[str], first_name: str | None = "Ada") -> str:
    templates = TemplateSet([])
    ctx = {
        "profile": {"first_name": first_name, "attributes": {}},
        "segments": dict.fromkeys(segments, datetime(2026, 5, 1, tzinfo=UTC)),
        "cart": Cart(),
        "recommendations": [],
        "recently_viewed": [],
        "site_url": "https://shop.example.com",
        "company": "Shop",
        "postal_address": "1 Road",
        "unsubscribe_url": "https://t.example.com/u",
        "preferences_url": "https://t.example.com/u",
        "locale": "en_US",
        "timezone": "UTC",
        "currency": "USD",
    }
    subject, markup, _ = render_parts(templates, templates.get(name), ctx)
    return subject + " | " + re.search(r"<h1[^>]*>(.*?)</h1>", markup).group(1)


def test_segment_aware_blocks_follow_the_persons_segments():
    assert hero("cart_abandonment", []) == "Ada, your cart is waiting | You left something behind"
    assert hero("cart_abandonment", ["high_intent", "big_spenders"]) == (
        "Ada, your cart is waiting (and still in stock) | Still deciding, Ada?"
    )
    assert hero("cart_abandonment", ["big_spenders"], None).endswith("Your cart is saved, friend")
    assert hero("browse_recommendations", ["tent_shoppers"]).startswith(
        "Gear for your next camp, Ada | Ready for your next night out"
    )
    assert hero("browse_recommendations", ["engaged_browsers"]).endswith(
        "Found something you like, Ada?"
    )
    assert hero("win_back", ["lapsed_big_spenders"]).startswith("We miss you, Ada: 20% off")
    assert hero("high_intent_offer", ["high_intent"]).endswith("Take 10% off, Ada")
    assert hero("high_intent_offer", ["high_intent", "big_spenders"]).endswith(
        "An offer for you, Ada"
    )
    assert hero("welcome", ["cart_abandoners"]).startswith("Welcome to Shop, Ada | Welcome, Ada!")


def test_html_past_gmails_clipping_size_is_warned_about(tmp_path):
    (tmp_path / "huge.html.j2").write_text(
        "{# subject: Huge #}\n<html><body>{% for i in range(2500) %}"
        "<p>{{ 'Row %d of a long catalogue page'|format(i) }} with padding text</p>"
        "{% endfor %}</body></html>"
    )
    (tmp_path / "huge.txt.j2").write_text("huge")
    templates = TemplateSet([tmp_path])
    ctx = {"locale": "en_US", "timezone": "UTC"}
    subject, markup, text = render_parts(templates, templates.get("huge"), ctx)
    from core.types import RenderedEmail

    email = RenderedEmail(1, "a@example.com", "huge", "v", subject, markup, text)
    warning = size_warning(email)
    assert len(markup.encode()) > 102 * 1024
    assert warning is not None and "Gmail clips messages over 102 KB" in warning


# -- segflow render and segflow templates --------------------------------------------------


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("SEGFLOW_DATABASE_URL", "SEGFLOW_CONFIG", "SEGFLOW_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    shop = build_shop(f"sqlite:///{tmp_path}/shop.db", tmp_path)
    shop.engine.dispose()

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--db", f"sqlite:///{tmp_path}/shop.db", *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_segflow_render_writes_a_preview_with_nothing_tracked(cli, tmp_path):
    status, out, err = cli("render", "cart_abandonment", "ada@example.com")
    assert status == 0, err
    html_file = tmp_path / "previews" / "cart_abandonment-1.html"
    assert "subject: Ada, your cart is waiting" in out and "previews/cart_abandonment-1.html" in out
    markup = html_file.read_text()
    assert "Ridge 2P Backpacking Tent" in markup and "597,00" in markup
    assert "/t/c/" not in markup and "/t/o/" not in markup and "/t/u/preview" in markup
    text = html_file.with_suffix(".txt").read_text()
    assert text.startswith("Subject: Ada, your cart is waiting\n\n") and "Quantity" not in text
    status, out, _ = cli(
        "render", "cart_abandonment", "u_dee", "--out", "dee.html", "--as-of",
        (CHECKOUT - timedelta(minutes=5)).isoformat(),
    )  # fmt: skip
    assert status == 0 and "Ridge 2P Backpacking Tent" in (tmp_path / "dee.html").read_text()
    status, _, _ = cli("render", "cart_abandonment", "u_dee", "--out", "now.html")
    assert "Ridge 2P Backpacking Tent" not in (tmp_path / "now.html").read_text()  # bought


def test_segflow_render_errors_are_one_line(cli, tmp_path, monkeypatch):
    status, _, err = cli("render", "cart_abandonment", "nobody@example.com")
    assert status == 1 and err.startswith("error: no profile with") and err.count("\n") == 1
    status, _, err = cli("render", "no_such_template", "u_ada")
    assert status == 1 and "no template 'no_such_template'" in err and err.count("\n") == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "typo.html.j2").write_text("{# subject: x #}\n<p>\n{{ profile.frist_name }}</p>")
    (mine / "typo.txt.j2").write_text("x")
    (tmp_path / "segflow.toml").write_text(f'[segflow.email]\ntemplates = ["{mine}"]\n')
    monkeypatch.setenv("SEGFLOW_CONFIG", str(tmp_path / "segflow.toml"))
    status, _, err = cli("render", "typo", "u_ada")
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("error: mine/typo.html.j2:3: undefined key 'frist_name'")
    (tmp_path / "segflow.toml").write_text('[segflow.email]\ntimezone = "Mars/Base"\n')
    status, _, err = cli("render", "typo", "u_ada")
    assert status == 1 and "unknown timezone 'Mars/Base'" in err


def test_segflow_render_warns_when_gmail_would_clip(cli, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "big.html.j2").write_text(
        "{# subject: Big #}\n<html><body>{% for i in range(2500) %}"
        "<p>Row {{ i }} of a long catalogue page, with padding text</p>{% endfor %}</body></html>"
    )
    (mine / "big.txt.j2").write_text("big")
    (tmp_path / "segflow.toml").write_text(f'[email]\ntemplates = ["{mine}"]\n')
    monkeypatch.setenv("SEGFLOW_CONFIG", str(tmp_path / "segflow.toml"))
    status, out, err = cli("render", "big", "u_ada")
    assert status == 0 and "wrote previews/big-1.html" in out
    assert err.startswith("warning: big: the HTML is ") and "Gmail clips" in err


def test_segflow_templates_list_and_export(cli):
    status, out, _ = cli("templates", "list")
    assert status == 0 and all(name in out for name in TEMPLATES)
    status, out, _ = cli("templates", "export", "cart_abandonment", "--to", "mailchimp")
    assert status == 0 and "*|IF:HIGH_INTEN|*" in out and "block hero" in out
    status, out, _ = cli(
        "templates", "export", "browse_recommendations", "--to", "klaviyo", "--block", "hero"
    )
    assert status == 0 and "{% if person|lookup:'segflow_tent_shoppers' %}" in out
    status, _, err = cli("templates", "export", "welcome", "--to", "sendgrid")
    assert status == 2 and "sendgrid" in err
    status, _, err = cli("templates", "export", "welcome", "--to", "klaviyo", "--block", "x")
    assert status == 1 and "no segment-aware block named 'x'" in err


def test_segflow_send_renders_each_member_through_render_email(cli, tmp_path, monkeypatch):
    """The send command wired to render_email: ada (a cart abandoner with email
    consent) gets her tracked cart email in the outbox, once per campaign."""
    monkeypatch.setenv("SEGFLOW_SECRET_KEY", SECRET)
    args = ("send", "cart_abandonment", "--segment", "cart_abandoners", "--campaign", "spring")
    status, out, err = cli(*args, "--via", "outbox")
    assert status == 0, err
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1 and files[0].name.startswith("spring_cart_abandoners_cart_abandonment")
    raw = files[0].read_text()
    # the header as written, one line: not folded into RFC 2047 encoded words
    unsubscribe = re.search(r"^List-Unsubscribe: <(http://127\.0\.0\.1:8000/t/u/\S+)>$", raw, re.M)
    assert unsubscribe is not None and "To: ada@example.com" in raw
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw
    markup = files[0].with_suffix(".html").read_text()
    assert "/t/c/" in markup and "/t/o/" in markup and "Ridge 2P Backpacking Tent" in markup
    status, out, _ = cli(*args, "--via", "outbox")
    assert status == 0 and len(list((tmp_path / "outbox").glob("*.eml"))) == 1  # sent once
