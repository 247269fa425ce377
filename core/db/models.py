"""Tables (SQLModel). Later features add their own tables here, with a migration."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from core.privacy import crypto

# Named constraints so Alembic can alter them later, SQLite batch mode included.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes stored in UTC on every backend.

    SQLite has no timezone type: values are written as naive UTC in the fixed
    width form SQLAlchemy uses, so text order is time order and SQL windows
    compare correctly; they come back with tzinfo=UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: segflow stores only timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL for indexable properties; JSON text elsewhere.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class SealedText(TypeDecorator):
    """Text sealed with the environment's encryption key (core/privacy/crypto.py)
    on the way in, opened on the way out; plain text when no key is set.

    Covers every SQLAlchemy read and write; the paths that go to the driver
    directly (bulk profile inserts, the resolver's and the renderer's reads)
    call crypto themselves."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return crypto.seal(value)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return crypto.unseal(value)


class _JSONBase(TypeDecorator):
    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.JSON())

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return crypto.unseal_traits(value)


class SealedTraits(_JSONBase):
    """A JSON object whose personal traits (crypto.PII_TRAITS) are sealed:
    profile attributes."""

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return crypto.seal_traits(value) if isinstance(value, dict) else value


class OpenedJSON(_JSONBase):
    """A JSON object some writers seal values of (identify events' traits,
    sealed by the event writers, which know the event's type): opened on read."""

    cache_ok = True


# SQLite only auto-increments an INTEGER PRIMARY KEY, not BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default_factory=utcnow if not nullable else None,
        # The column default too, so Core inserts (the bulk paths) get it.
        sa_column=sa.Column(
            UTCDateTime(), nullable=nullable, index=index, default=None if nullable else utcnow
        ),
    )


class Profile(SQLModel, table=True):
    __tablename__ = "profiles"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    # The identified user id; NULL for anonymous profiles.
    user_id: str | None = Field(default=None, max_length=255, unique=True)
    # Sealed at rest when a key is set; people are found by email through
    # their identities' blind index, not this column.
    email: str | None = Field(
        default=None, sa_column=sa.Column(SealedText(), nullable=True, index=True)
    )
    attributes: dict = Field(
        default_factory=dict, sa_column=sa.Column(SealedTraits(), nullable=False, default=dict)
    )
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    # Set when this profile was merged into another; its events and identities
    # moved there, the row stays so old references still resolve.
    merged_into: int | None = Field(
        default=None,
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=True, index=True),
    )


class Identity(SQLModel, table=True):
    __tablename__ = "identities"
    __table_args__ = (sa.UniqueConstraint("kind", "value", name="uq_identities_kind_value"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False, index=True)
    )
    # user_id, anonymous_id, email, or external:<system> for ESP/CRM ids.
    kind: str = Field(max_length=64)
    # An email is stored as its blind index when a key is set, and the
    # address itself sealed beside it, so a key rotation can index it again.
    value: str = Field(max_length=320)
    sealed: str | None = Field(default=None, sa_column=sa.Column(SealedText(), nullable=True))
    created_at: datetime = _ts()


class EventRow(SQLModel, table=True):
    """A stored event (the validated input form is ``core.ingestion.Event``)."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_profile_ts", "profile_id", "ts"),
        sa.Index("ix_events_type_ts", "type", "ts"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False)
    )
    type: str = Field(max_length=64)
    ts: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    session_id: str | None = Field(default=None, max_length=255)
    product_id: str | None = Field(default=None, max_length=255)
    value: float | None = None
    currency: str | None = Field(default=None, max_length=3)
    url: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    campaign: str | None = Field(default=None, max_length=255)
    properties: dict = Field(
        default_factory=dict, sa_column=sa.Column(OpenedJSON(), nullable=False, default=dict)
    )
    source: str = Field(default="api", max_length=64)
    message_id: str = Field(max_length=255, unique=True)
    received_at: datetime = _ts()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255, unique=True)
    # First characters of the key, shown in listings so people can tell keys apart.
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=128, unique=True)
    scopes: list = Field(
        default_factory=list, sa_column=sa.Column(JSONType, nullable=False, default=list)
    )
    created_at: datetime = _ts()
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    at: datetime = _ts(index=True)
    actor: str = Field(default="system", max_length=255)
    action: str = Field(max_length=64, index=True)
    target: str | None = Field(default=None, max_length=255)
    details: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )


class Consent(SQLModel, table=True):
    """A person's current consent per purpose (core.privacy.consent.PURPOSES)."""

    __tablename__ = "consents"
    __table_args__ = (sa.UniqueConstraint("profile_id", "purpose"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False, index=True)
    )
    purpose: str = Field(max_length=64)
    granted: bool
    source: str | None = Field(default=None, max_length=64)
    # The version of the consent text the person agreed to (or withdrew from).
    version: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts()


