"""event_counts, product_counts, campaign_outcomes: what the dashboards read

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import core.db.models

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _flag(name: str) -> sa.Column:
    return sa.Column(name, sa.SmallInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "event_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day", "type", name=op.f("pk_event_counts")),
    )
    op.create_table(
        "product_counts",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("type", "product_id", "day", name=op.f("pk_product_counts")),
    )
    op.create_index("ix_product_counts_product_id", "product_counts", ["product_id"])
    op.create_table(
        "campaign_outcomes",
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("campaign", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("workflow", sa.String(length=255), nullable=True),
        sa.Column("segment", sa.String(length=255), nullable=True),
        sa.Column("arm", sa.String(length=255), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("assigned_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        *[
            _flag(n)
            for n in ("sent", "delivered", "opened", "clicked", "visited", "converted")
            + ("unsubscribed",)
        ],
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("computed_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "window_seconds", "campaign", "profile_id", name=op.f("pk_campaign_outcomes")
        ),
    )
    op.create_index("ix_campaign_outcomes_profile_id", "campaign_outcomes", ["profile_id"])
    op.create_index(
        "ix_campaign_outcomes_first",
        "campaign_outcomes",
        ["window_seconds", "campaign", "assigned_at", "profile_id"],
    )
    op.create_index(
        "ix_campaign_outcomes_counts",
        "campaign_outcomes",
        ["window_seconds", "campaign", "arm", "holdout", "sent", "delivered", "opened", "clicked",
         "visited", "converted", "unsubscribed", "revenue"],
    )  # fmt: skip
    op.create_index(
        "ix_campaign_outcomes_overview",
        "campaign_outcomes",
        ["window_seconds", "campaign", "workflow", "segment", "assigned_at"],
    )
    op.create_table(
        "campaign_outcome_messages",
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("campaign", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("arm", sa.String(length=255), nullable=False),
        sa.Column("template", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        _flag("opened"),
        _flag("clicked"),
        _flag("unsubscribed"),
        sa.PrimaryKeyConstraint("window_seconds", "key", name=op.f("pk_campaign_outcome_messages")),
    )
    op.create_index(
        "ix_campaign_outcome_messages_profile_id", "campaign_outcome_messages", ["profile_id"]
    )
    op.create_index(
        "ix_campaign_outcome_messages_person",
        "campaign_outcome_messages",
        ["window_seconds", "campaign", "profile_id"],
    )
    op.create_index(
        "ix_campaign_outcome_messages_counts",
        "campaign_outcome_messages",
        ["window_seconds", "campaign", "arm", "template", "status", "opened", "clicked",
         "unsubscribed"],
    )  # fmt: skip
    op.create_table(
        "campaign_outcome_runs",
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("max_event_id", sa.BigInteger(), nullable=False),
        sa.Column("started_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("participants", sa.BigInteger(), nullable=False),
        sa.Column("recomputed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("window_seconds", name=op.f("pk_campaign_outcome_runs")),
    )
    # The counts of the events already stored, as ingestion would have kept them.
    if op.get_context().dialect.name == "postgresql":
        day = "CAST(timezone('UTC', ts) AS DATE)"
    else:
        day = "date(ts)"
    op.execute(
        "INSERT INTO event_counts (day, type, events, value) "
        f"SELECT {day}, type, COUNT(*), COALESCE(SUM(value), 0) FROM events GROUP BY {day}, type"
    )
    op.execute(
        "INSERT INTO product_counts (type, product_id, day, events, value) "
        f"SELECT type, product_id, {day}, COUNT(*), COALESCE(SUM(value), 0) FROM events "
        f"WHERE product_id IS NOT NULL GROUP BY type, product_id, {day}"
    )


def downgrade() -> None:
    op.drop_table("campaign_outcome_runs")
    op.drop_table("campaign_outcome_messages")
    op.drop_table("campaign_outcomes")
    op.drop_table("product_counts")
    op.drop_table("event_counts")
