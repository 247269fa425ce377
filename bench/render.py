"""Complete personalised emails per second on one core, against the bare Jinja2 render.

A complete email is what a send needs: ``core.personalize.render_email`` (the
person's context read from the database, recommendations, the sandboxed
subject/HTML/text render, CSS inlined, every link signed, the open pixel and
the unsubscribe headers) and then its MIME message as delivery builds it
(``core.personalize.mime.to_mime``: an ``EmailMessage``, multipart/alternative,
whose wire form to_mime writes itself), serialised to bytes. The baseline, in the same
run and the same process: the bare Jinja2 render of the same two templates
(a plain ``jinja2.Environment``, no sandbox) with each person's context
already built, which is the least any templating send has to pay.

The store is the demo generator's, with its catalogue in ``products`` and the
example scores and segments run on it (built once, cached in
``bench/.results/``); the people are identified ones with a cart add, so the
cart block and its prices are exercised, taken in turn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

from bench import common
from bench.common import Result, ratio, timer

TITLE = "Complete personalised emails (render + tracking + CSS + MIME) vs bare Jinja2"

TEMPLATE = "cart_abandonment"
PEOPLE_FULL, PEOPLE_QUICK = 3000, 300
EMAILS_FULL, EMAILS_QUICK = 3000, 300
SEED = 7
DAYS = 30
END = datetime(2025, 6, 1, tzinfo=UTC)
SECRET = "bench-secret-of-enough-length"
TARGET = 1000.0  # complete emails a second on one core
SENDER = "Demo Store <shop@shop.example.com>"

_facts: dict[str, Any] = {}


def people_for(quick: bool) -> int:
    return PEOPLE_QUICK if quick else PEOPLE_FULL


def emails_for(quick: bool) -> int:
    return EMAILS_QUICK if quick else EMAILS_FULL


# -- the store (prepared, not timed) -----------------------------------------------------


def build_store(url: str, people: int) -> dict[str, Any]:
    from core.db import open_db
    from core.db.tables import PRODUCTS
    from core.plugins import condition_kinds, scoring_models
    from core.scoring import load_score_files, run_scores
    from core.segments.store import load_segment_files, run_segments
    from plugins.demo.generator import catalogue, generate

    facts = common.ingest_events(
        url, generate(people, seed=SEED, days=DAYS, end=END), _events_of(people), "render store"
    )
    engine = open_db(url)
    with engine.begin() as conn:
        conn.execute(
            PRODUCTS.insert(),
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "category": p.category,
                    "price": p.price,
                    "currency": "USD",
                    "url": f"https://shop.example.com/p/{p.id}",
                    "image_url": f"https://shop.example.com/img/{p.id}.jpg",
                    "in_stock": n % 9 != 0,
                }
                for n, p in enumerate(catalogue(SEED))
            ],
        )
    run_scores(engine, load_score_files(common.ROOT / "examples" / "scores", scoring_models()), END)
    kinds = condition_kinds()
    run_segments(
        engine,
        END,
        kinds=kinds,
        definitions=load_segment_files(common.ROOT / "examples" / "segments", kinds),
    )
    engine.dispose()
    return facts | {"people": people}


def recommender() -> tuple[Callable[..., list[dict[str, Any]]], str]:
    """``core.recommend`` when the catalogue's recommender is installed; else
    in-stock products of the category the person last viewed, read per person."""
    import core

    found = getattr(core, "recommend", None)
    if found is not None:
        return found, "core.recommend"

    def in_category(conn: Any, profile_id: int, *, k: int, as_of: Any) -> list[dict[str, Any]]:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cur = conn.connection.cursor()
        try:
            cur.execute(
                "SELECT id, name, category, price, currency, url, image_url, in_stock"
                " FROM products WHERE in_stock AND category = (SELECT p.category FROM events e"
                f" JOIN products p ON p.id = e.product_id WHERE e.profile_id = {mark} AND"
                " e.type = 'product_view' ORDER BY e.ts DESC LIMIT 1) ORDER BY price DESC"
                f" LIMIT {int(k)}",
                (profile_id,),
            )
            rows = cur.fetchall()
        finally:
            cur.close()
        keys = ("id", "name", "category", "price", "currency", "url", "image_url", "in_stock")
        return [dict(zip(keys, r, strict=True)) | {"score": 1.0} for r in rows]

    return in_category, "in-stock products of the last viewed category (one query)"


def chosen_people(engine: Any, n: int) -> list[int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT p.id FROM profiles p JOIN events e ON e.profile_id = p.id"
                    " WHERE p.email IS NOT NULL AND p.merged_into IS NULL"
                    " AND e.type = 'add_to_cart' ORDER BY p.id LIMIT :n"
                ),
                {"n": n},
            ).scalars()
        )


# -- the cases ---------------------------------------------------------------------------


def mime(email: Any) -> bytes:
    """The message delivery hands a connector: ``core.personalize.mime.to_mime``
    (``EmailMessage``, policy SMTP, quoted-printable parts), as bytes."""
    from core.personalize.mime import to_mime

    return to_mime(email, SENDER).as_bytes()


def mime_compat32(email: Any) -> bytes:
    """The same message through the older ``email.mime`` classes (policy compat32)."""
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    message = MIMEMultipart("alternative")
    message["From"] = SENDER
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Message-ID"] = f"<{email.idempotency_key.replace(':', '.')}@shop.example.com>"
    for name, value in email.headers.items():
        message[name] = value
    message.attach(MIMEText(email.text, "plain", "utf-8"))
    message.attach(MIMEText(email.html, "html", "utf-8"))
    return message.as_bytes()


def bare_environment() -> Any:
    import jinja2

    from core.personalize.filters import BUILTIN_FILTERS
    from core.personalize.templates import TEMPLATES_DIR

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.filters.update(BUILTIN_FILTERS)
    return env


def contexts(conn: Any, ids: list[int], settings: Any, recommend: Any) -> list[dict[str, Any]]:
    """Each person's context as render_email builds it (tracked unsubscribe link included)."""
    from core.personalize.context import read_person
    from core.personalize.links import Recipient
    from core.personalize.render import _context
    from core.types import TemplateMessage

    out = []
    for pid in ids:
        person = read_person(conn, pid, None)
        key = f"bench:{pid}"
        link = Recipient(
            settings.email.base_url, SECRET, key, person.user_id, person.email, TEMPLATE
        ).unsubscribe()
        message = TemplateMessage(TEMPLATE, "v", key, pid, False, None)
        out.append(_context(conn, person, settings.email, link, message, recommend))
    return out


