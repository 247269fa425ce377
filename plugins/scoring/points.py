"""Engagement points: points per behaviour, decayed by age, capped, 0..100.

Definition (YAML, like segments)::

    name: engagement
    model: points
    params:
      rules:
        - {event: email_open, points: 1}
        - {event: product_view, points: 2, cap: {events: 10, per: 1d}}
        - {event: purchase, points: 10, where: {value: {">=": 50}}}
      half_life: 14d
      window: 365d          # optional: older events give nothing
      cap: 100              # raw points at which the score reaches 100

Semantics, the same in SQL (batch) and Python (one profile):
- an event counts for every rule it matches (type and ``where``), with
  ts <= as_of and, with ``window``, ts > as_of - window;
- its age is measured in whole seconds (both timestamps truncated to the
  second) and its points decay by 0.5 ** (age / half_life);
- ``cap: {events: N, per: D}`` counts at most the N most recent matching
  events in each bucket of length D counted back from as_of (bucket k holds
  ages in [k*D, (k+1)*D)); equal times give equal points, so ties do not matter;
- score = 100 * min(total, cap) / cap, with the decayed total in components.
"""

from __future__ import annotations

from typing import Any

from core import hookimpl


@hookimpl
def register_scoring_models(register) -> None:
    # The model's module loads the segment language and SQLAlchemy: only when
    # models are asked for, not for every command that loads the plugins.
    from plugins.scoring.points_model import POINTS

    register(POINTS)


def __getattr__(name: str) -> Any:
    from plugins.scoring import points_model

    return getattr(points_model, name)
