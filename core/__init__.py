"""segflow core. Plugins import only what is exported here."""

from core.hookspecs import hookimpl
from core.sources import EventSource, RawRecord, ReadOptions

__all__ = ["EventSource", "RawRecord", "ReadOptions", "hookimpl"]
