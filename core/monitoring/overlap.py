"""Overlap between segments' current memberships: counts and Jaccard."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.db.tables import MEMBERSHIPS, SEGMENTS

OVERLAP_COLUMNS = ["a", "b", "size_a", "size_b", "both", "jaccard"]


def overlap(engine: Engine, segments: list[str] | None = None) -> pd.DataFrame:
    """Every pair of saved segments (``a`` < ``b`` by name): ``size_a``,
    ``size_b`` (current members), ``both`` (members of both) and ``jaccard``
    (both / members of either; 0 when both are empty). The pair counts come
    from one self-join of memberships in SQL. ``segments``: only these."""
    with engine.connect() as conn:
        query = (
            sa.select(SEGMENTS.c.id, SEGMENTS.c.name, sa.func.count(MEMBERSHIPS.c.profile_id))
            .outerjoin(MEMBERSHIPS, MEMBERSHIPS.c.segment_id == SEGMENTS.c.id)
            .group_by(SEGMENTS.c.id, SEGMENTS.c.name)
        )
        if segments is not None:
            query = query.where(SEGMENTS.c.name.in_(segments))
        sizes = {sid: (name, int(n)) for sid, name, n in conn.execute(query)}
        a, b = MEMBERSHIPS.alias("a"), MEMBERSHIPS.alias("b")
        pairs = (
            sa.select(a.c.segment_id, b.c.segment_id, sa.func.count())
            .join(b, sa.and_(a.c.profile_id == b.c.profile_id, a.c.segment_id < b.c.segment_id))
            .where(a.c.segment_id.in_(list(sizes)), b.c.segment_id.in_(list(sizes)))
            .group_by(a.c.segment_id, b.c.segment_id)
        )
        both = {(x, y): int(n) for x, y, n in conn.execute(pairs)} if sizes else {}
    rows = []
    ids = sorted(sizes, key=lambda sid: sizes[sid][0])
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            (name_x, size_x), (name_y, size_y) = sizes[x], sizes[y]
            common = both.get((min(x, y), max(x, y)), 0)
            either = size_x + size_y - common
            rows.append(
                (name_x, name_y, size_x, size_y, common, common / either if either else 0.0)
            )
    return pd.DataFrame.from_records(rows, columns=OVERLAP_COLUMNS)


def overlap_matrix(engine: Engine, segments: list[str] | None = None) -> pd.DataFrame:
    """The Jaccard of every pair as a square frame (segment names on both
    axes, 1.0 on the diagonal), for a heatmap."""
    pairs = overlap(engine, segments)
    names = sorted(set(pairs["a"]) | set(pairs["b"]))
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for r in pairs.itertuples(index=False):
        matrix.loc[r.a, r.b] = matrix.loc[r.b, r.a] = r.jaccard
    return matrix