class Score(SQLModel, table=True):
    """A score of one profile by one model, as of a time; rows keep the history."""

    __tablename__ = "scores"
    __table_args__ = (
        sa.Index("ix_scores_profile_model_as_of", "profile_id", "model", "as_of"),
        # Finding a model's latest run (score conditions) without a scan.
        sa.Index("ix_scores_model_as_of", "model", "as_of"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False)
    )
    model: str = Field(max_length=64)
    value: float
    components: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )
    as_of: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    computed_at: datetime = _ts()


class SegmentDefinition(SQLModel, table=True):
    """A segment as saved: its canonical definition and a version bumped on change."""

    __tablename__ = "segments"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    description: str = ""
    definition: dict = Field(sa_column=sa.Column(JSONType, nullable=False))
    version: int = 1
    source: str | None = Field(default=None, max_length=1024)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Membership(SQLModel, table=True):
    """Who is in a segment now (as of its last evaluation)."""

    __tablename__ = "memberships"

    segment_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("segments.id"), primary_key=True)
    )
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), primary_key=True, index=True)
    )
    since: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    version: int = 1


class MembershipChange(SQLModel, table=True):
    """Entered / exited, when (the as_of of the evaluation), under which rule version."""

    __tablename__ = "membership_changes"
    __table_args__ = (sa.Index("ix_membership_changes_segment_at", "segment_id", "at"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    segment_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("segments.id"), nullable=False)
    )
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False, index=True)
    )
    change: str = Field(max_length=8)  # entered | exited
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    version: int = 1
    recorded_at: datetime = _ts()


class EvaluationState(SQLModel, table=True):
    """Profiles whose membership can change with no new event (a window
    expiring): when they were last evaluated and when to look at them again."""

    __tablename__ = "evaluation_state"

    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), primary_key=True)
    )
    evaluated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    next_change_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True, index=True)
    )


class SegmentRun(SQLModel, table=True):
    """One evaluation run; incremental runs start from the last one's event id."""

    __tablename__ = "segment_runs"

    id: int | None = Field(default=None, primary_key=True)
    as_of: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    full: bool
    max_event_id: int = 0
    profiles: int = 0
    entered: int = 0
    exited: int = 0
    started_at: datetime = _ts()


class SegmentSize(SQLModel, table=True):
    """Segment size per as_of, from runs and back-fills (history charts)."""

    __tablename__ = "segment_sizes"

    segment_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("segments.id"), primary_key=True)
    )
    as_of: datetime = Field(sa_column=sa.Column(UTCDateTime(), primary_key=True))
    version: int = 1
    size: int


class SourceState(SQLModel, table=True):
    """Where a pulling source (polling, streams) has got to, so restarts resume."""

    __tablename__ = "source_states"

    name: str = Field(max_length=128, primary_key=True)
    cursor: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )
    updated_at: datetime = _ts()


