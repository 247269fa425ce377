"""Shared types of the plugin contract: what sources, condition kinds, scoring
models and observers exchange with the core.

This module imports nothing from ``core``, so ``core.hookspecs`` and plugin
authors can depend on it without pulling in the engine.
"""

from __future__ import annotations

import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from email.message import EmailMessage

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.engine import Connection
else:
    # Pydantic resolves these annotations (models hold a ConditionKind); as Any it
    # needs no SQLAlchemy, which `import core.types` must not load.
    ColumnElement = Table = Connection = Any

# Event types, and names of definitions (segments, scores, ...): snake_case.
SNAKE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
EVENT_TYPE_MAX_LENGTH = 64


def is_snake_name(value: Any, max_length: int) -> bool:
    """A SNAKE_NAME of at most ``max_length`` characters, the size of the column
    that stores it (events.type, segments.name, scores.model...)."""
    return isinstance(value, str) and len(value) <= max_length and bool(SNAKE_NAME.match(value))


# -- event sources --------------------------------------------------------------


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
    # More events from the same row: each {when (optional), set, computed
    # (optional)}, starting from the row event's person, ts and session.
    also: list[dict[str, Any]] = []
    # A generated id for files without one: {field: user_id, prefix: "x-"}
    # gives the field prefix + the data row's number (1 = first row after the header).
    row_id: dict[str, str] | None = None
    # strptime format for ``ts`` when it is not ISO 8601 or epoch seconds.
    ts_format: str | None = None
    # IANA timezone for timestamps that carry no offset.
    timezone: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    # The fields a column may feed; None: an event's (and properties.NAME).
    # The catalogue import sets the product's, and columns it does not name
    # are left out rather than kept as properties.
    record_fields: tuple[str, ...] | None = None
    # The mapping file these options came from, so a mistake in them names its line.
    mapping_file: str | None = None


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


# -- condition kinds ------------------------------------------------------------


def _accept(params: Any) -> Any:
    return params


@dataclass(frozen=True)
class SqlContext:
    """What a plugin's SQL form can refer to."""

    profile_id: ColumnElement  # the evaluated profile's id (outer query)
    profiles: Any  # the profiles row being evaluated (attributes, email, ...)
    events: Table
    as_of: datetime


@dataclass(frozen=True)
class ConditionKind:
    """A segment condition kind, used in rules as ``{name: params}``.

    Built-in kinds (core/segments/kinds/) and plugin kinds are the same type
    and go through the same registry. A kind gives a Python form and one of
    two batch forms: ``sql``, a boolean expression correlated to the profile
    (simple, what most plugins need), or ``features``, which asks the shared
    compiler for per-profile features so identical conditions across all
    segments are computed once in one scan of the events.
    """

    name: str
    description: str
    # (params, profile: core.segments.evaluate.ProfileData, as_of) -> bool
    python: Callable[[Any, Any, datetime], bool]
    sql: Callable[[Any, SqlContext], ColumnElement] | None = None
    # Checks and normalises the parameters; raise ValueError with a clear message.
    validate: Callable[[Any], Any] = _accept
    # True: the parameters are the whole condition mapping ({event: x, within: 48h})
    # rather than the value under the kind's key ({visited_path: /pricing}).
    flat: bool = False
    # (params, request: core.segments.sql.Features) -> (columns:
    # core.segments.sql.FeatureColumns) -> boolean expression. Ask ``request``
    # for features first; the returned function builds the test once the
    # feature columns exist.
    features: Callable[[Any, Any], Callable[[Any], ColumnElement]] | None = None
    # (params, profile, as_of) -> the earliest time after as_of at which the
    # answer could change with no new event (a window expiring), or None.
    next_change_at: Callable[[Any, Any, datetime], datetime | None] | None = None
    # (params, profile, as_of) -> (figures, deciding events) shown by explain.
    figures: Callable[[Any, Any, datetime], tuple[dict[str, Any], list[Any]]] | None = None
    # (params) -> names of the other segments the condition reads.
    segment_refs: Callable[[Any], Iterable[str]] | None = None
    # (params) -> (event type, field) pairs whose values the condition
    # aggregates (a sum of purchase value): monitoring counts events missing them.
    event_fields: Callable[[Any], Iterable[tuple[str, str]]] | None = None
    # (params) -> every (event type, field) pair the condition reads: the
    # aggregated ones and those its filters test; a warning names a segment
    # reading a property [privacy.minimise] drops. None: ``event_fields``.
    event_reads: Callable[[Any], Iterable[tuple[str, str]]] | None = None

    def __post_init__(self) -> None:
        if self.sql is None and self.features is None:
            raise ValueError(f"condition kind {self.name!r} needs a sql or a features form")