def run(quick: bool) -> list[Result]:
    from core.config import Settings
    from core.db import open_db
    from core.personalize import render_email

    people = people_for(quick)
    n = emails_for(quick)
    _facts["load"] = os.getloadavg()[0]
    path, meta = common.sqlite_cache(
        f"render-demo-{people}-s{SEED}-d{DAYS}",
        _events_of(people),
        lambda url: build_store(url, people),
    )
    with common.scratch_dir() as scratch:
        db = scratch / "render.db"
        common.copy_sqlite(path, db)
        engine = open_db(f"sqlite:///{db}")
        settings = Settings(secret_key=SECRET)
        recommend, recommend_note = recommender()
        with engine.connect() as conn:
            ids = chosen_people(engine, 500)
            order = [ids[i % len(ids)] for i in range(n)]
            ctxs = contexts(conn, order, settings, recommend)
            env = bare_environment()
            html_t = env.get_template(f"{TEMPLATE}.html.j2")
            text_t = env.get_template(f"{TEMPLATE}.txt.j2")
            # warm: compile segflow's templates, fill caches, as a running sender has
            for pid in ids[:20]:
                render_email(conn, TEMPLATE, pid, settings=settings, recommendations=recommend)

            def bare() -> float:
                with common.Quiet(), timer() as t:
                    for ctx in ctxs:
                        html_t.render(ctx)
                        text_t.render(ctx)
                return t[0]

            rendered: list[Any] = []

            def segflow(with_mime: bool) -> float:
                rendered.clear()
                label = "render complete" if with_mime else "render_email"
                with common.Quiet(), timer(label, profile=with_mime) as t:
                    for i, pid in enumerate(order):
                        email = render_email(
                            conn,
                            TEMPLATE,
                            pid,
                            settings=settings,
                            recommendations=recommend,
                            message_key=f"bench:{i}",
                        )
                        if with_mime:
                            mime(email)
                        rendered.append(email)
                return t[0]

            k = common.repeats(quick)
            times: dict[str, list[float]] = {"bare": [], "render": [], "complete": []}
            with common.progress() as prog:
                task = prog.add_task("render: bare / render_email / complete", total=k)
                for _ in range(k):  # interleaved, so a slow spell hits every case alike
                    times["bare"].append(bare())
                    times["render"].append(segflow(False))
                    times["complete"].append(segflow(True))
                    prog.update(task, advance=1)
            emails = list(rendered)
            mime_times: list[float] = []
            compat_times: list[float] = []
            for _ in range(k):
                with common.Quiet(), timer() as t_mime:
                    messages = [mime(e) for e in emails]
                mime_times.append(t_mime[0])
                with common.Quiet(), timer() as t_compat:
                    older = [mime_compat32(e) for e in emails]
                compat_times.append(t_compat[0])
            stages = stage_costs(conn, order[:500], settings, recommend, emails[:500])
        engine.dispose()
    _facts.update(meta | {"distinct_people": len(ids), "recommend": recommend_note})
    mime_best = (min(mime_times), min(compat_times))
    return results(n, times, mime_best, emails, (messages, older), stages)