class BulkLoad(SQLModel, table=True):
    """A bulk load under way: the events' indexes it dropped, and who runs it.

    Written in the transaction that drops the indexes and deleted in the one
    that rebuilds them, so a row left behind is a load that died on the way;
    ``core.ingestion.bulk.finish_interrupted_loads`` completes it.
    """

    __tablename__ = "bulk_loads"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = _ts()
    # Where the loading process runs, to tell a live load from a dead one.
    host: str = Field(max_length=255)
    pid: int
    # [{"name": ..., "columns": [...]}] of the indexes of events it dropped.
    indexes: list = Field(
        default_factory=list, sa_column=sa.Column(JSONType, nullable=False, default=list)
    )


class BulkLoadMove(SQLModel, table=True):
    """A merge whose events a bulk load moves at its end (in id order).

    Written in the transaction of the batch that merged, so the queue holds
    exactly the merges that were committed.
    """

    __tablename__ = "bulk_load_moves"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    load_id: int = Field(index=True)
    from_profile: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    to_profile: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class Product(SQLModel, table=True):
    """The product catalogue: filled by ``segflow catalog import`` and kept current
    from the product properties of product events; emails show its prices and
    stock, and recommendations leave out what is out of stock."""

    __tablename__ = "products"
    __table_args__ = (sa.Index("ix_products_category", "category"),)

    # The events' product_id: the key every product event carries.
    id: str = Field(primary_key=True, max_length=255)
    name: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    category: str | None = Field(default=None, max_length=255)
    price: float | None = None
    currency: str | None = Field(default=None, max_length=3)
    url: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    image_url: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    in_stock: bool = Field(default=True, sa_column=sa.Column(sa.Boolean, nullable=False))
    updated_at: datetime = _ts()


class Message(SQLModel, table=True):
    """One email, from the decision to send it to the provider's answer: the
    outbox and delivery log (core/personalize/messages.py). Its idempotency key
    names the send, so the same key is never delivered twice."""

    __tablename__ = "messages"
    __table_args__ = (sa.Index("ix_messages_profile_id_created_at", "profile_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False)
    )
    template: str = Field(max_length=255)
    # Unknown for messages the consent gate refused before they were rendered.
    version: str | None = Field(default=None, max_length=64)
    # Sealed: a personalised subject may name the person.
    subject: str | None = Field(default=None, sa_column=sa.Column(SealedText(), nullable=True))
    idempotency_key: str = Field(max_length=255, unique=True)
    # rendered | sending | sent | deferred | failed | unknown | bounced | skipped
    status: str = Field(max_length=16, index=True)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    # The connector that sent it (or last tried to).
    via: str | None = Field(default=None, max_length=64)
    provider_id: str | None = Field(default=None, max_length=255)
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts()


class ProductRelated(SQLModel, table=True):
    """Item-to-item scores a recommender's refresh computed: products to show
    someone interested in ``product_id``, ``rank`` 1 the best (highest score)."""

    __tablename__ = "product_related"
    # Keyed by rank and clustered by the key on SQLite: serving reads each of
    # a person's products' best few as one short range of the table.
    __table_args__ = {"sqlite_with_rowid": False}

    recommender: str = Field(primary_key=True, max_length=64)
    product_id: str = Field(primary_key=True, max_length=255)
    rank: int = Field(primary_key=True)
    related_id: str = Field(max_length=255)
    score: float


class ProductPopularity(SQLModel, table=True):
    """A recommender's best-sellers, what it falls back on: by category (joined
    to the catalogue), then overall."""

    __tablename__ = "product_popularity"
    __table_args__ = (
        # Best first, ties by id, read straight from the index.
        sa.Index(
            "ix_product_popularity_recommender_score_product_id",
            "recommender",
            "score",
            "product_id",
        ),
        {"sqlite_with_rowid": False},
    )

    recommender: str = Field(primary_key=True, max_length=64)
    product_id: str = Field(primary_key=True, max_length=255)
    score: float


class RecommenderRun(SQLModel, table=True):
    """The last refresh of each recommender: as of when, and what it stored."""

    __tablename__ = "recommender_runs"

    recommender: str = Field(primary_key=True, max_length=64)
    as_of: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    refreshed_at: datetime = _ts()
    related: int = 0
    popular: int = 0


class WorkflowDefinition(SQLModel, table=True):
    """Each version of each workflow as it was saved; runs keep the version they
    entered on (core/automation/store.py)."""

    __tablename__ = "workflows"
    __table_args__ = (sa.UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    name: str = Field(max_length=64, index=True)
    version: int
    digest: str = Field(max_length=64)
    definition: dict = Field(sa_column=sa.Column(JSONType, nullable=False))
    created_at: datetime = _ts()


class WorkflowState(SQLModel, table=True):
    """One run of a workflow for one person (and entry key): where it is and
    when it next needs the engine (``wake_at``; NULL once it ended)."""

    __tablename__ = "workflow_states"
    __table_args__ = (
        sa.Index("ix_workflow_states_wake_at", "wake_at"),
        sa.Index("ix_workflow_states_profile_id_workflow", "profile_id", "workflow"),
        sa.Index("ix_workflow_states_workflow_status", "workflow", "status"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    workflow: str = Field(max_length=64)
    version: int
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False)
    )
    entry_key: str = Field(default="", max_length=255)
    # workflow:profile:key while the run is active, NULL after: one active run per key.
    active_key: str | None = Field(default=None, max_length=400, unique=True)
    # active | completed | exited | held_out
    status: str = Field(max_length=16)
    step: str | None = Field(default=None, max_length=255)
    # What the run waits for at ``step``: time | until (a rule, or its timeout at ``deadline``).
    waiting: str | None = Field(default=None, max_length=16)
    wake_at: datetime | None = _ts(nullable=True)
    deadline: datetime | None = _ts(nullable=True)
    arm: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    entered_at: datetime = _ts()
    updated_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)


class WorkflowHistory(SQLModel, table=True):
    """What happened to a run, step by step (``segflow workflows history``)."""

    __tablename__ = "workflow_history"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    run_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("workflow_states.id"), nullable=False, index=True)
    )
    at: datetime = _ts()
    step: str | None = Field(default=None, max_length=255)
    # entered | waiting | woke | branch | arm | action | deferred | skipped | exited | completed
    what: str = Field(max_length=16)
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))


