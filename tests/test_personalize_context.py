"""What templates see about a person, read from the core tables (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from core.config import Settings
from core.personalize import render_email
from core.profiles import ProfileNotFound
from core.types import CommandError
from tests.shop import CHECKOUT, END, build_shop

SECRET = "a-test-secret-of-enough-length"
# Prints the context, one fact a line, in the text part (no escaping to undo);
# trim_blocks eats the newline after a block tag, hence the blank lines.
PROBE = """\
{% set viewed = recently_viewed %}
profile={{ profile.id }} {{ profile.user_id }} {{ profile.email }} {{ profile.first_name }}
locale={{ locale }} {{ timezone }}
consent={{ profile.consent|dictsort }}
segments={% for name, at in segments|dictsort %}{{ name }}@{{ at.isoformat() }} {% endfor %}

scores={{ scores|dictsort }}
viewed={% for p in viewed %}{{ p.id }}:{{ p.name }}:{{ p.price }}:{{ p.in_stock }} {% endfor %}

cart={% for l in cart %}{{ l.product.id }}x{{ l.quantity }}@{{ l.price }}={{ l.total }} {% endfor %}

total={{ cart.total|money(cart.currency) }}
quantity={{ cart.quantity }}
recommended={% for p in recommendations %}{{ p.id }} {% endfor %}

"""


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def shop(request, tmp_path_factory):
    """The shop of tests/shop.py, built once per backend for this module."""
    folder = tmp_path_factory.mktemp("shop")
    if request.param == "sqlite":
        url = f"sqlite:///{folder}/segflow.db"
        yield build_shop(url, folder), folder
        return
    server = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    built = build_shop(server.url(name), folder)
    yield built, folder
    built.engine.dispose()
    server.drop_database(name)


def probe(shop, tmp_path, who: str, **kwargs) -> dict[str, str]:
    built, _ = shop
    (tmp_path / "probe.html.j2").write_text("{# subject: probe #}\n<p>probe</p>")
    (tmp_path / "probe.txt.j2").write_text(PROBE)
    settings = Settings(secret_key=SECRET, email={"templates": [tmp_path]})
    kwargs.setdefault("tracking", False)
    email = render_email(built.engine, "probe", built.ids[who], settings=settings, **kwargs)
    return dict(line.split("=", 1) for line in email.text.splitlines())


def test_profile_consent_segments_and_scores(shop, tmp_path):
    built, _ = shop
    ada = probe(shop, tmp_path, "u_ada")
    assert ada["profile"] == f"{built.ids['u_ada']} u_ada ada@example.com Ada"
    assert ada["locale"] == "de_DE Europe/Berlin"  # the profile's own
    assert ada["consent"] == "[('email_marketing', True)]"
    entered = (CHECKOUT - timedelta(hours=1)).isoformat()
    assert ada["segments"] == f"cart_abandoners@{entered} tent_viewers@{entered} "
    assert ada["scores"] == "[('engagement', 82.5)]"
    bob = probe(shop, tmp_path, "u_bob")
    assert bob["locale"] == "en_US UTC"  # the settings' defaults
    assert bob["consent"] == "[]" and bob["scores"] == "[]"
    assert bob["segments"] == f"buyers@{entered} "


def test_the_cart_is_what_was_added_since_the_last_purchase_and_not_removed(shop, tmp_path):
    ada = probe(shop, tmp_path, "u_ada")
    # P1 added twice (1 + 2) at the catalogue's price, not the events' 189.0;
    # P2 added, then removed
    assert ada["cart"] == "P1x3@199.0=597.0 "
    assert ada["total"] == "597,00\xa0$" and ada["quantity"] == "3"
    assert probe(shop, tmp_path, "u_bob")["cart"] == ""  # he bought it


def test_recently_viewed_newest_first_from_the_catalogue_or_the_events(shop, tmp_path):
    ada = probe(shop, tmp_path, "u_ada")
    # P1 viewed again last; P3 is not in the catalogue: named from its events
    assert ada["viewed"] == (
        "P1:Ridge 2P Backpacking Tent:199.0:True P3:Titanium Canister Stove:54.95:True "
        "P2:Down Sleeping Bag -5C:249.5:True "
    )
    assert probe(shop, tmp_path, "u_bob")["viewed"] == "P4:Alpine Headlamp:39.0:False "


def test_as_of_reads_segments_and_events_as_they_were(shop, tmp_path):
    built, _ = shop
    entered = (CHECKOUT - timedelta(hours=1)).isoformat()
    before = probe(shop, tmp_path, "u_dee", as_of=CHECKOUT)
    assert before["segments"] == f"cart_abandoners@{entered} "
    assert before["cart"] == "P1x1@199.0=199.0 "
    now = probe(shop, tmp_path, "u_dee")
    assert now["segments"] == f"buyers@{END.isoformat()} " and now["cart"] == ""
    # as_of after every run: the replayed changes agree with the memberships
    assert probe(shop, tmp_path, "u_dee", as_of=END + timedelta(days=1)) == now
    early = probe(shop, tmp_path, "u_ada", as_of=END - timedelta(hours=49, minutes=30))
    assert early["segments"] == "" and early["cart"] == "P1x1@199.0=199.0 "


def test_recommendations_come_from_the_provider_it_is_given(shop, tmp_path):
    built, _ = shop
    calls = []

    def provider(conn, profile_id, *, k, as_of):
        calls.append((profile_id, k, as_of))
        rows = conn.exec_driver_sql("SELECT id FROM products WHERE in_stock ORDER BY id").all()
        return [{"id": r[0]} for r in rows][:k]

    out = probe(shop, tmp_path, "u_ada", recommendations=provider, as_of=END)
    assert out["recommended"] == "P1 P2 "
    assert calls == [(built.ids["u_ada"], 4, END)]
    # no provider and no core.recommend on this branch: an empty list, not an error
    assert probe(shop, tmp_path, "u_ada")["recommended"] == ""


def test_anonymous_people_preview_but_cannot_be_tracked(shop, tmp_path):
    built, _ = shop
    cy = probe(shop, tmp_path, "a_cy")
    assert cy["profile"] == f"{built.ids['a_cy']}   "  # None prints as nothing
    with pytest.raises(CommandError, match="neither a user id nor an email"):
        probe(shop, tmp_path, "a_cy", tracking=True)
    with pytest.raises(CommandError, match="needs a secret key"):
        render_email(built.engine, "welcome", built.ids["u_ada"], settings=Settings())
    with pytest.raises(ProfileNotFound):
        render_email(built.engine, "welcome", 10_000, settings=Settings(), tracking=False)
