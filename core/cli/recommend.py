"""``segflow recommend``: one person's recommendations; refresh them for everyone."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cli.context import AsOf, Group, Json, obj, out, parse_as_of


class RecommendGroup(Group):
    """``segflow recommend USER_ID`` is ``segflow recommend show USER_ID``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    help="Product recommendations: `segflow recommend USER_ID`, `segflow recommend refresh`.",
    no_args_is_help=True,
    cls=RecommendGroup,
)
Recommender = Annotated[
    str, typer.Option("--recommender", help="Registered recommender (segflow plugins).")
]


@app.command("show")
def recommend_show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id, anonymous id or email.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many products.")] = 8,
    as_of: AsOf = None,
    recommender: Recommender = "related",
    as_json: Json = False,
) -> None:
    """The products recommended to one person, best first."""
    from core.profiles import find_profile_id
    from core.recommendations import recommend

    when = parse_as_of(as_of)
    with obj(ctx).engine().connect() as conn:
        profile_id = find_profile_id(conn, user_id)
        picks = recommend(conn, profile_id, k=k, as_of=when, recommender=recommender)
    if as_json:
        out.print_json(json.dumps(picks, default=str))
        return
    table = Table(
        "#", "product", "name", "category", "price", "score", title=f"{recommender} for {user_id}"
    )
    for rank, p in enumerate(picks, 1):
        price = "" if p["price"] is None else f"{p['price']:,.2f} {p['currency'] or ''}".strip()
        table.add_row(
            str(rank), p["id"], p["name"] or "", p["category"] or "", price, f"{p['score']:.4g}"
        )
    out.print(table)
    if not picks:
        out.print("nothing to recommend: refresh first (`segflow recommend refresh`)?")


@app.command("refresh")
def recommend_refresh(
    ctx: typer.Context,
    as_of: AsOf = None,
    names: Annotated[
        list[str] | None,
        typer.Option("--recommender", help="Only these recommenders (default: all)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Recompute related products and best-sellers for everyone, from the events up to --as-of."""
    from core.recommendations import refresh_recommendations

    done = refresh_recommendations(obj(ctx).engine(), parse_as_of(as_of), names=names or None)
    if as_json:
        out.print_json(json.dumps(done))
        return
    table = Table("recommender", "related pairs", "best-sellers", "seconds", title="refreshed")
    for d in done:
        table.add_row(d["recommender"], f"{d['related']:,}", f"{d['popular']:,}", f"{d['seconds']}")
    out.print(table)