class WorkflowAction(SQLModel, table=True):
    """An action a run reached: recorded (pending) with the step that reached it,
    then performed and its result recorded; the key is its idempotency key."""

    __tablename__ = "workflow_actions"
    __table_args__ = (
        sa.Index("ix_workflow_actions_profile_id_created_at", "profile_id", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    idempotency_key: str = Field(max_length=255, unique=True)
    run_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("workflow_states.id"), nullable=False)
    )
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), nullable=False)
    )
    workflow: str = Field(max_length=64)
    step: str = Field(max_length=255)
    action: str = Field(max_length=64)
    params: dict = Field(sa_column=sa.Column(JSONType, nullable=False))
    marketing: bool = False
    # pending | done | skipped | failed
    status: str = Field(max_length=16, index=True)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    done_at: datetime | None = _ts(nullable=True)


class WorkflowTrigger(SQLModel, table=True):
    """When a workflow's tick-driven trigger (schedule, dates) last looked."""

    __tablename__ = "workflow_triggers"

    workflow: str = Field(primary_key=True, max_length=64)
    checked_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class SyncState(SQLModel, table=True):
    """What a connector's remote side last confirmed for a person: the hash of
    the fields sent, the synced segments they are a member of there, and the
    remote id; a failed record keeps the last confirmed values, so the next
    run sends it again."""

    __tablename__ = "sync_states"

    connector: str = Field(primary_key=True, max_length=64)
    profile_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("profiles.id"), primary_key=True)
    )
    email: str = Field(sa_column=sa.Column(SealedText(), nullable=False))
    hash: str | None = Field(default=None, max_length=64)
    segments: list = Field(
        default_factory=list, sa_column=sa.Column(JSONType, nullable=False, default=list)
    )
    subscribed: bool | None = None
    remote_id: str | None = Field(default=None, max_length=255)
    # ok | failed | retry
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    updated_at: datetime = _ts()


