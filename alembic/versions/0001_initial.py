"""Initial schema: machine, job_attempt, session_example, job.

Revision ID: 0001
Revises:
Branch labels: core, example (Example's tables are part of the core's base)
Create Date: 2026-11-25

The table definitions are frozen here on purpose: later changes to tuna's live tables
must not change what this migration creates.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = ("core", "example")
depends_on = None

LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")
PreciseDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def common():
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("insert_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("update_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("valid", sa.Boolean, nullable=False, server_default=sa.text("1")),
    ]


def upgrade() -> None:
    op.create_table(
        "machine",
        *common(),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False, server_default="22"),
        sa.Column("local_ip", sa.String(64), nullable=True),
        sa.Column("local_port", sa.Integer, nullable=False, server_default="22"),
        sa.Column("user", sa.String(64), nullable=False, server_default=""),
        sa.Column("avail_gpus", sa.String(512), nullable=False, server_default=""),
        sa.Column("arch", sa.String(64), nullable=False, server_default=""),
        sa.Column("num_cu", sa.Integer, nullable=False, server_default="64"),
        sa.Column("sclk", sa.Integer, nullable=True),
        sa.Column("mclk", sa.Integer, nullable=True),
        sa.Column("available", sa.Boolean, nullable=False, server_default=sa.text("0")),
        sa.Column("remarks", sa.String(255), nullable=True),
        sa.Column("ipmi_inaccessible", sa.Boolean, nullable=False, server_default=sa.text("0")),
        sa.Column("ipmi_ip", sa.String(64), nullable=True),
        sa.Column("ipmi_port", sa.Integer, nullable=True),
        sa.Column("ipmi_user", sa.String(64), nullable=True),
        sa.Column("heartbeat_ts", sa.DateTime, nullable=True),
        sa.Column("worker_processes", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("hostname", name="uq_machine_hostname"),
    )
    op.create_table(
        "job_attempt",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("insert_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("job_table", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("session", sa.Integer, nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("machine_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("gpu_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("started", PreciseDateTime, nullable=True),
        sa.Column("ended", PreciseDateTime, nullable=True),
        sa.Column("exit_status", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.UniqueConstraint("job_table", "job_id", "attempt", name="uq_job_attempt"),
    )
    op.create_index("ix_job_attempt_session", "job_attempt", ["session"])
    op.create_table(
        "session_example",
        *common(),
        sa.Column("arch", sa.String(20), nullable=False),
        sa.Column("num_cu", sa.Integer, nullable=False),
        sa.Column("rocm_v", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(60), nullable=False),
        sa.Column("ticket", sa.String(64), nullable=False, server_default="N/A"),
        sa.Column("docker", sa.String(64), nullable=False, server_default="miopentuna"),
        sa.UniqueConstraint("arch", "num_cu", "rocm_v", "reason", "docker", name="uq_session_example"),
    )
    op.create_table(
        "job",
        *common(),
        sa.Column("reason", sa.String(60), nullable=False, server_default=""),
        sa.Column("session", sa.Integer, sa.ForeignKey("session_example.id"), nullable=False),
        sa.Column(
            "state",
            sa.Enum("new", "running", "completed", "errored", name="job_state", create_constraint=False),
            nullable=False,
            server_default="new",
        ),
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result", LongText, nullable=True),
        sa.Column("gpu_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("machine_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("task_id", sa.String(160), nullable=True),
        sa.UniqueConstraint("reason", "session", name="uq_job_reason_session"),
    )
    op.create_index("ix_job_session_state", "job", ["session", "state"])


def downgrade() -> None:
    op.drop_index("ix_job_session_state", table_name="job")
    op.drop_table("job")
    op.drop_table("session_example")
    op.drop_index("ix_job_attempt_session", table_name="job_attempt")
    op.drop_table("job_attempt")
    op.drop_table("machine")
