"""``segflow catalog``: the product catalogue (import a file, refresh from events)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import Group, Json, err, obj, out
from core.cli.import_ import _pairs
from core.types import UsageError

app = typer.Typer(help="The product catalogue.", no_args_is_help=True, cls=Group)

MAPPING_SUFFIXES = (".yaml", ".yml")


def _split_maps(maps: list[str] | None, mapping: Path | None) -> tuple[Path | None, list[str]]:
    """``--map`` takes COLUMN=FIELD pairs, as ``segflow import`` does, or the
    mapping file itself (``--map products.yaml``, the same as ``--mapping``)."""
    pairs = []
    for item in maps or []:
        if "=" not in item and item.endswith(MAPPING_SUFFIXES):
            if mapping is not None:
                raise UsageError(f"--map {item}: one mapping file only (already {mapping})")
            mapping = Path(item)
        else:
            pairs.append(item)
    return mapping, pairs


@app.command("import")
def catalog_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines file of products (.gz too).")],
    maps: Annotated[
        list[str] | None,
        typer.Option("--map", help="COLUMN=FIELD[:int|float|str|bool], or a YAML mapping file."),
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="YAML mapping file for CSV columns.")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE for every row.")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Source name: csv, jsonl.")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA timezone for updated_at values without offset.")
    ] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter.")] = None,
    as_json: Json = False,
    show: Annotated[int, typer.Option(help="How many rejected rows to list.")] = 50,
) -> None:
    """Import products: known ones updated, new ones added, bad rows listed and
    the good ones kept. Fields: id, name, category, price, currency, url,
    image_url, in_stock, updated_at; an empty cell keeps the stored value.

    Exit status: 0 all rows accepted, 1 some rejected, 2 usage error.
    """
    from core.catalog import import_catalog
    from core.ingestion.options import load_read_options
    from core.plugins import file_sources

    mapping, pairs = _split_maps(maps, mapping)
    options = load_read_options(
        mapping,
        columns=_pairs(pairs, "--map"),
        constants=_pairs(sets, "--set"),
        timezone=timezone,
        delimiter=delimiter,
    )
    report = import_catalog(obj(ctx).engine(), file, options, sources=file_sources(), fmt=fmt)
    if as_json:
        out.print_json(json.dumps({str(file): report.as_dict()}))
    else:
        out.print(str(file), soft_wrap=True, markup=False, highlight=False)
        table = Table("read", "accepted", "rejected", "products", "new")
        table.add_row(
            f"{report.received:,}",
            f"{report.accepted:,}",
            f"{len(report.rejected):,}",
            f"{report.products:,}",
            f"{report.created:,}",
        )
        out.print(table)
        for rej in report.rejected[:show]:
            err.print(f"rejected {rej.location}: {rej.reason}", markup=False, highlight=False)
        if len(report.rejected) > show:
            more = len(report.rejected) - show
            err.print(f"... and {more:,} more rejected rows (use --json for all)")
    if report.rejected:
        raise typer.Exit(1)


@app.command("refresh")
def catalog_refresh(ctx: typer.Context, as_json: Json = False) -> None:
    """Update the catalogue from the product events stored since the last refresh.

    Ingestion does this after each batch (a bulk load: at its end); run it
    after an import with --no-realtime or one that was interrupted."""
    from core.catalog import refresh_products

    updated = refresh_products(obj(ctx).engine())
    if as_json:
        out.print_json(json.dumps({"products_updated": updated}))
    else:
        out.print(f"{updated:,} products updated from events")
