"""RFM scores (recency, frequency, monetary) and the ``rfm_group`` segment condition.

Definition (YAML)::

    name: rfm
    model: rfm
    params:
      purchase: purchase   # event type of a purchase (default "purchase")
      refund: refund       # event type of a refund (default "refund"; null: none)
      window: 365d         # optional: only events with ts > as_of - window count

What one run computes, over events with ``ts <= as_of`` (and ``ts > as_of -
window`` when a window is given), for every live profile with at least one
purchase event (nobody else is scored):

- **recency_days**: whole days (86 400 s periods, rounded down) from the last
  purchase to as_of;
- **frequency**: the number of distinct orders. A purchase event's order is
  ``properties.order_id``, else ``properties.invoice``, else the UTC calendar
  day of the event: purchases without an id on one day are one order. Several
  lines of one order (one event per product, like the Online Retail file) are
  one order;
- **monetary**: the sum of ``value`` over purchases minus the sum of
  ``|value|`` over refunds (refunds carry a positive value; the type says the
  money went back), rounded to cents; a missing value counts as 0 and
  currencies are not converted. It can be negative (a refund of a purchase
  made before the window).

Quintiles 1..5 per dimension over the scored customers, by the mid-rank
percentile: customers are sorted by the dimension (R: fewer days is better;
F and M: more is better); a group of equal values occupying sorted positions
s..e (1-based, of n) has the percentile p = (s - 1 + e) / (2n), the middle of
its span (``scipy.stats.percentileofscore(kind="mean")``), and scores
``floor(5 * p) + 1``. Equal values always get equal scores, a tie group lands
in the quintile holding its middle, and with distinct values each quintile
holds a fifth of the customers (one customer alone, or everyone tied, is 3).

Named groups come from R and F with the R-F segment map reproduced in most
public RFM tutorials (the regex ``seg_map`` over the "RF" string: ``[1-2][1-2]``
hibernating, ``[1-2][3-4]`` at_risk, ``[1-2]5`` cant_loose, ``3[1-2]``
about_to_sleep, ``33`` need_attention, ``[3-4][4-5]`` loyal_customers, ``41``
promising, ``51`` new_customers, ``[4-5][2-3]`` potential_loyalists,
``5[4-5]`` champions), with the names shortened to ``loyal``,
``potential_loyalist`` and ``cant_lose``; see ``GROUP_CELLS``. It is total
by construction: each of the 25 (R, F) cells has exactly one group. The
11-segment table with "lost" (Putler's RFM analysis table, used by the rfm R
package's ``rfm_segment`` examples) was not used: its ranges are over R and a
combined F&M score and overlap, so on R and F alone they give no unambiguous
map (in the table's order, potential_loyalist hides new_customers and
promising, and hibernating and lost cover the same cells).

Stored scores, one row per scored profile each, all with components
``{recency_days, frequency, monetary, group}``: ``<name>_r``, ``<name>_f``,
``<name>_m`` (1..5) and ``<name>`` = R*100 + F*10 + M.

There is no ``score_one``: a quintile depends on the whole population, so one
profile cannot be scored from its own events.

A profile that was scored once and has no purchase in a later run (e.g. its
purchases left the window) gets no new row, so its older row stays the latest.
"""

from __future__ import annotations

from typing import Any

from core import hookimpl

# The model's module loads the segment language and SQLAlchemy: imported when
# a hook is called, not by every command that loads the plugins.


@hookimpl
def register_scoring_models(register) -> None:
    from plugins.scoring.rfm_model import RFM

    register(RFM)


@hookimpl
def register_conditions(register) -> None:
    from plugins.scoring.rfm_model import RFM_GROUP

    register(RFM_GROUP)


def __getattr__(name: str) -> Any:
    from plugins.scoring import rfm_model

    return getattr(rfm_model, name)
