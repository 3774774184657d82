"""Table shapes shared by every library, and the core's own tables.

Every table has MITuna's four common columns. A library's job table is built with
:func:`job_columns` so that the head node can claim, enqueue and drain it without knowing
the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

#: Long text: rocminfo or fin output can pass MySQL TEXT's 64 KiB.
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")
#: Attempt times to the microsecond: jobs can take milliseconds.
PreciseDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def common_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("insert_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column(
            "update_ts",
            sa.DateTime,
            nullable=False,
            server_default=sa.func.now(),
            onupdate=sa.func.now(),
        ),
        sa.Column("valid", sa.Boolean, nullable=False, server_default=sa.text("1")),
    ]


def job_columns(session_table: str, states: Sequence[str]) -> list[sa.Column]:
    """The columns the head node relies on, for a library's job table.

    ``attempt`` counts claims and, with ``task_id``, keys every result: a result is
    applied only to the attempt that produced it, so a redelivered task cannot
    overwrite a newer attempt.
    """
    return [
        *common_columns(),
        sa.Column("reason", sa.String(60), nullable=False, server_default=""),
        sa.Column("session", sa.Integer, sa.ForeignKey(f"{session_table}.id"), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*states, name="job_state", native_enum=True, create_constraint=False),
            nullable=False,
            server_default=states[0],
        ),
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result", LongText, nullable=True),
        sa.Column("gpu_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("machine_id", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("task_id", sa.String(160), nullable=True),
        # The state the running attempt was claimed from: where a retry or release returns it.
        sa.Column("claimed_from", sa.String(32), nullable=True),
    ]


machine = sa.Table(
    "machine",
    metadata,
    *common_columns(),
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
    # tuna: liveness of the workers on this host; time from the database server.
    sa.Column("heartbeat_ts", sa.DateTime, nullable=True),
    sa.Column("worker_processes", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("hostname", name="uq_machine_hostname"),
)

job_attempt = sa.Table(
    "job_attempt",
    metadata,
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
    sa.Index("ix_job_attempt_session", "session"),
)

worker = sa.Table(
    "worker",
    metadata,
    *common_columns(),
    # One row per Celery worker node a launcher runs: liveness is kept per launcher, so
    # that stopping one launcher never silences another's workers on the same host.
    sa.Column("machine_id", sa.Integer, nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("nodename", sa.String(255), nullable=False),  # Celery's name@host
    sa.Column("db_name", sa.String(64), nullable=False),
    sa.Column("session", sa.Integer, nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("processes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pid", sa.Integer, nullable=True),
    # Times from the database server.
    sa.Column("started_ts", PreciseDateTime, nullable=True),
    sa.Column("heartbeat_ts", PreciseDateTime, nullable=True),
    sa.Column("stopped_ts", PreciseDateTime, nullable=True),
    sa.UniqueConstraint("nodename", name="uq_worker_nodename"),
    sa.Index("ix_worker_machine", "machine_id"),
)

CORE_TABLES = (machine, worker, job_attempt)
