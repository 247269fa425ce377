"""The polling source against a real paginated HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from core import load_cursor
from core.db import open_db
from plugins.sources.polling import PollConfig, PollError, poll_once
from tests.helpers import count

PAGES = {
    None: (
        {
            "events": [
                {
                    "type": "page_view",
                    "user_id": "p1",
                    "ts": 1_775_000_000 + i,
                    "message_id": f"a{i}",
                }
                for i in range(3)
            ],
            "next_cursor": "c1",
        }
    ),
    "c1": (
        {
            "events": [
                {
                    "type": "purchase",
                    "user_id": "p1",
                    "ts": 1_775_000_100,
                    "value": 5,
                    "message_id": "b0",
                }
            ],
            "next_cursor": "c2",
        }
    ),
    "c2": ({"events": [], "next_cursor": "c2"}),
}


class Feed:
    """A paginated endpoint that fails in scripted ways."""

    def __init__(self) -> None:
        self.requests: list[str | None] = []
        self.failures: dict[str | None, list[tuple[int, dict]]] = {}
        self.pages = dict(PAGES)

    def handler(self):
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                cursor = parse_qs(urlsplit(self.path).query).get("cursor", [None])[0]
                feed.requests.append(cursor)
                pending = feed.failures.get(cursor)
                if pending:
                    status, headers = pending.pop(0)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    return
                body = json.dumps(feed.pages[cursor]).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def feed():
    f = Feed()
    server = ThreadingHTTPServer(("127.0.0.1", 0), f.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    f.url = f"http://127.0.0.1:{server.server_address[1]}/events"
    yield f
    server.shutdown()


def test_pages_are_pulled_with_retries_and_restarts_resume(feed, fresh_sqlite):
    engine = open_db(fresh_sqlite())
    config = PollConfig(name="shop", url=feed.url, max_attempts=4)
    feed.failures["c1"] = [(503, {}), (429, {"Retry-After": "0"})]
    waits = []
    result = poll_once(engine, config, sleep=waits.append)
    assert (result.pages, result.report.accepted, result.cursor) == (3, 4, "c2")
    assert feed.requests == [None, "c1", "c1", "c1", "c2"]
    assert waits == [0.5, 0.0]  # exponential backoff, then Retry-After
    assert load_cursor(engine, "shop") == "c2" and count(engine) == 4
    # Later: a new page appears; a restart starts from the stored cursor.
    feed.pages["c2"] = {
        "events": [{"type": "search", "user_id": "p1", "ts": 1_775_000_200, "message_id": "c0"}],
        "next_cursor": "c3",
    }
    feed.pages["c3"] = {"events": [], "next_cursor": "c3"}
    feed.requests.clear()
    again = poll_once(engine, config, sleep=waits.append)
    assert feed.requests == ["c2", "c3"] and again.report.accepted == 1 and count(engine) == 5


def test_persistent_failures_stop_without_moving_the_cursor(feed, fresh_sqlite):
    engine = open_db(fresh_sqlite())
    config = PollConfig(name="shop", url=feed.url, max_attempts=3)
    feed.failures["c1"] = [(500, {})] * 5
    with pytest.raises(PollError, match="gave up after 3 attempts \\(HTTP 500\\)"):
        poll_once(engine, config, sleep=lambda s: None)
    assert load_cursor(engine, "shop") == "c1"  # page one is stored, page two is next
    assert count(engine) == 3
    feed.failures["c1"] = [(404, {})]
    with pytest.raises(PollError, match="HTTP 404"):
        poll_once(engine, config, sleep=lambda s: None)


def test_the_poll_command_reads_its_settings_section(
    feed, fresh_sqlite, tmp_path, monkeypatch, capsys
):
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGFLOW_CONFIG", raising=False)
    monkeypatch.delenv("SEGFLOW_DATABASE_URL", raising=False)
    db = fresh_sqlite()
    config = tmp_path / "segflow.toml"
    config.write_text(
        f'[segflow]\ndatabase_url = "{db}"\n\n'
        f'[[segflow.sources.poll]]\nname = "shop"\nurl = "{feed.url}"\n'
    )
    assert main(["poll", "shop", "--once"]) == 0
    assert capsys.readouterr().out.strip() == (
        "shop: 3 page(s), 4 new events, 0 duplicates, 0 rejected"
    )
    assert load_cursor(open_db(db), "shop") == "c2"
    assert main(["poll", "other", "--once"]) == 2
    assert "no poll named 'other' in [[sources.poll]] (shop)" in capsys.readouterr().err
    # A bad value: one line naming the file, the section and the key.
    config.write_text(
        f'[[sources.poll]]\nname = "shop"\nurl = "{feed.url}"\ninterval_seconds = 0\n'
    )
    assert main(["--db", db, "poll", "shop", "--once"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: segflow.toml: [sources.poll] 0.interval_seconds: Input should be greater than 0"
    )
    # A failing endpoint with --once: one line, status 1.
    config.write_text(f'[[sources.poll]]\nname = "shop"\nurl = "{feed.url}"\nmax_attempts = 1\n')
    feed.failures["c2"] = [(404, {})]
    assert main(["--db", db, "poll", "shop", "--once"]) == 1
    assert "error: shop: HTTP 404 from" in capsys.readouterr().err