def _events_of(people: int) -> int:
    """How many events the cached store holds (its cache key checks it)."""
    from plugins.demo.generator import generate

    return sum(1 for _ in generate(people, seed=SEED, days=DAYS, end=END))


def stage_costs(
    conn: Any, ids: list[int], settings: Any, recommend: Any, emails: list[Any]
) -> dict[str, float]:
    """Microseconds per email of each step, each timed alone over the same people."""
    from core.personalize.context import read_person
    from core.personalize.links import Recipient, track
    from core.personalize.render import _INLINER, templates_for

    compiled = templates_for(settings).get(TEMPLATE)
    per: dict[str, float] = {}
    t0 = time.perf_counter()
    people = [read_person(conn, pid, None) for pid in ids]
    per["read the person (5 statements)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctxs = contexts(conn, ids, settings, recommend)
    per["cart, viewed, recommendations"] = (
        time.perf_counter() - t0 - per["read the person (5 statements)"]
    )
    t0 = time.perf_counter()
    parts = [
        (compiled.html.render(c), compiled.text.render(c), compiled.subject.render(c)) for c in ctxs
    ]
    per["sandboxed Jinja2 (subject, HTML, text)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inlined = [_INLINER.inline(h) for h, _, _ in parts]
    per["CSS inlining (css-inline)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for person, markup, (_, text, _) in zip(people, inlined, parts, strict=True):
        who = Recipient(
            settings.email.base_url, SECRET, "k", person.user_id, person.email, TEMPLATE
        )
        track(markup, text, who, who.unsubscribe())
    per["tracking (sign links, pixel)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for email in emails:
        mime(email)
    per["MIME (to_mime, as_bytes)"] = time.perf_counter() - t0
    return {name: seconds / len(ids) * 1e6 for name, seconds in per.items()}


def results(
    n: int,
    times: dict[str, list[float]],
    mime_seconds: tuple[float, float],
    emails: list[Any],
    built: tuple[list[bytes], list[bytes]],
    stages: dict[str, float],
) -> list[Result]:
    messages, older = built
    base = Result("bare Jinja2 render of the same templates, contexts prebuilt (baseline)", n,
                  min(times["bare"]), ratio=1.0)  # fmt: skip
    render = Result("segflow render_email: context, recommendations, tracking, CSS", n,
                    min(times["render"]))  # fmt: skip
    render.ratio = ratio(render.seconds, base.seconds)
    complete = Result("complete email: render_email + MIME (to_mime)", n,
                      min(times["complete"]))  # fmt: skip
    complete.ratio = ratio(complete.seconds, base.seconds)
    alone = Result("MIME alone: to_mime of the rendered emails", n, mime_seconds[0])
    alone.ratio = ratio(alone.seconds, base.seconds)
    compat = Result("MIME alone: email.mime MIMEMultipart (compat32), same messages", n,
                    mime_seconds[1])  # fmt: skip
    compat.ratio = ratio(compat.seconds, base.seconds)
    if all(message_from_bytes(raw).is_multipart() for raw in older):
        compat.notes.append("verified: every message parses as multipart")
    else:
        compat.fail("verification failed: a compat32 message does not parse as multipart")
    for r, key in ((base, "bare"), (render, "render"), (complete, "complete")):
        if len(times[key]) > 1:
            r.notes.append(
                f"best of {len(times[key])} runs ({', '.join(f'{s:.2f}' for s in times[key])} s)"
            )
    # verified: every email is complete and its MIME message parses with both parts
    for email, raw in zip(emails, messages, strict=True):
        parsed = message_from_bytes(raw, policy=policy.SMTP)
        kinds = [p.get_content_type() for p in parsed.walk()]
        problems = [
            what
            for what, ok in (
                ("no open pixel", "/t/o/" in email.html),
                ("no click link", "/t/c/" in email.html and "/t/c/" in email.text),
                ("no List-Unsubscribe", "List-Unsubscribe" in parsed),
                (
                    "not multipart/alternative with both parts",
                    kinds == ["multipart/alternative", "text/plain", "text/html"],
                ),  # fmt: skip
                ("CSS not inlined", "<style>" not in email.html and 'style="' in email.html),
            )
            if not ok
        ]
        if problems:
            complete.fail(f"verification failed for {email.idempotency_key}: {', '.join(problems)}")
            break
    else:
        complete.notes.append(
            f"verified: {len(emails):,} emails with pixel, click links, List-Unsubscribe, "
            "inlined CSS; every MIME message parses as multipart/alternative (text, html)"
        )
    sizes = sorted(len(e.html.encode()) for e in emails)
    render.notes.append(
        f"HTML {sizes[len(sizes) // 2] / 1024:.1f} KB median, {sizes[-1] / 1024:.1f} KB largest"
    )
    total = sum(stages.values())
    complete.notes.append(
        "where the time goes, per email: "
        + ", ".join(f"{name} {us:,.0f} us ({100 * us / total:.0f}%)" for name, us in stages.items())
    )
    complete.check(min_rate=TARGET)
    return [base, render, complete, alone, compat]


def describe(quick: bool) -> str:
    people = _facts.get("people", people_for(quick))
    return "\n".join(
        [
            f"- store: `plugins.demo.generator.generate({people:,}, seed={SEED}, days={DAYS}, "
            f"end={END.date().isoformat()})` ({_facts.get('events', 0):,} events), its catalogue "
            "in `products` (every ninth product out of stock), the example scores and "
            "segments run at the end (SQLite, built once and cached in `bench/.results/`)",
            f'- emails: `render_email(conn, "{TEMPLATE}", person, settings=..., '
            "recommendations=...)` for "
            f"{emails_for(quick):,} emails over {_facts.get('distinct_people', 0)} identified "
            "people with a cart add, in turn, one process, one connection; "
            f"recommendations: {_facts.get('recommend', '')}",
            "- complete: plus the MIME message delivery sends: `core.personalize.mime.to_mime` "
            "(an `EmailMessage` with From/To/Subject/Date/Message-ID and the unsubscribe "
            "headers, quoted-printable text and HTML parts, its bytes written by to_mime and "
            "equal to the email package's generator output), `as_bytes()`",
            "- baseline: a plain `jinja2.Environment` (no sandbox) rendering the same HTML and "
            "text templates with each person's context built beforehand, same run",
            f"- target: complete emails >= {TARGET:,.0f}/s on one core (the events/s column "
            "is emails/s); the machine's load average when the run started: "
            f"{_facts.get('load', 0):.2f} (other work on it slows every case alike)",
        ]
    )
