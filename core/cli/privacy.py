"""``segflow privacy export | erase | purge | rotate-key``: a person's data, out or
gone; old events gone; the encryption key of the store, changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.cli.context import Group, Json, err, obj, out

app = typer.Typer(
    help="Access and erasure of one person's data (GDPR); retention; the encryption key at rest.",
    no_args_is_help=True,
    cls=Group,
)

Who = Annotated[str, typer.Argument(help="User id (or an anonymous id or email).")]


@app.command("export")
def privacy_export(
    ctx: typer.Context,
    user_id: Who,
    output: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here instead of stdout.")
    ] = None,
) -> None:
    """Everything held about a person, by table, as JSON."""
    from core.privacy import export_audited

    cli = obj(ctx)
    document = json.dumps(
        export_audited(cli.engine(), cli.settings, user_id), indent=2, default=str
    )
    if output is None:
        print(document)
        return
    output.write_text(document + "\n")
    err.print(f"wrote {output}", markup=False)


@app.command("erase")
def privacy_erase(
    ctx: typer.Context,
    user_id: Who,
    vacuum: Annotated[
        bool,
        typer.Option(
            help="Rebuild the database file afterwards, so no copy of the deleted rows is "
            "left in its free space (docs/privacy.md)."
        ),
    ] = True,
    as_json: Json = False,
) -> None:
    """Delete a person from every table and every connector that deletes; keep
    only keyed hashes of their ids, so their later events are dropped."""
    from core.privacy import erase_everywhere

    cli = obj(ctx)
    report = erase_everywhere(cli.engine(), cli.settings, user_id, vacuum=vacuum)
    if as_json:
        cli.print_json(report.model_dump())
        return
    if report.already_erased:
        out.print(f"already erased (subject {report.subject[:12]})", markup=False)
    else:
        rows = sum(report.deleted.values())
        tables = sum(1 for n in report.deleted.values() if n)
        out.print(
            f"erased: {rows:,} rows from {tables} tables, {report.suppressed} identifiers "
            f"suppressed (subject {report.subject[:12]})",
            markup=False,
        )
    for name, n in sorted(report.confirmed.items()):
        out.print(f"{name}: deleted ({n})", markup=False)
    for name, reasons in sorted(report.pending.items()):
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        out.print(f"{name}: pending, sent again by `segflow sync run` ({why})", markup=False)


@app.command("pending")
def privacy_pending(ctx: typer.Context, as_json: Json = False) -> None:
    """Erasures a connector has not confirmed yet, by connector and last reason
    (each `segflow sync run` of the connector sends them again)."""
    from core.privacy import pending_deletions

    cli = obj(ctx)
    pending = pending_deletions(cli.engine())
    if as_json:
        cli.print_json(pending)
        return
    if not pending:
        out.print("no erasure is pending at any connector", markup=False)
    for name, reasons in sorted(pending.items()):
        for reason, n in sorted(reasons.items()):
            out.print(f"{name}: {n:,} pending ({reason})", markup=False)


@app.command("purge")
def privacy_purge(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Measure retention back from this time (ISO 8601); default now."
        ),
    ] = None,
    chunk: Annotated[
        int, typer.Option("--chunk", min=1, max=100_000, help="Events deleted per transaction.")
    ] = 10_000,
    as_json: Json = False,
) -> None:
    """Delete the events older than their type's \\[privacy.retention] period,
    and mark their people for the next `segflow segments run`."""
    from core.privacy import purge_events

    cli = obj(ctx)
    retention = cli.settings.privacy.retention
    report = purge_events(
        cli.engine(),
        retention,
        as_of=cli.as_of(as_of),
        dry_run=dry_run,
        chunk=chunk,
        progress=cli.progress,
    )
    if as_json:
        cli.print_json(report.model_dump(mode="json") | {"total": report.total})
        return
    if not report.cutoffs:
        out.print(
            "no retention periods are set ([privacy.retention] in segflow.toml)", markup=False
        )
        return
    verb = "would delete" if dry_run else "deleted"
    for type_ in sorted(report.deleted):
        cutoff = report.cutoff(type_)
        when = cutoff.isoformat() if cutoff else "?"
        out.print(
            f"{type_}: {verb} {report.deleted[type_]:,} events older than {when}", markup=False
        )
    by_default = any(t not in report.cutoffs for t in report.deleted)
    for type_, cutoff in sorted(report.cutoffs.items()):
        if type_ == "default" and not by_default:
            out.print(f"other types: none older than {cutoff.isoformat()}", markup=False)
        elif type_ != "default" and type_ not in report.deleted:
            out.print(f"{type_}: none older than {cutoff.isoformat()}", markup=False)
    tail = "" if dry_run else f"; {report.profiles:,} people due at the next `segflow segments run`"
    out.print(f"{verb} {report.total:,} events{tail}", markup=False)


@app.command("rotate-key")
def privacy_rotate_key(
    ctx: typer.Context,
    chunk: Annotated[int, typer.Option(min=1, help="Rows rewritten per transaction.")] = 500,
    vacuum: Annotated[
        bool,
        typer.Option(
            help="Rebuild the database file afterwards, so no value under the old key (or "
            "plaintext) is left in its free space."
        ),
    ] = True,
    as_json: Json = False,
) -> None:
    """Re-encrypt every sealed value and blind index with SEGFLOW_ENCRYPTION_KEY
    (old keys in SEGFLOW_ENCRYPTION_OLD_KEYS); on a plaintext store, encrypt it.
    Safe to interrupt and run again."""
    from core.privacy.rotate import rotate_keys

    report = rotate_keys(obj(ctx).engine(), chunk=chunk, vacuum=vacuum)
    if as_json:
        obj(ctx).print_json(report.model_dump())
        return
    for table, n in report.rewritten.items():
        out.print(f"{table}: {n:,} rows rewritten", markup=False)
    if report.duplicates:
        out.print(f"identities: {report.duplicates:,} duplicate addresses dropped", markup=False)
    if report.unrecoverable:
        out.print(
            f"identities: {report.unrecoverable:,} blind indexes under an old key without their "
            "address: left as they are",
            markup=False,
        )
    if report.changed_meanwhile:
        out.print(
            f"{report.changed_meanwhile:,} rows changed while they were rewritten: run "
            "rotate-key again before dropping the old keys",
            markup=False,
        )
    elif not report.unrecoverable:
        out.print(f"everything is under key {report.key_id}; the old keys are no longer needed",
                  markup=False)  # fmt: skip


@app.command("new-key")
def privacy_new_key() -> None:
    """Print a fresh encryption key (for SEGFLOW_ENCRYPTION_KEY)."""
    from core.privacy.crypto import new_key

    print(new_key())
