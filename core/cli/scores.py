"""``segflow scores``: compute and look at scores (models come from plugins)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.cli.context import AsOf, Group, obj, out, parse_as_of
from core.plugins import scoring_models

app = typer.Typer(
    help="Scores: engagement points, RFM, predictive value.", no_args_is_help=True, cls=Group
)


@app.command("run")
def scores_run(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Folder of score YAML files.")] = Path(
        "scores"
    ),
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Compute every score defined in DIR for everyone and store it (history kept)."""
    from core.scoring import load_score_files, run_scores

    when = parse_as_of(as_of)
    counts = run_scores(obj(ctx).engine(), load_score_files(directory, scoring_models()), when)
    if as_json:
        out.print_json(json.dumps({"as_of": when.isoformat(), "scored": counts}))
        return
    table = Table("score", "profiles scored", title=f"scores as of {when.isoformat()}")
    for name, n in sorted(counts.items()):
        table.add_row(name, f"{n:,}")
    out.print(table)


@app.command("show")
def scores_show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A person's latest scores, with their components."""
    from core.profiles import profile_scores

    rows = profile_scores(obj(ctx).engine(), user_id)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("score", "value", "as of", "runs", "components", title=user_id)
    for r in rows:
        comps = ", ".join(f"{k}={v}" for k, v in r["components"].items())
        table.add_row(r["score"], f"{r['value']:.3f}", r["as_of"], str(r["history"]), comps)
    out.print(table)
