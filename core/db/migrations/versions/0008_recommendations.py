"""product_related, product_popularity, recommender_runs: what recommenders precompute

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

import core.db.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_related",
        sa.Column("recommender", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=255), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("related_id", sa.String(length=255), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "recommender", "product_id", "rank", name=op.f("pk_product_related")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "product_popularity",
        sa.Column("recommender", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=255), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("recommender", "product_id", name=op.f("pk_product_popularity")),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_product_popularity_recommender_score_product_id",
        "product_popularity",
        ["recommender", "score", "product_id"],
        unique=False,
    )
    op.create_table(
        "recommender_runs",
        sa.Column("recommender", sa.String(length=64), nullable=False),
        sa.Column("as_of", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("related", sa.Integer(), nullable=False),
        sa.Column("popular", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("recommender", name=op.f("pk_recommender_runs")),
    )


def downgrade() -> None:
    op.drop_table("recommender_runs")
    op.drop_index(
        "ix_product_popularity_recommender_score_product_id", table_name="product_popularity"
    )
    op.drop_table("product_popularity")
    op.drop_table("product_related")
