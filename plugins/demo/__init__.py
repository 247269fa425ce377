"""The demo store: a synthetic outdoor-gear shop and ``segflow demo``.

``plugins.demo.generator`` makes the events (deterministic for a seed);
``plugins.demo.flow.demo`` writes them to a file and runs the pipeline flow
on them (import, scores, segments, workflows, sends), today and a day later.
This module registers the command; ``make demo`` runs ``segflow demo --reset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from core import bulk_import_scope, hookimpl


def demo_command(
    ctx: typer.Context,
    people: Annotated[int, typer.Option(min=1, help="Known people in the store.")] = 5000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    reset: Annotated[
        bool, typer.Option(help="Delete the previous demo run first (refused on real data).")
    ] = False,
    segments: Annotated[
        Path | None,
        typer.Option(help="Segment definitions to run on the store (default: the examples)."),
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(help="Score definitions to compute first (default: the examples)."),
    ] = None,
    workflows: Annotated[
        Path | None,
        typer.Option(help="Workflow definitions to run (default: the examples)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Generate a realistic outdoor-gear store and run the whole pipeline on it
    through Prefect (import, scores, segments, workflows, sends), today and a day
    later; summarise."""
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    from plugins.demo.flow import demo
    from plugins.demo.store import refuse_real_data

    cli = ctx.obj
    engine = cli.engine()
    if reset:
        # Here, not in the flow: a refusal is a message, not a failed flow run.
        refuse_real_data(engine)
    folders = {
        f"{name}_dir": str(given)
        for name, given in (("segments", segments), ("scores", scores), ("workflows", workflows))
        if given is not None
    }
    # Without PREFECT_API_URL the flow runs on a temporary local Prefect
    # server, which must not try to phone home.
    with temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}), bulk_import_scope():
        summary = demo(
            # A SecretStr: Prefect records it as asterisks, not the password.
            database_url=SecretStr(engine.url.render_as_string(hide_password=False)),
            people=people,
            days=days,
            seed=seed,
            reset=reset,
            progress=not as_json,
            **folders,
        )
    if as_json:
        cli.print_json(summary)
    else:
        for table in _tables(summary):
            cli.out.print(table)
        imported = summary["import"]
        cli.out.print(
            f"imported {imported['accepted']:,} events ({imported['duplicates']:,} duplicates "
            f"skipped, {imported['rejected']:,} rejected) into "
            f"{engine.url.render_as_string(hide_password=True)}"
        )
        _print_outbox(cli.out, summary.get("outbox"))
        _print_workflows(cli.out, summary.get("workflows"))
    if summary["import"]["rejected"]:
        raise typer.Exit(1)


def _print_outbox(out: Any, outbox: dict[str, Any] | None) -> None:
    if outbox is None:
        out.print(
            "no demo emails: tracked links need secret_key in segflow.toml "
            "(`segflow init` writes one), then run the demo again"
        )
        return
    report = outbox["report"]
    out.print(f"demo emails in {outbox['folder']}/ ({report['sent']} delivered):")
    for template, items in outbox["emails"].items():
        for item in items:
            out.print(f"  {template} to {item['to']}: {item['html'] or 'not delivered'}")


def _print_workflows(out: Any, result: dict[str, Any] | None) -> None:
    from rich.table import Table

    if not result:
        return
    table = Table(
        "workflow", "entered", "waiting", "sent", "held out", "exited", "done",
        "skipped / deferred (cap, quiet hours)",
        title=f"workflows, a day later (as of {result['as_of'][:16]})",
    )  # fmt: skip
    for name, w in result["workflows"].items():
        held = [f"skipped {_reasons(w['skipped'])}" if w["skipped"] else "",
                f"deferred {_reasons(w['deferred'])}" if w["deferred"] else ""]  # fmt: skip
        table.add_row(
            name, *(f"{w[k]:,}" for k in ("entered", "waiting", "sent", "held_out", "exited",
                                           "completed")),
            "; ".join(h for h in held if h) or "-",
        )  # fmt: skip
    out.print(table)
    if result["performed"] is None:
        out.print("workflow emails not sent: they need secret_key in segflow.toml")


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items())) or "-"


def _tables(summary: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    head = Table("", "", title="segflow demo store")
    head.add_row("profiles", f"{summary['profiles']:,}")
    head.add_row("  identified", f"{summary['identified']:,}")
    head.add_row("  anonymous", f"{summary['anonymous']:,}")
    head.add_row(
        "  identified after anonymous visits", f"{summary['identified_after_anonymous']:,}"
    )
    head.add_row("profiles merged", f"{summary['merged']:,}")
    head.add_row("events", f"{summary['events']:,}")
    head.add_row("from", str(summary["first_event"]))
    head.add_row("to", str(summary["last_event"]))
    head.add_row("revenue", f"{summary['revenue']:,.2f}")
    catalogue = summary["catalogue"]
    head.add_row(
        "products", f"{catalogue['products']:,} ({catalogue['out_of_stock']:,} out of stock)"
    )
    types = Table("event type", "events", "share", title="events by type")
    total = summary["events"] or 1
    for k, v in summary["by_type"].items():
        types.add_row(k, f"{v:,}", f"{100 * v / total:.1f}%")
    kind = "full" if summary["full_run"] else "incremental"
    sizes = Table("segment", "members", title=f"segments ({kind} run)")
    for name, size in summary["segments"].items():
        sizes.add_row(name, f"{size:,}")
    return [head, types, sizes]


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("demo")(demo_command)
    cli.add_command(typer.main.get_command(commands), "demo")
