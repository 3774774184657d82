"""The Example library's tables, as MITuna names them."""

from __future__ import annotations

import sqlalchemy as sa

from tuna.db.tables import common_columns, job_columns, metadata

JOB_STATES = ("new", "running", "completed", "errored")

session_example = sa.Table(
    "session_example",
    metadata,
    *common_columns(),
    sa.Column("arch", sa.String(20), nullable=False),
    sa.Column("num_cu", sa.Integer, nullable=False),
    sa.Column("rocm_v", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(60), nullable=False),
    sa.Column("ticket", sa.String(64), nullable=False, server_default="N/A"),
    sa.Column("docker", sa.String(64), nullable=False, server_default="miopentuna"),
    sa.UniqueConstraint("arch", "num_cu", "rocm_v", "reason", "docker", name="uq_session_example"),
)

job = sa.Table(
    "job",
    metadata,
    *job_columns("session_example", JOB_STATES),
    sa.UniqueConstraint("reason", "session", name="uq_job_reason_session"),
    sa.Index("ix_job_session_state", "session", "state"),
)
