"""Built-in plugin: the product properties of product events keep the catalogue current.

A product_view, add_to_cart or purchase event whose properties carry the
product's name, category, price, currency, url, image_url or in_stock updates
that product's row, unless the row is newer than the event
(``core.refresh_products``). Streaming ingestion refreshes after each batch
that holds a product event; a bulk load once, at its end. The refresh reads
the events stored since the last one from the events table, not the events
handed to the hook, so a refresh missed by a crash is made up by the next one
(or by ``segflow catalog refresh``). Leave it out with SEGFLOW_LOAD_PLUGINS.
"""

from __future__ import annotations

from core import hookimpl

# core.PRODUCT_EVENT_TYPES, spelled here so that loading the plugin (every
# command listing commands does) does not load the catalogue module.
PRODUCT_EVENT_TYPES = frozenset({"product_view", "add_to_cart", "purchase"})


@hookimpl
def on_events_ingested(events, engine) -> None:
    # StoredEvent.type does not build the event: a batch without product
    # events costs a set lookup per event.
    if any(e.type in PRODUCT_EVENT_TYPES for e in events):
        _refresh(engine)


@hookimpl
def on_profiles_loaded(profile_ids, engine) -> None:
    _refresh(engine)


def _refresh(engine) -> None:
    from core import refresh_products

    refresh_products(engine)
