"""workflows, workflow_states, workflow_history, workflow_actions, workflow_triggers: automation

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import core.db.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "workflow_triggers",
        sa.Column("workflow", sa.String(length=64), nullable=False),
        sa.Column("checked_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workflow", name=op.f("pk_workflow_triggers")),
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column(
            "definition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_workflows_name_version")),
    )
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflows_name"), ["name"], unique=False)

    op.create_table(
        "workflow_states",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("workflow", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "profile_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("entry_key", sa.String(length=255), nullable=False),
        sa.Column("active_key", sa.String(length=400), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=True),
        sa.Column("waiting", sa.String(length=16), nullable=True),
        sa.Column("wake_at", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("deadline", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("arm", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("entered_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name=op.f("fk_workflow_states_profile_id_profiles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_states")),
        sa.UniqueConstraint("active_key", name=op.f("uq_workflow_states_active_key")),
    )
    with op.batch_alter_table("workflow_states", schema=None) as batch_op:
        batch_op.create_index(
            "ix_workflow_states_profile_id_workflow", ["profile_id", "workflow"], unique=False
        )
        batch_op.create_index("ix_workflow_states_wake_at", ["wake_at"], unique=False)
        batch_op.create_index(
            "ix_workflow_states_workflow_status", ["workflow", "status"], unique=False
        )

    op.create_table(
        "workflow_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "profile_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("workflow", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("marketing", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("done_at", core.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name=op.f("fk_workflow_actions_profile_id_profiles")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_states.id"],
            name=op.f("fk_workflow_actions_run_id_workflow_states"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_actions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_workflow_actions_idempotency_key")),
    )
    with op.batch_alter_table("workflow_actions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_workflow_actions_profile_id_created_at", ["profile_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_workflow_actions_status"), ["status"], unique=False)

    op.create_table(
        "workflow_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=True),
        sa.Column("what", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_states.id"],
            name=op.f("fk_workflow_history_run_id_workflow_states"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_history")),
    )
    with op.batch_alter_table("workflow_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflow_history_run_id"), ["run_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("workflow_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_history_run_id"))

    op.drop_table("workflow_history")
    with op.batch_alter_table("workflow_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_actions_status"))
        batch_op.drop_index("ix_workflow_actions_profile_id_created_at")

    op.drop_table("workflow_actions")
    with op.batch_alter_table("workflow_states", schema=None) as batch_op:
        batch_op.drop_index("ix_workflow_states_workflow_status")
        batch_op.drop_index("ix_workflow_states_wake_at")
        batch_op.drop_index("ix_workflow_states_profile_id_workflow")

    op.drop_table("workflow_states")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflows_name"))

    op.drop_table("workflows")
    op.drop_table("workflow_triggers")
