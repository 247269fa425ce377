"""profiles.merged_into index: finding the profiles merged into a few others

Real-time segment evaluation retires the memberships of the profiles merged
into the ones it evaluates; without this index that lookup scans profiles.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_profiles_merged_into"), "profiles", ["merged_into"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_profiles_merged_into"), table_name="profiles")
