"""Predictive customer scores: BG/NBD purchases and P(alive), Gamma-Gamma spend, CLV.

Models (fitted by maximum likelihood with ``scipy.optimize.minimize``):

- BG/NBD (Fader, Hardie, Lee 2005, "Counting your customers the easy way",
  Marketing Science 24(2)): while alive a customer buys as a Poisson process
  with rate lambda ~ Gamma(r, alpha); after every purchase they drop out with
  probability p ~ Beta(a, b).
- Gamma-Gamma (Fader, Hardie, Lee 2005, "RFM and CLV", JMR 42(4); Fader,
  Hardie 2013, "The Gamma-Gamma model of monetary value"): a customer's
  transaction values are Gamma(p, nu) with nu ~ Gamma(q, v), independent of the
  purchase process.

Data conventions (chosen so that the published CDNOW summary is reproduced
exactly, see ``tests/test_predictive.py``):

- a *purchase day* is the UTC calendar date of a purchase event's ``ts``;
  several purchases on one day are one transaction (their values summed);
- only events with ``ts <= as_of`` count; the period ends on the UTC date of
  ``as_of`` (any instant of 1997-09-30 gives the CDNOW calibration period,
  whose last purchases are stamped 1997-09-30 00:00 UTC);
- x = purchase days - 1 (repeat transactions), t_x = (last day - first day) /
  unit, T = (as_of day - first day) / unit, unit = ``unit_days`` days (a week);
- monetary = mean value of the repeat purchase days (the first day is left out,
  as in Fader/Hardie and lifetimes), 0 where x = 0.

Every score is finite: too little data, a failed optimisation or a non-finite
result raises ``ScoreError`` saying what is missing instead of storing NaN.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from core import UsageError, hookimpl


def fit_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to fit: bgnbd.")],
    event: Annotated[str, typer.Option(help="The purchase event type.")] = "purchase",
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Fit as of this time (ISO 8601); default now."),
    ] = None,
    horizon: Annotated[float, typer.Option(help="Prediction horizon, in weeks.")] = 39.0,
    name: Annotated[str, typer.Option(help="Name of the stored scores.")] = "bgnbd",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fit BG/NBD (+ Gamma-Gamma) by maximum likelihood; store P(alive), purchases, CLV."""
    if model != "bgnbd":
        raise UsageError(f"unknown model {model!r} (available: bgnbd)")
    from plugins.scoring.predictive_model import fit_and_store

    cli = ctx.obj
    when = cli.as_of(as_of)
    figures, stored = fit_and_store(
        cli.engine(), event=event, as_of=when, horizon=horizon, name=name
    )
    if as_json:
        cli.print_json(figures)
        return
    from rich.table import Table

    table = Table("parameter", "value", title=f"BG/NBD fit as of {when.isoformat()}")
    for k, v in figures.items():
        table.add_row(k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}")
    cli.out.print(table)
    cli.out.print(", ".join(f"{n}: {c:,} profiles" for n, c in stored.items()))


@hookimpl
def register_commands(cli) -> None:
    commands = typer.Typer()
    commands.command("fit")(fit_command)
    cli.commands["scores"].add_command(typer.main.get_command(commands), "fit")


@hookimpl
def register_scoring_models(register) -> None:
    # The model's module loads SQLAlchemy and, when fitting, numpy and scipy:
    # imported when models are asked for, not by every command.
    from plugins.scoring.predictive_model import BGNBD

    register(BGNBD)


def __getattr__(name: str) -> Any:
    from plugins.scoring import predictive_model

    return getattr(predictive_model, name)
