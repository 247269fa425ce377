"""The Redis Streams source against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest
import redis

from core.db import open_db
from plugins.sources.redis_stream import StreamConfig, consume_once, ensure_group
from tests.conftest import IN_CI
from tests.helpers import count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server not found (Debian package redis-server; make test installs it)"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def event(i: int) -> dict:
    return {
        "event": json.dumps(
            {"type": "page_view", "user_id": "r1", "ts": 1_775_000_000 + i, "message_id": f"s{i}"}
        )
    }


def test_entries_are_stored_then_acknowledged_and_crashes_lose_nothing(redis_url, fresh_sqlite):
    engine = open_db(fresh_sqlite())
    client = redis.Redis.from_url(redis_url)
    config = StreamConfig(name="web", url=redis_url, stream="events-a", batch=2, block_ms=0)
    ensure_group(client, config)
    for i in range(5):
        client.xadd("events-a", event(i))
    client.xadd("events-a", {"event": "{not json"})
    # A consumer that crashed after reading two entries, before committing them.
    client.xreadgroup(config.group, config.consumer, {"events-a": ">"}, count=2)
    assert client.xpending("events-a", config.group)["pending"] == 2

    result = consume_once(engine, config, client, block_ms=0)
    assert result.entries == 6 and result.report.accepted == 5 and len(result.report.rejected) == 1
    assert count(engine) == 5
    assert client.xpending("events-a", config.group)["pending"] == 0  # all acknowledged
    (dead,) = client.xrange("events-a:rejected")
    assert dead[1][b"reason"] == b"entry is not JSON"
    # Entries re-sent by a producer are duplicates, acknowledged all the same.
    client.xadd("events-a", event(1))
    again = consume_once(engine, config, client, block_ms=0)
    assert (again.entries, again.report.duplicates, count(engine)) == (1, 1, 5)


def test_nothing_is_acknowledged_when_storing_fails(redis_url, fresh_sqlite, monkeypatch):
    import core

    engine = open_db(fresh_sqlite())
    client = redis.Redis.from_url(redis_url)
    config = StreamConfig(name="web", url=redis_url, stream="events-b", block_ms=0)
    ensure_group(client, config)
    client.xadd("events-b", event(10))

    def broken(*args, **kwargs):
        raise RuntimeError("database down")

    # The plugin looks ingest up in core when it stores (not at import).
    core.ingest  # noqa: B018 - resolved once, so setattr replaces a real attribute
    monkeypatch.setattr(core, "ingest", broken)
    with pytest.raises(RuntimeError, match="database down"):
        consume_once(engine, config, client, block_ms=0)
    assert client.xpending("events-b", config.group)["pending"] == 1  # kept for the retry
    monkeypatch.undo()
    assert consume_once(engine, config, client, block_ms=0).report.accepted == 1
    assert client.xpending("events-b", config.group)["pending"] == 0


def test_the_consume_command_reads_its_settings_section(
    redis_url, fresh_sqlite, tmp_path, monkeypatch, capsys
):
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    db = fresh_sqlite()
    client = redis.Redis.from_url(redis_url)
    for i in range(3):
        client.xadd("events-c", event(20 + i))
    (tmp_path / "segflow.toml").write_text(
        f'[[sources.stream]]\nname = "web"\nurl = "{redis_url}"\nstream = "events-c"\n'
    )
    assert main(["--db", db, "consume", "web", "--once"]) == 0
    assert capsys.readouterr().out.strip() == (
        "web: 3 entries, 3 new events, 0 duplicates, 0 rejected"
    )
    assert count(open_db(db)) == 3
    assert main(["--db", db, "consume", "app", "--once"]) == 2
    assert "no stream named 'app' in [[sources.stream]] (web)" in capsys.readouterr().err
    (tmp_path / "segflow.toml").write_text('[[sources.stream]]\nname = "web"\n')
    assert main(["--db", db, "consume", "web", "--once"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: segflow.toml: [sources.stream] 0.stream: required"
    )
