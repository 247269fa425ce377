"""encryption at rest: sealed addresses need more than 320 characters; identities.sealed

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An address sealed with AES-GCM and base64-encoded is longer than the
    # address: the columns that may hold one become TEXT.
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.String(length=320), type_=sa.Text(), existing_nullable=True
        )
    with op.batch_alter_table("sync_states", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.String(length=320), type_=sa.Text(), existing_nullable=False
        )
    with op.batch_alter_table("privacy_deletions", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.String(length=320), type_=sa.Text(), existing_nullable=False
        )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("sealed")
    with op.batch_alter_table("privacy_deletions", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.Text(), type_=sa.String(length=320), existing_nullable=False
        )
    with op.batch_alter_table("sync_states", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.Text(), type_=sa.String(length=320), existing_nullable=False
        )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=sa.Text(), type_=sa.String(length=320), existing_nullable=True
        )