# -- scoring models -------------------------------------------------------------


class ScoreError(ValueError):
    """A score definition or fit is wrong or impossible; the message says where and why."""


@dataclass(frozen=True)
class ScoreValue:
    value: float
    components: dict[str, Any] = field(default_factory=dict)


# Batch: (connection, validated params, as_of, definition name)
#   -> {score name: {profile_id: ScoreValue}}.
# One definition may store several scores (e.g. rfm stores rfm and rfm_group...),
# named after the definition.
BatchScorer = Callable[[Connection, Any, datetime, str], dict[str, dict[int, ScoreValue]]]
# Real time, optional: (ProfileData, validated params, as_of) -> ScoreValue.
ProfileScorer = Callable[[Any, Any, datetime], ScoreValue]


@dataclass(frozen=True)
class ScoringModel:
    kind: str
    description: str
    score_all: BatchScorer
    validate: Callable[[Any], Any] = lambda params: params
    score_one: ProfileScorer | None = None


# -- observers ------------------------------------------------------------------


class StoredEvent:
    """An event as committed: its validated fields and the profile it went to.

    ``event``, the validated model (core.Event), is built on first access:
    a big load stores hundreds of thousands of events, and building a
    pydantic model for each would cost as much as storing it, while most
    hooks read only ``profile_id`` or ``type``.
    """

    __slots__ = ("_build", "_event", "_fields", "profile_id", "received_at", "ts")

    def __init__(
        self,
        event: Any,
        profile_id: int,
        ts: datetime,
        received_at: datetime,
        build: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        """``event``: the model itself, or, with ``build``, the validated
        fields ``build(fields)`` turns into it when asked."""
        if build is None:
            self._event, self._fields = event, None
        else:
            self._event, self._fields = None, event
        self._build = build
        self.profile_id = profile_id
        # The event's own time, or the receive time when it carried none.
        self.ts = ts
        self.received_at = received_at

    @property
    def event(self) -> Any:
        """The validated event (core.Event); typed loosely so this module imports no core."""
        if self._event is None:
            assert self._build is not None and self._fields is not None
            self._event = self._build(self._fields)
        return self._event

    @property
    def type(self) -> str:
        fields = self._fields
        return fields["type"] if fields is not None else self._event.type

    def __repr__(self) -> str:
        return (
            f"StoredEvent(type={self.type!r}, profile_id={self.profile_id}, "
            f"ts={self.ts!r}, received_at={self.received_at!r})"
        )


@dataclass
class Change:
    segment: str
    profile_id: int
    change: str  # entered | exited
    at: datetime
    version: int


# -- personalised email --------------------------------------------------------


@dataclass(frozen=True)
class RenderedEmail:
    """One personalised email, rendered and ready to deliver.

    ``html`` and ``text`` are final: CSS inlined and, unless it is a preview,
    every link already a signed click link and the open pixel added.
    ``headers`` holds what delivery must set besides From/To/Subject
    (List-Unsubscribe, List-Unsubscribe-Post, ...). ``idempotency_key`` names
    the send: delivering the same key twice never sends twice.
    """

    profile_id: int
    to: str
    template: str
    version: str
    subject: str
    html: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    marketing: bool = True  # needs email consent and no unsubscribe


@dataclass(frozen=True)
class TemplateMessage:
    """The message a template is being rendered for (``template_context`` gets it).

    ``key`` is the message's idempotency key, which its tracking tokens carry;
    ``preview`` is true for ``segflow render`` and other renders with tracking
    off, which are never sent; ``as_of`` is the time the person's data is read
    at (None: now).
    """

    template: str
    version: str
    key: str
    profile_id: int
    preview: bool
    as_of: datetime | None = None


class DeliveryFailure(Exception):
    """A connector could not deliver; the message is the provider's answer (no secrets)."""


class TemporaryFailure(DeliveryFailure):
    """Not delivered, and trying again later may work (SMTP 4xx, a dropped
    connection before the message was handed over, a 429). ``retry_after``:
    seconds the provider asked to wait, when it said. Delivery retries with
    backoff, then leaves the message ``deferred`` for the next run."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(DeliveryFailure):
    """Not delivered, and retrying the same message will not help (SMTP 5xx,
    a refused address): recorded ``failed`` and never retried."""


class DeliveryInDoubt(DeliveryFailure):
    """The provider may or may not have taken the message (the connection was
    lost while it was being handed over): it is left ``unknown``, never sent
    again by itself, and the run stops. Any other exception from ``send`` is
    taken the same way."""


def _settings_session(settings: Any) -> AbstractContextManager[Any]:
    return nullcontext(settings)


@dataclass(frozen=True)
class EspConnector:
    """An email service: SMTP, a folder, an ESP's API.

    Sending is one part of what a connector may do (the ESP sync adds
    profiles, memberships, events and erasure as further optional fields), so
    every capability is optional and callers check for it.

    ``open(settings)`` is a context manager for what one run shares (an SMTP
    connection, an HTTP client); its value is the ``session`` passed to the
    other functions (by default the settings themselves).

    ``send(email, message, session)`` delivers one email, whose MIME form
    (``message``, From and Message-ID set) core builds, and returns the
    provider's id for it. It raises ``TemporaryFailure`` or
    ``PermanentFailure`` only when the provider certainly did not take the
    message; ``DeliveryInDoubt`` (or any other exception) means it may have,
    and the message is left ``unknown`` rather than sent again.

    ``sender(settings)`` is the From address of the connector's settings.

    ``confirm(email, message, session)``, optional, tells after a crash whether
    a message whose send was under way was delivered: the provider id, or None
    when it certainly was not (then it is sent). Without it such a message
    becomes ``unknown`` and is sent again only when asked (``--retry-unknown``).
    """

    name: str
    description: str
    send: Callable[[RenderedEmail, EmailMessage, Any], str] | None = None
    sender: Callable[[Any], str] | None = None
    open: Callable[[Any], AbstractContextManager[Any]] = _settings_session
    confirm: Callable[[RenderedEmail, EmailMessage, Any], str | None] | None = None
    # Profile, consent, membership and event sync (core.sync): ESPs and CRMs.
    sync: SyncApi | None = None


# -- sync to ESPs and CRMs (core.sync) -------------------------------------------------


@dataclass(frozen=True)
class SyncPerson:
    """One person as a connector syncs them: identifiers, the mapped properties,
    email marketing consent (True granted, False withdrawn or unsubscribed,
    None never asked: never synced as subscribed) and, given to membership
    calls, ``remote_id``: what the connector answered for them before.
    ``add_to``, given to the upserts of a connector whose ``SyncApi`` has
    ``adds_on_upsert``: the segments the person joins in this run, which the
    upsert adds them to (an ``ok`` answer confirms those too)."""

    profile_id: int
    email: str
    user_id: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    subscribed: bool | None = None
    remote_id: str | None = None
    add_to: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SyncEvent:
    """A segment entry or exit sent as an ESP event (ESP flows can trigger on
    it). ``unique_id`` is the same every time the event is sent, so a resend
    is not a duplicate where the API de-duplicates."""

    unique_id: str
    name: str
    person: SyncPerson
    time: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordResult:
    """What a connector call did for one record, in the order given: ``ok``
    (``remote_id``: the API's id for the person, when it has one), ``retry``
    (a temporary failure: tried again next run) or ``failed`` (the API
    refused the data: tried again next run too, and counted by ``reason``)."""

    status: str
    reason: str | None = None
    remote_id: str | None = None

    @classmethod
    def ok(cls, remote_id: str | None = None) -> RecordResult:
        return cls("ok", None, remote_id)


@dataclass(frozen=True)
class SyncLimits:
    """A connector's documented limits: records per call, requests per second
    with a burst, and connections at once. The sync client waits by them and
    by the live rate headers the connector reads (``SyncApi.rate_state``)."""

    profiles_per_call: int = 100
    members_per_call: int = 100
    events_per_call: int = 100
    requests_per_second: float = 10.0
    burst: int = 10
    concurrency: int = 4
    # The sliding windows the API counts requests in, by rate group
    # (``SyncApi.rate_group``): group -> ((requests, seconds), ...). A group
    # listed here is paced by its windows and has ``concurrency`` connections
    # of its own, instead of sharing the token bucket above.
    windows: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    # Upsert calls in flight at once (None: ``concurrency``). One call of many
    # requests already keeps its windows full; one at a time, each is answered,
    # and its people's events can go, as early as the windows allow.
    upserts_at_once: int | None = None


@dataclass(frozen=True)
class SyncTarget:
    """One ``[[connectors]]`` entry of segflow.toml, resolved: the API's base
    URL, its key (read from the environment variable ``api_key_env`` names;
    never shown), the segments to sync, how membership is expressed
    (``list``, ``tag`` or ``property``), the property mapping (remote name ->
    ``user_id``, ``email`` or ``attributes.NAME``) and the connector's own
    options (an audience id, a list prefix, ...)."""

    name: str
    kind: str
    base_url: str
    api_key: str = field(repr=False)
    segments: tuple[str, ...] = ()
    membership: str = "list"
    properties: Mapping[str, str] = field(default_factory=dict)
    events: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemotePerson:
    """A person as the remote side holds them (``SyncApi.read``): consent and
    the synced segments they are a member of there."""

    email: str
    subscribed: bool | None
    segments: frozenset[str]
    remote_id: str | None = None


@dataclass(frozen=True)
class SyncApi:
    """What an ESP or CRM connector does for ``core.sync``. Every call is
    async, takes the ``session`` that ``open(target, client)`` yields (an
    async context manager; ``client`` is core's rate-limited, retrying HTTP
    client for the target) and answers one ``RecordResult`` per record, in
    order. A call that fails as a whole raises; the engine counts every
    record of it as ``retry``.

    ``upsert(session, people)`` creates or updates the people (identifiers,
    properties, consent); ``add(session, segment, people)`` and
    ``remove(session, segment, people)`` set membership as the target says;
    ``events(session, events)``, optional, sends segment entries and exits;
    ``delete(session, people)``, optional, erases people (privacy);
    ``read(session)`` pages through the remote state of the target's
    segments (``segflow sync verify``). ``auth_headers(target)`` are sent with
    every request (never logged); ``rate_state(response)``, optional, reads
    the live rate headers: (requests left, seconds until the window resets).
    """

    limits: SyncLimits
    # The vendor's; a connector whose host depends on the key (Mailchimp's data
    # centre) derives it in its requests.
    base_url: str
    auth_headers: Callable[[SyncTarget], Mapping[str, str]]
    open: Callable[[SyncTarget, Any], Any]
    upsert: Callable[[Any, Sequence[SyncPerson]], Awaitable[list[RecordResult]]]
    add: Callable[[Any, str, Sequence[SyncPerson]], Awaitable[list[RecordResult]]]
    remove: Callable[[Any, str, Sequence[SyncPerson]], Awaitable[list[RecordResult]]]
    read: Callable[[Any], Awaitable[dict[str, RemotePerson]]]
    events: Callable[[Any, Sequence[SyncEvent]], Awaitable[list[RecordResult]]] | None = None
    delete: Callable[[Any, Sequence[SyncPerson]], Awaitable[list[RecordResult]]] | None = None
    rate_state: Callable[[Any], tuple[int, float] | None] | None = None
    memberships: tuple[str, ...] = ("list",)
    # (method, path) -> the rate group the API counts the request in (a key
    # of ``limits.windows``); None: every request in one group.
    rate_group: Callable[[str, str], str] | None = None
    # The upsert adds people to their ``SyncPerson.add_to`` segments itself (an
    # API whose bulk import takes a list: no member calls, no ids looked up).
    adds_on_upsert: bool = False
    # An upsert that answers its records as they settle, instead of all at the
    # end: ``upsert_parts(session, people)`` yields (indexes into people, their
    # results) until every record is answered; the engine writes each part and
    # sends its people's events then, while the rest of the call goes on. A
    # call of bulk jobs that complete one after another (Klaviyo's) lets its
    # first people's events go beside its later jobs.
    upsert_parts: (
        Callable[[Any, Sequence[SyncPerson]],
                 AsyncIterator[tuple[Sequence[int], list[RecordResult]]]] | None
    ) = None  # fmt: skip


# -- recommendations ------------------------------------------------------------


class ProductEvent(NamedTuple):
    """One product event of a person: product_view, add_to_cart or purchase."""

    type: str
    product_id: str
    ts: datetime


@dataclass(frozen=True)
class ProductHistory:
    """What a recommender starts from: one person's latest product events up to
    ``as_of`` (a few hundred at most), newest first, and every product they
    bought up to then (never recommended)."""

    profile_id: int
    as_of: datetime
    events: tuple[ProductEvent, ...]
    bought: frozenset[str]


# (connection, history, k, as_of) -> [(product_id, score)], best first. Return k
# or more when you can: the core drops what was bought, what is out of stock or
# not in the catalogue, and keeps the first k.
Recommend = Callable[[Connection, ProductHistory, int, datetime], list[tuple[str, float]]]


@dataclass(frozen=True)
class RecommenderTables:
    """What a recommender's refresh computed; the core stores it, replacing the
    previous refresh in one transaction. Each part is a SELECT (run inside the
    database as ``INSERT ... SELECT``) or rows: ``related`` gives (product_id,
    related_id, score) for the ``product_related`` table, ``popular``
    (product_id, score) for ``product_popularity``."""

    related: Any = ()
    popular: Any = ()
    # Temporary tables the refresh made for its SELECTs, dropped once they ran.
    scratch: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommender:
    """A named way of recommending products to a person (``core.recommend``).

    ``recommend`` serves one person; ``refresh(conn, as_of)``, optional,
    precomputes what it reads for everyone (``segflow recommend refresh``)
    and returns ``RecommenderTables``.
    """

    name: str
    description: str
    recommend: Recommend
    refresh: Callable[[Connection, datetime], RecommenderTables] | None = None


# -- automation -----------------------------------------------------------------


class Entry(NamedTuple):
    """A trigger's answer: this person enters the workflow at ``at``, under ``key``
    (one run per key: a cart id, a date; "" when the workflow has one run per person)."""

    profile_id: int
    at: datetime
    key: str = ""


@dataclass(frozen=True)
class Trigger:
    """What starts a workflow run (``trigger:`` in a workflow definition).

    ``validate(value)`` turns the definition's value into the trigger's params
    (raise ValueError or pydantic's ValidationError, naming what is wrong).
    A trigger reacts to any of three moments, each optional:

    - ``on_changes(params, changes)``: segment membership changes just committed;
    - ``on_events(params, events)``: events just stored (``StoredEvent``);
    - ``on_tick(params, conn, since, as_of)``: every tick, with the previous
      tick's time (None the first time): schedules, dates.

    Each returns the ``Entry`` items it starts; the engine applies the
    workflow's entry rule and re-entry policy. ``segment(params)`` names the
    segment whose members the workflow is about, if any: ``exit_when:
    left_segment`` ends a run when its person leaves it.
    """

    name: str
    description: str
    validate: Callable[[Any], Any]
    on_changes: Callable[[Any, Any], Iterable[Entry]] | None = None
    on_events: Callable[[Any, Any], Iterable[Entry]] | None = None
    on_tick: Callable[[Any, Connection, datetime | None, datetime], Iterable[Entry]] | None = None
    segment: Callable[[Any], str | None] = lambda _params: None


@dataclass(frozen=True)
class ActionCall:
    """One action to perform, as recorded when its run reached it.

    ``key`` (workflow:run:step) is the action's idempotency key: performing it
    twice must have the effect of once (deliveries and webhooks carry it).
    ``conn`` is an open transaction for ``transactional`` actions (the action's
    writes commit together with its ``done`` record), else None and ``engine``
    is there to open connections.
    """

    key: str
    workflow: str
    run_id: int
    step: str
    profile_id: int
    params: Any
    as_of: datetime
    engine: Any
    settings: Any
    conn: Connection | None = None


@dataclass(frozen=True)
class ActionResult:
    """How performing went: ``done``; ``skipped`` (with the reason: refused by
    consent, no address); ``failed`` for good; or ``retry`` (temporary: it stays
    pending and is performed again on the next run, up to the retry limit)."""

    status: str = "done"
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """A workflow step that does something (``send``, ``update_profile``, ``tag``,
    ``webhook``, ...): ``- NAME: {params}`` in a workflow's steps.

    ``validate(value)`` checks the step's params when the workflow loads.
    When a run reaches the step, the engine records the action (pending) in the
    same transaction that moves the run on; ``perform(call)`` then does it and
    the engine records the ``ActionResult``. A crash between the two leaves it
    pending, so ``perform`` may be called again for the same ``call.key``: it
    must be idempotent by that key. ``transactional`` actions (database-only)
    get ``call.conn`` and their writes commit with the result, so they happen
    exactly once. ``marketing(params)``: the action is a marketing message,
    subject to frequency caps and quiet hours. ``perform_many(calls)``,
    optional, performs a batch at once (one connection to a service, one
    delivery) and returns a result per call, in order.
    """

    name: str
    description: str
    validate: Callable[[Any], Any]
    perform: Callable[[ActionCall], ActionResult]
    transactional: bool = False
    marketing: Callable[[Any], bool] = lambda _params: False
    perform_many: Callable[[list[ActionCall]], list[ActionResult]] | None = None


# -- monitoring -----------------------------------------------------------------


@dataclass(frozen=True)
class MonitorCheck:
    """A monitoring check (``register_monitor_checks``), run daily by the
    monitor flow and by ``segflow monitor check``.

    ``run(engine, settings, day, now)`` returns the ``core.Alert`` s that fire
    now (each with ``check`` equal to ``name``), every time it runs: an alert
    it no longer returns is resolved. ``settings`` are segflow's (a check
    reads its own section with ``settings.plugin(...)``), ``day`` the UTC day
    checked and ``now`` the time of the run.
    """

    name: str
    description: str
    run: Callable[[Any, Any, date, datetime], Iterable[Any]]


# -- commands -------------------------------------------------------------------


class CommandError(Exception):
    """A command cannot do what was asked; the CLI prints the message on one line
    and exits with status 1 (never a traceback). Plugin commands raise it too."""


class UsageError(CommandError):
    """The command was called wrongly (arguments, options): exit status 2."""
