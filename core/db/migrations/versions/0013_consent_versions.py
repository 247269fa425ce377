"""consents: the version of the text agreed to; purpose email -> email_marketing

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consents") as batch:
        batch.add_column(sa.Column("version", sa.String(length=64), nullable=True))
    # A profile holding both names keeps the new one (unique per profile and purpose).
    op.execute(
        "DELETE FROM consents WHERE purpose = 'email' AND profile_id IN "
        "(SELECT profile_id FROM consents WHERE purpose = 'email_marketing')"
    )
    consents = sa.table("consents", sa.column("purpose", sa.String))
    op.execute(
        consents.update().where(consents.c.purpose == "email").values(purpose="email_marketing")
    )


def downgrade() -> None:
    consents = sa.table("consents", sa.column("purpose", sa.String))
    op.execute(
        consents.update().where(consents.c.purpose == "email_marketing").values(purpose="email")
    )
    with op.batch_alter_table("consents") as batch:
        batch.drop_column("version")
