"""What an event source is: the contract source plugins fulfil."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record before validation, with where it came from.

    ``data`` is None when the record could not even be parsed; ``error`` then
    says why, and the record is reported as rejected at ``location``.
    """

    location: str
    data: dict[str, Any] | None
    error: str | None = None


class ReadOptions(BaseModel):
    """Options a file reader understands; readers ignore what does not apply."""

    model_config = ConfigDict(extra="forbid")

    # column name -> field (``user_id``, ``properties.country``), optional
    # ``:int``/``:float``/``:str``/``:bool`` cast suffix.
    columns: dict[str, str] = {}
    # field -> constant value for every record (e.g. type=purchase).
    constants: dict[str, Any] = {}
    # field -> arithmetic over columns, e.g. value = "abs(Quantity * UnitPrice)".
    computed: dict[str, str] = {}
    # Ordered rules: when a column matches, set fields.
    rules: list[dict[str, Any]] = []
    # strptime format for ``ts`` when it is not ISO 8601 or epoch seconds.
    ts_format: str | None = None
    # IANA timezone for timestamps that carry no offset.
    timezone: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"


FileReader = Callable[[Path, ReadOptions], Iterator[RawRecord]]


@dataclass(frozen=True)
class EventSource:
    name: str
    description: str
    # Suffixes this source reads, e.g. (".jsonl", ".ndjson"); compressed
    # variants (.gz) are handled for every file source.
    suffixes: tuple[str, ...] = ()
    read: FileReader | None = None
    # HTTP sources: mount(router, api) adds routes to the ingestion API;
    # ``api`` (core.api.ApiContext) authorises requests and ingests events.
    mount: Callable[[Any, Any], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