class SyncRun(SQLModel, table=True):
    """One sync run of one connector: when, and what it sent, skipped and failed."""

    __tablename__ = "sync_runs"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    connector: str = Field(max_length=64, index=True)
    dry_run: bool = False
    # running | done | failed
    status: str = Field(max_length=16)
    counts: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)


class SourceActivity(SQLModel, table=True):
    """Per source and event type: the newest event time stored and when the
    source last delivered one, kept by the ingest path in each batch's
    transaction, so freshness is read from a few rows, never from events."""

    __tablename__ = "source_activity"

    source: str = Field(primary_key=True, max_length=64)
    type: str = Field(primary_key=True, max_length=64)
    last_ts: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    events: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))


class IngestCount(SQLModel, table=True):
    """What ingestion did per UTC day (of receipt) and source: stored,
    duplicate and rejected records (the data-quality spike checks)."""

    __tablename__ = "ingest_counts"

    day: date = Field(sa_column=sa.Column(sa.Date, primary_key=True))
    source: str = Field(primary_key=True, max_length=64)
    accepted: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))
    duplicates: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0)
    )
    rejected: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))


class IngestMinimised(SQLModel, table=True):
    """What minimisation did per UTC day (of receipt), source, event type and
    property: ``action`` is dropped (not on the allow-list, or an IP that is no
    address), scrubbed (text rewritten) or ip (an address truncated)."""

    __tablename__ = "ingest_minimised"

    day: date = Field(sa_column=sa.Column(sa.Date, primary_key=True))
    source: str = Field(primary_key=True, max_length=64)
    type: str = Field(primary_key=True, max_length=64)
    property: str = Field(primary_key=True, max_length=64)
    action: str = Field(primary_key=True, max_length=16)
    count: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))


class MonitorAlert(SQLModel, table=True):
    """An alert of a monitoring check: opened when the check first fires for
    its subject, updated while it keeps firing, resolved when it stops."""

    __tablename__ = "alerts"
    __table_args__ = (sa.Index("ix_alerts_check_subject", "check", "subject"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    check: str = Field(max_length=64)
    subject: str = Field(max_length=255)
    severity: str = Field(max_length=16)
    message: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    day: date = Field(sa_column=sa.Column(sa.Date, nullable=False))
    details: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )
    # check + subject while open, NULL once resolved: one open alert per pair.
    open_key: str | None = Field(default=None, max_length=400, unique=True)
    first_seen: datetime = _ts()
    last_seen: datetime = _ts()
    resolved_at: datetime | None = _ts(nullable=True)
    # What each configured on_alert action did: {"0:webhook": {status, attempts, reason}}.
    actions: dict = Field(
        default_factory=dict, sa_column=sa.Column(JSONType, nullable=False, default=dict)
    )
    # Actions still to perform (pending or to retry): the runs look only at these alerts.
    pending_actions: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0, index=True)
    )


class Suppression(SQLModel, table=True):
    """An identifier of an erased person, as a keyed hash (core/privacy): events
    that name it are dropped at ingestion, so they do not re-create the person."""

    __tablename__ = "suppressions"

    hash: str = Field(primary_key=True, max_length=64)
    # The erasure's subject (its audit record's target): also a keyed hash.
    subject: str = Field(max_length=64)
    created_at: datetime = _ts()


class PrivacyDeletion(SQLModel, table=True):
    """An erasure a connector has not confirmed yet: the address to delete
    there, kept only until it confirms (then the row goes)."""

    __tablename__ = "privacy_deletions"
    __table_args__ = (sa.UniqueConstraint("connector", "email"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    connector: str = Field(max_length=64)
    # Sealed like every address at rest: with a key set, the unique key no
    # longer folds two erasures of one address (each ciphertext differs).
    email: str = Field(sa_column=sa.Column(SealedText(), nullable=False))
    # The erasure's audit subject (the user id's keyed hash), to tie the two.
    subject: str = Field(max_length=64)
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class EventCount(SQLModel, table=True):
    """Stored events per UTC day (of the event's time) and type, and the sum of
    their values (NULL counts as 0: revenue for purchases): kept in the
    transaction that stores or erases the events, so the overview's charts
    and totals read these rows instead of scanning every event."""

    __tablename__ = "event_counts"

    day: date = Field(sa_column=sa.Column(sa.Date, primary_key=True))
    type: str = Field(primary_key=True, max_length=64)
    events: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))
    value: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False, default=0.0))


