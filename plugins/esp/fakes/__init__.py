"""Local fakes of the ESP and CRM APIs segflow syncs to, and ``segflow fake-esp``.

Each fake (``klaviyo``, ``mailchimp``, ``hubspot``) is a real HTTP server on
127.0.0.1 implementing the endpoints the connectors use, with the vendor's
status codes, error bodies, rate limits and state, plus fault injection
(``plugins.esp.fakes.server``). The tests drive each one with the vendor's
official Python SDK, which shows it speaks the real API; the connectors are
tested only against the fakes, over HTTP.

A fake's module has ``make_api(tier, faults) -> FakeApi`` and ``TIERS`` (the
rate-limit tiers it knows, the first the default).
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from core import UsageError, hookimpl

FAKES = {
    "klaviyo": "plugins.esp.fakes.klaviyo",
    "mailchimp": "plugins.esp.fakes.mailchimp",
    "hubspot": "plugins.esp.fakes.hubspot",
}


def make_fake(kind: str, tier: str | None = None, faults: Any = None) -> Any:
    """The fake API ``kind`` (a FakeApi, not yet served) at ``tier``."""
    from plugins.esp.fakes.server import Faults

    if kind not in FAKES:
        raise UsageError(f"no fake named {kind!r} (fakes: {', '.join(FAKES)})")
    module = importlib.import_module(FAKES[kind])
    if tier is not None and tier not in module.TIERS:
        raise UsageError(f"{kind} has no tier {tier!r} (tiers: {', '.join(module.TIERS)})")
    return module.make_api(tier or module.TIERS[0], faults or Faults())


def fake_esp_command(
    kind: Annotated[str, typer.Argument(help="klaviyo, mailchimp or hubspot.")],
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")
    ] = 0,
    tier: Annotated[
        str | None, typer.Option(help="Rate-limit tier (default: the fake's first).")
    ] = None,
    faults: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of requests that meet a fault.")
    ] = 0.0,
    seed: Annotated[
        int, typer.Option(help="Seed of the fault draws (same seed, same faults).")
    ] = 0,
) -> None:
    """Serve a local fake of an ESP/CRM API (for tests and benchmarks) until Ctrl-C."""
    from plugins.esp.fakes.server import Faults, serve_forever

    serve_forever(make_fake(kind, tier, Faults(faults, seed)), port=port)


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("fake-esp")(fake_esp_command)
    cli.add_command(typer.main.get_command(commands), "fake-esp")
