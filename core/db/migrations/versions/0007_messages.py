"""messages: the outbox and delivery log of every email

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

import core.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "profile_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("template", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("via", sa.String(length=64), nullable=True),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name=op.f("fk_messages_profile_id_profiles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_messages_idempotency_key")),
    )
    op.create_index(
        "ix_messages_profile_id_created_at", "messages", ["profile_id", "created_at"], unique=False
    )
    op.create_index("ix_messages_status", "messages", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_messages_status", table_name="messages")
    op.drop_index("ix_messages_profile_id_created_at", table_name="messages")
    op.drop_table("messages")
