"""Built-in recommenders: ``plugins.recommend.related`` (item-to-item from
co-views and co-purchases, falling back to best-sellers).

The plugin is this package, so loading it costs nothing: the recommender's
module (SQLAlchemy, the tables) is imported when recommenders are asked for.
"""

from __future__ import annotations

from core import hookimpl


@hookimpl
def register_recommenders(register) -> None:
    from plugins.recommend.related import make_recommender

    register(make_recommender())
