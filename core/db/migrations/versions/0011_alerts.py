"""alerts, source_activity, ingest_counts: monitoring

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import core.db.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("check", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.Column("open_key", sa.String(length=400), nullable=True),
        sa.Column("first_seen", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("actions", JSON, nullable=False),
        sa.Column("pending_actions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("open_key", name=op.f("uq_alerts_open_key")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_check_subject", ["check", "subject"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_alerts_pending_actions"), ["pending_actions"], unique=False
        )

    op.create_table(
        "ingest_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("accepted", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "source", name=op.f("pk_ingest_counts")),
    )
    op.create_table(
        "source_activity",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("last_ts", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "type", name=op.f("pk_source_activity")),
    )
    # Events stored before this revision: their activity, once, so freshness
    # knows every source from the start (ingestion keeps it from now on).
    op.execute(
        "INSERT INTO source_activity (source, type, last_ts, last_received_at, events) "
        "SELECT source, type, max(ts), max(received_at), count(*) FROM events "
        "GROUP BY source, type"
    )


def downgrade() -> None:
    op.drop_table("source_activity")
    op.drop_table("ingest_counts")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_pending_actions"))
        batch_op.drop_index("ix_alerts_check_subject")

    op.drop_table("alerts")
