"""bulk loads: crash-safe index deferral and queued merge moves

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import core.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_loads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "indexes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_loads")),
    )
    op.create_table(
        "bulk_load_moves",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("load_id", sa.Integer(), nullable=False),
        sa.Column("from_profile", sa.BigInteger(), nullable=False),
        sa.Column("to_profile", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_load_moves")),
    )
    op.create_index(
        op.f("ix_bulk_load_moves_load_id"), "bulk_load_moves", ["load_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_bulk_load_moves_load_id"), table_name="bulk_load_moves")
    op.drop_table("bulk_load_moves")
    op.drop_table("bulk_loads")