class ProductCount(SQLModel, table=True):
    """``event_counts`` per product too, for the events that name one (the
    overview's top products), kept the same way."""

    __tablename__ = "product_counts"
    __table_args__ = (sa.Index("ix_product_counts_product_id", "product_id"),)

    type: str = Field(primary_key=True, max_length=64)
    product_id: str = Field(primary_key=True, max_length=255)
    day: date = Field(sa_column=sa.Column(sa.Date, primary_key=True))
    events: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, default=0))
    value: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False, default=0.0))


class CampaignOutcome(SQLModel, table=True):
    """One participant of a campaign and what they did in the attribution window
    (core.monitoring.outcomes): the assignment and the 0/1 counts and revenue
    of ``core.monitoring.campaigns.outcomes``, for the window it was computed for."""

    __tablename__ = "campaign_outcomes"
    __table_args__ = (
        sa.Index("ix_campaign_outcomes_profile_id", "profile_id"),
        sa.Index(
            "ix_campaign_outcomes_first", "window_seconds", "campaign", "assigned_at", "profile_id"
        ),
        # Covering indexes: results and the notebook's filters aggregate an index
        # in its order, not the table.
        sa.Index(
            "ix_campaign_outcomes_counts",
            "window_seconds",
            "campaign",
            "arm",
            "holdout",
            "sent",
            "delivered",
            "opened",
            "clicked",
            "visited",
            "converted",
            "unsubscribed",
            "revenue",
        ),  # fmt: skip
        sa.Index(
            "ix_campaign_outcomes_overview",
            "window_seconds",
            "campaign",
            "workflow",
            "segment",
            "assigned_at",
        ),  # fmt: skip
    )

    window_seconds: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    campaign: str = Field(primary_key=True, max_length=255)
    profile_id: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    kind: str = Field(max_length=16)
    workflow: str | None = Field(default=None, max_length=255)
    segment: str | None = Field(default=None, max_length=255)
    arm: str = Field(max_length=255)
    holdout: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    assigned_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    sent: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    delivered: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    opened: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    clicked: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    visited: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    converted: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    unsubscribed: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    revenue: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    computed_at: datetime = _ts()


class CampaignOutcomeMessage(SQLModel, table=True):
    """One message of a stored participant (the per-template rows of campaign
    results): its template, status flags and what its tracking events showed."""

    __tablename__ = "campaign_outcome_messages"
    __table_args__ = (
        sa.Index("ix_campaign_outcome_messages_profile_id", "profile_id"),
        sa.Index("ix_campaign_outcome_messages_person", "window_seconds", "campaign", "profile_id"),
        sa.Index(
            "ix_campaign_outcome_messages_counts",
            "window_seconds",
            "campaign",
            "arm",
            "template",
            "status",
            "opened",
            "clicked",
            "unsubscribed",
        ),  # fmt: skip
    )

    window_seconds: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    key: str = Field(primary_key=True, max_length=255)
    campaign: str = Field(max_length=255)
    profile_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    arm: str = Field(max_length=255)
    template: str = Field(max_length=255)
    status: str = Field(max_length=32)
    opened: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    clicked: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    unsubscribed: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))


class CampaignOutcomeRun(SQLModel, table=True):
    """The last refresh of the stored outcomes for one attribution window: the
    newest event id it saw and when it started (what the next refresh
    looks past)."""

    __tablename__ = "campaign_outcome_runs"

    window_seconds: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    max_event_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    finished_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    participants: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    recomputed: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
