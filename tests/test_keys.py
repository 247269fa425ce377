"""API keys: shown once, stored hashed, scoped, revocable."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from core.cli import main
from core.db import models, open_db
from core.keys import ScopeError, UnknownKey, create_key, revoke_key, verify_key


def test_keys_are_hashed_scoped_and_revocable(db_url):
    engine = open_db(db_url)
    info, key = create_key(engine, "site", ["events:write"])
    assert key.startswith(f"sf_{info.prefix}_") and len(key) > 40
    with engine.connect() as conn:
        stored = conn.execute(sa.select(models.ApiKey.__table__)).one()
        audit = conn.execute(sa.select(models.AuditLog.__table__.c.action)).scalars().all()
    assert key not in str(tuple(stored)) and stored.key_hash != key
    assert audit == ["key.create"]
    assert verify_key(engine, key, "events:write").name == "site"
    with pytest.raises(ScopeError, match="lacks the scope 'profiles:read'"):
        verify_key(engine, key, "profiles:read")
    with pytest.raises(UnknownKey, match="unknown API key"):
        verify_key(engine, key[:-1] + ("A" if key[-1] != "A" else "B"), "events:write")
    _, admin = create_key(engine, "ops", ["admin"])
    assert verify_key(engine, admin, "profiles:read").name == "ops"  # admin implies all
    revoke_key(engine, "site")
    with pytest.raises(UnknownKey, match="'site' was revoked"):
        verify_key(engine, key, "events:write")


def test_a_recent_check_is_reused_for_max_age_and_scopes_still_apply(fresh_sqlite):
    import time

    engine = open_db(fresh_sqlite())
    _, key = create_key(engine, "site", ["events:write"])
    assert verify_key(engine, key, "events:write", max_age=0.3).name == "site"
    # Revoked by another process (a plain UPDATE, not revoke_key): the cached
    # check holds for max_age, a fresh check sees the revocation at once.
    with engine.begin() as conn:
        conn.execute(sa.update(models.ApiKey.__table__).values(revoked_at=sa.func.now()))
    assert verify_key(engine, key, "events:write", max_age=0.3).name == "site"
    with pytest.raises(ScopeError):
        verify_key(engine, key, "profiles:read", max_age=0.3)
    with pytest.raises(UnknownKey, match="revoked"):
        verify_key(engine, key, "events:write")
    time.sleep(0.35)
    with pytest.raises(UnknownKey, match="revoked"):
        verify_key(engine, key, "events:write", max_age=0.3)


def test_revoking_in_this_process_ends_cached_checks_at_once(fresh_sqlite):
    engine = open_db(fresh_sqlite())
    _, key = create_key(engine, "site", ["events:write"])
    assert verify_key(engine, key, "events:write", max_age=60).name == "site"
    revoke_key(engine, "site")
    with pytest.raises(UnknownKey, match="revoked"):
        verify_key(engine, key, "events:write", max_age=60)


@pytest.mark.parametrize(
    "scopes, message",
    [([], "at least one scope"), (["events:read"], "unknown scope(s) events:read")],
)
def test_bad_scopes_are_refused(fresh_sqlite, scopes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_key(open_db(fresh_sqlite()), "x", scopes)


def test_cli_prints_the_key_once_alone_on_the_last_line(fresh_sqlite, capsys):
    db = fresh_sqlite()
    assert (
        main(
            [
                "--db",
                db,
                "keys",
                "create",
                "--name",
                "shop",
                "--scopes",
                "events:write,profiles:read",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    key = captured.out.strip().splitlines()[-1]
    assert key.startswith("sf_") and " " not in key
    assert verify_key(open_db(db), key, "profiles:read").name == "shop"
    assert main(["--db", db, "keys", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert key not in listed and '"shop"' in listed
    assert main(["--db", db, "keys", "create", "--name", "shop", "--scopes", "admin"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["--db", db, "keys", "revoke", "nope"]) == 1
    assert "no API key named 'nope'" in capsys.readouterr().err
