"""worker: one row per Celery worker node, for liveness per launcher instead of per host.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The table definition is frozen here on purpose: later changes to tuna's live tables
must not change what this migration creates.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PreciseDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("insert_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("update_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("valid", sa.Boolean, nullable=False, server_default=sa.text("1")),
        sa.Column("machine_id", sa.Integer, nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("nodename", sa.String(255), nullable=False),
        sa.Column("db_name", sa.String(64), nullable=False),
        sa.Column("session", sa.Integer, nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("processes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("started_ts", PreciseDateTime, nullable=True),
        sa.Column("heartbeat_ts", PreciseDateTime, nullable=True),
        sa.Column("stopped_ts", PreciseDateTime, nullable=True),
        sa.UniqueConstraint("nodename", name="uq_worker_nodename"),
    )
    op.create_index("ix_worker_machine", "worker", ["machine_id"])


def downgrade() -> None:
    op.drop_index("ix_worker_machine", table_name="worker")
    op.drop_table("worker")
