"""The command line: exit statuses, JSON shapes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

from tests.conftest import PROJECT_ROOT
from tests.helpers import write_jsonl


def events_file(tmp_path, bad=False):
    records = [
        {"type": "page_view", "anonymous_id": "anon-7", "ts": "2026-03-01T10:00:00Z", "url": "/"},
        {
            "type": "identify",
            "user_id": "u7",
            "anonymous_id": "anon-7",
            "ts": "2026-03-01T10:01:00Z",
            "traits": {"email": "seven@example.com", "first_name": "Sam"},
        },
        {
            "type": "purchase",
            "user_id": "u7",
            "ts": "2026-03-01T10:05:00Z",
            "value": 120.0,
            "currency": "EUR",
            "product_id": "P0001",
        },
    ]
    if bad:
        records.insert(1, {"type": "purchase", "user_id": "u7", "ts": "2026-03-01 10:00"})
    return write_jsonl(tmp_path / ("bad.jsonl" if bad else "good.jsonl"), records)


def test_import_exit_statuses(run, tmp_path):
    status, out, _ = run("import", str(events_file(tmp_path)))
    assert status == 0 and "good.jsonl" in out
    status, _, _ = run("import", str(events_file(tmp_path)))  # all duplicates: still fine
    assert status == 0
    status, _, err = run("import", str(events_file(tmp_path, bad=True)))
    assert status == 1
    assert f"rejected {tmp_path}/bad.jsonl:2: field 'ts'" in err
    status, _, err = run("import", str(tmp_path / "missing.jsonl"))
    assert status == 2 and "missing.jsonl: no such file" in err
    status, _, err = run("import", str(events_file(tmp_path)), "--map", "nonsense")
    assert status == 2 and "expected NAME=VALUE" in err
    (tmp_path / "x.parquet").write_text("")
    status, _, err = run("import", str(tmp_path / "x.parquet"))
    assert status == 2 and "cannot tell the format" in err


def test_import_json_report(run, tmp_path):
    status, out, _ = run("import", "--json", str(events_file(tmp_path, bad=True)))
    report = json.loads(out)[str(tmp_path / "bad.jsonl")]
    assert status == 1
    assert (report["accepted"], report["rejected"]) == (3, 1)
    assert report["rejections"][0]["location"] == f"{tmp_path}/bad.jsonl:2"


def test_profile_show_json_is_the_stable_shape(run, tmp_path):
    run("import", str(events_file(tmp_path)))
    status, out, _ = run("profile", "show", "u7", "--json")
    assert status == 0
    data = json.loads(out)
    assert {"user_id", "attributes", "identities", "event_counts", "recent_events"} <= set(data)
    assert data["user_id"] == "u7"
    assert data["attributes"] == {"email": "seven@example.com", "first_name": "Sam"}
    assert {"kind": "anonymous_id", "value": "anon-7"} in data["identities"]
    assert data["event_counts"] == {"identify": 1, "page_view": 1, "purchase": 1}
    assert [e["type"] for e in data["recent_events"]] == ["purchase", "identify", "page_view"]
    assert datetime.fromisoformat(data["recent_events"][0]["ts"]) == datetime(
        2026, 3, 1, 10, 5, tzinfo=UTC
    )
    # The same person by anonymous id or email.
    assert json.loads(run("profile", "show", "anon-7", "--json")[1])["user_id"] == "u7"
    assert json.loads(run("profile", "show", "Seven@Example.com", "--json")[1])["user_id"] == "u7"
    status, _, err = run("profile", "show", "nobody")
    assert (
        status == 1
        and err.strip() == "error: no profile with user id, anonymous id or email 'nobody'"
    )


def test_init_and_db_commands(run, tmp_path):
    status, out, _ = run("--db", f"sqlite:///{tmp_path}/new.db", "init")
    assert status == 0 and "database ready" in out
    config = (tmp_path / "segflow.toml").read_text()
    assert 'database_url = "sqlite:///' in config and "secret_key = " in config
    status, out, _ = run("db", "upgrade")  # reads segflow.toml now
    assert status == 0 and "schema already at" in out
    status, out, _ = run("db", "current")
    from core.db import head_revision

    assert f"database: {head_revision()}" in out and f"code:     {head_revision()}" in out


def test_demo_summarises_and_refuses_to_reset_real_data(run, tmp_path, prefect_server):
    status, out, _ = run("demo", "--people", "40", "--days", "14", "--json")
    summary = json.loads(out)
    assert status == 0
    assert summary["events"] == summary["import"]["accepted"] > 0
    assert summary["identified"] == 40
    assert summary["profiles"] == summary["identified"] + summary["anonymous"]
    status, out, _ = run("demo", "--people", "40", "--days", "14", "--json", "--reset")
    assert json.loads(out)["events"] == summary["events"]  # same seed, same store
    run("import", str(events_file(tmp_path)))
    status, _, err = run("demo", "--people", "40", "--reset")
    assert status == 1 and "refusing to reset" in err


def test_errors_never_show_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("SEGFLOW_DEBUG", None)
    cases = [
        ["--db", "postgresql://nobody@127.0.0.1:1/x", "profile", "show", "u1"],
        ["--db", "sqlite:////no/such/dir/x.db", "import", "x.jsonl"],
        ["no-such-command"],
    ]
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "core.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode in (1, 2), args
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip(), args


def test_every_help_shows_the_settings_tables_it_names(run):
    """Help is rich markup to typer, where ``[privacy.minimise]`` is a tag and
    vanishes: every bracketed name a command's help or an option's help holds
    is shown as written, for core's commands and the plugins' alike."""
    import re

    from core.cli import build_cli

    def walk(cmd, path: list[str]):
        yield path, cmd
        if hasattr(cmd, "list_commands"):  # a group (typer's own click)
            ctx = cmd.context_class(cmd, info_name=path[-1] if path else "segflow")
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name])

    checked = 0
    for path, cmd in walk(build_cli(), []):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        names = {
            m.replace("\\", "") for t in texts for m in re.findall(r"\[\\?\[?[a-z][\w.]*\]\]?", t)
        }
        if not names:
            continue
        status, out, _ = run(*path, "--help")
        shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
        assert status == 0, path
        for name in names:
            assert name in shown, (path, name)
        checked += 1
    assert checked >= 4  # segments validate, privacy purge, sync, sync run / verify
