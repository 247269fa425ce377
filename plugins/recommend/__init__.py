"""Built-in recommenders: ``plugins.recommend.related`` (item-to-item from
co-views and co-purchases, falling back to best-sellers)."""
