"""MIOpen's tables (reference/miopen.md §3): its own branch, upgradable without Example's.

Revision ID: miopen_0001
Revises:
Branch labels: miopen
Create Date: 2026-12-01

No ``depends_on`` the core's 0001 on purpose, although MIOpen's commands need ``machine``:
Alembic folds a dependency into its dependent's row of ``alembic_version`` (the table would
hold ``miopen_0001`` alone, and refuses ``0001`` next to it as "overlapping"), so a
database's stamps would no longer say which core revision it has without loading Alembic.
MIOpen's tables refer to no core table; ``alembic upgrade heads`` (or ``go_fish.py miopen
--add_tables``) makes both.

A frozen copy of tuna/miopen/tables.py as of this revision, on a MetaData of its own:
later changes to the live tables must not change what this migration creates. A test
compares what it creates with tuna.miopen.tables on SQLite and MariaDB.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "miopen_0001"
down_revision = None
branch_labels = ("miopen",)
depends_on = None

metadata = sa.MetaData()
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")


def common_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("insert_ts", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("update_ts", sa.DateTime, nullable=False, server_default=sa.func.now(), onupdate=sa.func.now()),
        sa.Column("valid", sa.Boolean, nullable=False, server_default=sa.text("1")),
    ]


def job_columns(session_table: str, states: Sequence[str]) -> list[sa.Column]:
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
        sa.Column("claimed_from", sa.String(32), nullable=True),
    ]

#: Job states in MITuna's order: MITuna's code relies on 'new' being first.
JOB_STATES = (
    "new",
    "started",
    "running",
    "completed",
    "timeout",
    "error_status",
    "no_update",
    "errored",
    "bad_param",
    "error",
    "transfer_error",
    "eval_start",
    "evaluating",
    "evaluated",
    "evaluate_error",
    "compile_start",
    "compiling",
    "compiled",
    "compile_error",
    "not_applicable",
    "aborted",
    "not_tunable",
    "compiled_pend",
    "evaluated_pend",
)
FIN_STEPS = (
    "find_compile",
    "find_eval",
    "get_solvers",
    "get_applicability",
    "not_fin",
    "miopen_find_compile",
    "miopen_find_eval",
    "miopen_perf_compile",
    "miopen_perf_eval",
)
CONFIG_TYPES = ("convolution", "batch_norm")


class FinStepSet(sa.types.TypeDecorator[str]):
    """A set of fin steps: MySQL's SET there, a string elsewhere; read and written as one
    comma-separated string in FIN_STEPS order on both, so that the job's unique key means
    the same set however the steps were listed."""

    impl = sa.String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.SET(*FIN_STEPS))
        return dialect.type_descriptor(sa.String(255))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        steps = set(value.split(",") if isinstance(value, str) else value) - {""}
        unknown = steps - set(FIN_STEPS)
        if unknown:
            raise ValueError(f"unknown fin step(s): {', '.join(sorted(unknown))}")
        return ",".join(s for s in FIN_STEPS if s in steps)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return ",".join(s for s in FIN_STEPS if s in value)


MediumBlob = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
LongBlob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: Kernel times: double precision (MITuna's FLOAT loses digits on export, §11.23).
Time = sa.Float(precision=53).with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")


def _fk(column: str, target: str, *, nullable: bool = False, cascade: bool = False) -> sa.Column:
    rule = "CASCADE" if cascade else None
    return sa.Column(
        column, sa.Integer, sa.ForeignKey(target, ondelete=rule, onupdate=rule), nullable=nullable, index=True
    )


solver = sa.Table(
    "solver",
    metadata,
    *common_columns(),
    sa.Column("solver", sa.String(128), nullable=False),
    sa.Column("tunable", sa.Boolean, nullable=False, server_default=sa.text("1")),
    sa.Column(
        "config_type",
        sa.Enum(*CONFIG_TYPES, name="config_type", native_enum=True, create_constraint=False),
        nullable=False,
        server_default="convolution",
    ),
    sa.Column("is_dynamic", sa.Boolean, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("solver", name="uq_solver"),
)

session = sa.Table(
    "session",
    metadata,
    *common_columns(),
    sa.Column("arch", sa.String(20), nullable=False, server_default=""),
    sa.Column("num_cu", sa.Integer, nullable=False),
    sa.Column("rocm_v", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(60), nullable=False),
    sa.Column("ticket", sa.String(64), nullable=False, server_default="N/A"),
    sa.Column("docker", sa.String(128), nullable=False, server_default="miopentuna"),
    sa.Column("miopen_v", sa.String(64), nullable=False),
    sa.UniqueConstraint("arch", "num_cu", "miopen_v", "rocm_v", "reason", "ticket", "docker", name="uq_session"),
)

framework = sa.Table(
    "framework",
    metadata,
    *common_columns(),
    sa.Column("framework", sa.String(64), nullable=False),
    sa.Column("version", sa.Float, nullable=False),
    sa.UniqueConstraint("framework", "version", name="uq_framework"),
)

model = sa.Table(
    "model",
    metadata,
    *common_columns(),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.Float, nullable=False),
    sa.UniqueConstraint("model", "version", name="uq_model"),
)

_TENSOR_KEY = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")
tensor = sa.Table(
    "tensor",
    metadata,
    *common_columns(),
    *[sa.Column(f"dim{i}", sa.Integer, nullable=False, server_default="0") for i in range(5)],
    sa.Column("layout", sa.String(60), nullable=False, server_default="NCHW"),
    sa.Column("num_dims", sa.Integer, nullable=False, server_default="2"),
    sa.Column("data_type", sa.String(60), nullable=False, server_default="FP32"),
    sa.UniqueConstraint(*_TENSOR_KEY, name="uq_tensor"),
)


def _int(name: str, default: int) -> sa.Column:
    return sa.Column(name, sa.Integer, nullable=False, server_default=str(default))


conv_config = sa.Table(
    "conv_config",
    metadata,
    *common_columns(),
    _int("batchsize", 0),
    _int("spatial_dim", 2),
    *[_int(f"pad_{a}", 0) for a in "hwd"],
    *[_int(f"conv_stride_{a}", 1) for a in "hwd"],
    *[_int(f"dilation_{a}", 1) for a in "hwd"],
    _int("group_count", 1),
    sa.Column("mode", sa.String(40), nullable=False, server_default="conv"),
    sa.Column("pad_mode", sa.String(40), nullable=False, server_default="default"),
    *[_int(f"trans_output_pad_{a}", 0) for a in "hwd"],
    sa.Column("direction", sa.String(8), nullable=False),
    _fk("input_tensor", "tensor.id"),
    _fk("weight_tensor", "tensor.id"),
    sa.Column("out_layout", sa.String(60), nullable=False, server_default="NCHW"),
    sa.Column("md5", sa.String(40), nullable=False),
    sa.Column("driver", sa.String(512), nullable=False, server_default=""),
    sa.UniqueConstraint("md5", name="uq_conv_config"),
)

BN_KEY = ("alpha", "beta", "forw", "verify", "back", "mode", "batchsize", "run", "save", "input_tensor")
bn_config = sa.Table(
    "bn_config",
    metadata,
    *common_columns(),
    _int("alpha", 1),
    _int("beta", 0),
    _int("forw", 1),
    _int("verify", 1),
    _int("back", 0),
    _int("mode", 0),
    _int("batchsize", 32),
    _int("run", 0),
    _int("save", 0),
    _fk("input_tensor", "tensor.id"),
    sa.Column("in_layout", sa.String(60), nullable=False, server_default="NCHW"),
    sa.Column("driver", sa.String(512), nullable=False, server_default=""),
    sa.UniqueConstraint(*BN_KEY, name="uq_bn_config"),
)


def _kernel_columns() -> list[sa.Column]:
    return [
        sa.Column("kernel_name", sa.String(4000), nullable=False),
        sa.Column("kernel_args", sa.Text, nullable=False),
        sa.Column("kernel_blob", MediumBlob, nullable=False),
        sa.Column("kernel_hash", sa.String(128), nullable=False),
        sa.Column("uncompressed_size", sa.Integer, nullable=False),
    ]


def _fdb_columns() -> list[sa.Column]:
    return [
        sa.Column("fdb_key", sa.String(255), nullable=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("kernel_time", Time, nullable=False),
        sa.Column("workspace_sz", sa.BigInteger, nullable=False),
        sa.Column("alg_lib", sa.String(64), nullable=True),
        sa.Column("opencl", sa.Boolean, nullable=False),
        sa.Column("kernel_group", sa.Integer, nullable=True),
    ]


def _family(prefix: str, config: str) -> dict[str, sa.Table]:
    """The tables every problem kind has (conv_*, bn_*), keyed by their suffix."""
    cfg = f"{config}.id"
    job = sa.Table(
        f"{prefix}_job",
        metadata,
        *job_columns("session", JOB_STATES),
        sa.Column("cache_loc", sa.Text, nullable=True),
        *[
            sa.Column(name, sa.DateTime, nullable=False, server_default=sa.func.now())
            for name in ("compile_start", "compile_end", "eval_start", "eval_end")
        ],
        sa.Column("solver", sa.String(128), nullable=False, server_default=""),
        sa.Column("eval_mid", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("fin_step", FinStepSet(), nullable=False, server_default="not_fin"),
        _fk("config", cfg),
        sa.UniqueConstraint("config", "solver", "session", "fin_step", name=f"uq_{prefix}_job"),
        sa.Index(f"ix_{prefix}_job_session_state", "session", "state"),
    )
    tables = {"job": job}
    tables["config_tags"] = sa.Table(
        f"{prefix}_config_tags",
        metadata,
        *common_columns(),
        sa.Column("tag", sa.String(128), nullable=False, server_default="no_tag"),
        sa.Column("recurrent", sa.Boolean, nullable=False, server_default=sa.text("0")),
        _fk("config", cfg),
        sa.UniqueConstraint("config", "tag", name=f"uq_{prefix}_config_tags"),
    )
    tables["solver_applicability"] = sa.Table(
        f"{prefix}_solver_applicability",
        metadata,
        *common_columns(),
        sa.Column("applicable", sa.Boolean, nullable=False, server_default=sa.text("1")),
        _fk("config", cfg),
        _fk("solver", "solver.id"),
        _fk("session", "session.id"),
        sa.UniqueConstraint("config", "solver", "session", name=f"uq_{prefix}_solver_applicability"),
    )
    tables["kernel_cache"] = sa.Table(
        f"{prefix}_kernel_cache",
        metadata,
        *common_columns(),
        *_kernel_columns(),
        sa.Column("kernel_group", sa.Integer, nullable=True, index=True),
    )
    tables["job_cache_fin"] = sa.Table(
        f"{prefix}_job_cache_fin",
        metadata,
        *common_columns(),
        *_kernel_columns(),
        _fk("job_id", f"{prefix}_job.id", cascade=True),
        _fk("solver_id", "solver.id", cascade=True),
    )
    tables["job_cache"] = sa.Table(
        f"{prefix}_job_cache",
        metadata,
        *common_columns(),
        sa.Column("kernel_blob", LongBlob, nullable=False),
        sa.Column("cache_name", sa.String(45), nullable=False),
        _fk("job_id", f"{prefix}_job.id"),
        sa.UniqueConstraint("job_id", name=f"uq_{prefix}_job_cache"),
    )
    tables["find_db"] = sa.Table(
        f"{prefix}_find_db",
        metadata,
        *common_columns(),
        *_fdb_columns(),
        _fk("config", cfg),
        _fk("session", "session.id"),
        _fk("solver", "solver.id"),
        sa.UniqueConstraint("config", "solver", "opencl", "session", name=f"uq_{prefix}_find_db"),
        sa.Index(f"ix_{prefix}_find_db_key", "fdb_key"),
    )
    tables["golden"] = sa.Table(
        f"{prefix}_golden",
        metadata,
        *common_columns(),
        sa.Column("golden_miopen_v", sa.Integer, nullable=False),
        sa.Column("arch", sa.String(20), nullable=False, server_default=""),
        sa.Column("num_cu", sa.Integer, nullable=False, server_default="0"),
        *_fdb_columns(),
        _fk("config", cfg, cascade=True),
        _fk("session", "session.id", cascade=True),
        _fk("solver", "solver.id", cascade=True),
        sa.UniqueConstraint(
            "golden_miopen_v", "config", "solver", "arch", "num_cu", "opencl", name=f"uq_{prefix}_golden"
        ),
    )
    tables["benchmark"] = sa.Table(
        f"{prefix}_benchmark",
        metadata,
        *common_columns(),
        sa.Column("batchsize", sa.Integer, nullable=False, server_default="32"),
        sa.Column("gpu_number", sa.Integer, nullable=True, server_default="1"),
        sa.Column("driver_cmd", sa.String(512), nullable=False),
        _fk("config", cfg),
        _fk("framework", "framework.id"),
        _fk("model", "model.id"),
        sa.UniqueConstraint("framework", "model", "batchsize", "gpu_number", "config", name=f"uq_{prefix}_benchmark"),
    )
    return tables


conv = _family("conv", "conv_config")
bn = _family("bn", "bn_config")

conv_job = conv["job"]
conv_config_tags = conv["config_tags"]
conv_solver_applicability = conv["solver_applicability"]
conv_kernel_cache = conv["kernel_cache"]
conv_job_cache_fin = conv["job_cache_fin"]
conv_job_cache = conv["job_cache"]
conv_find_db = conv["find_db"]
conv_golden = conv["golden"]
conv_benchmark = conv["benchmark"]
bn_job = bn["job"]
bn_config_tags = bn["config_tags"]
bn_solver_applicability = bn["solver_applicability"]
bn_kernel_cache = bn["kernel_cache"]
bn_job_cache_fin = bn["job_cache_fin"]
bn_job_cache = bn["job_cache"]
bn_find_db = bn["find_db"]
bn_golden = bn["golden"]
bn_benchmark = bn["benchmark"]

#: In creation order (foreign keys point backwards).
TABLES = tuple(metadata.sorted_tables)


def upgrade() -> None:
    metadata.create_all(op.get_bind(), tables=list(TABLES), checkfirst=False)


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), tables=list(TABLES), checkfirst=False)
