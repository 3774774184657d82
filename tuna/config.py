"""Every setting tuna reads, typed, in one place.

Variable names follow MITuna where it had one. Flags override the environment, the
environment overrides the defaults below. With none of the database, broker or backend
variables set, tuna runs on one machine with no servers: SQLite for the database, kombu's
``filesystem://`` transport and Celery's ``file://`` result backend under ``TUNA_HOME``
(chosen by measurement: see DESIGN.md §2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.engine import URL, make_url

from tuna.errors import ConfigError

DB_VARIABLES = ("TUNA_DB_URL", "TUNA_DB_HOSTNAME", "TUNA_DB_NAME", "TUNA_DB_USER_NAME", "TUNA_DB_PORT")
BROKER_VARIABLES = (
    "TUNA_CELERY_BROKER_URL",
    "TUNA_CELERY_BROKER_HOST",
    "TUNA_CELERY_BROKER_PORT",
    "TUNA_CELERY_BROKER_USER",
    "TUNA_CELERY_V_HOST",
)
BACKEND_VARIABLES = ("TUNA_CELERY_BACKEND_URL", "TUNA_CELERY_BACKEND_HOST", "TUNA_CELERY_BACKEND_PORT")

#: Redis logical database that holds results, as in MITuna.
REDIS_RESULT_DB = 15


@dataclass(frozen=True)
class Settings:
    db_url: URL
    """SQLAlchemy URL of the tuning database."""
    broker_url: str
    """Celery broker URL (RabbitMQ in production)."""
    backend_url: str
    """Celery result backend URL (Redis db 15 in production)."""
    tuna_home: Path
    """Where the embedded default keeps its database, queues and results."""
    rocm_path: Path
    """Root of the ROCm install: ``bin/rocminfo``, ``bin/fin``, ``.info/version``."""
    log_dir: Path | None
    """TUNA_LOG_DIR: each Celery worker of a GPU host logs to a file here, one per worker
    node; None (unset): workers log to their launcher's stderr."""
    log_level: str
    job_batch_size: int = 1000
    """Jobs claimed per database round trip by the head node."""
    cpus_on_node: int = 0
    """SLURM_CPUS_ON_NODE: worker processes per host; 0 means the CPU count."""
    job_time_limit_s: float | None = None
    """A job's process group is killed after this many seconds (None: its step's own limit)."""
    max_retries: int = 3
    """Attempts a job gets before it is errored for good."""
    worker_heartbeat_s: float = 10.0
    """How often a launcher refreshes its workers' rows in the worker table and checks that
    its session still has work."""
    worker_dead_after_s: float = 30.0
    """A worker whose heartbeat is older than this is dead; its running jobs go back."""
    worker_max_restarts: int = 5
    """Times a launcher restarts a Celery worker that died, within the window below,
    before it gives up and exits non-zero."""
    worker_restart_window_s: float = 600.0
    """The window over which worker restarts are counted."""
    result_expires_s: int = 7 * 24 * 3600
    """Results not drained within this time are dropped by the backend."""
    bundle_target_s: float = 1.0
    """Short jobs are bundled into messages of about this much work."""
    max_bundle: int = 128
    """Most jobs one message may carry."""
    lost_result_after_s: float = 30.0
    """A task with no record anywhere this long after it was sent is sent again."""
    head_poll_s: float = 0.02
    """How long the head node waits for results when it has nothing else to do."""
    db_retry_max_s: float = 300.0
    """How long a busy database (deadlock, lock wait timeout, locked file) is retried."""

    def time_limit_s(self, step_limit_s: float) -> float:
        """The time limit of one job of a step: TUNA_JOB_TIME_LIMIT_S, else the step's own."""
        return self.job_time_limit_s or step_limit_s

    @property
    def is_embedded_db(self) -> bool:
        return self.db_url.get_backend_name() == "sqlite"

    @property
    def db_name(self) -> str:
        """The name used in queue and task names (MITuna's ``TUNA_DB_NAME``)."""
        if self.is_embedded_db:
            return Path(self.db_url.database or "tuna").stem or "tuna"
        return self.db_url.database or "tuna"

    @property
    def db_url_safe(self) -> str:
        return self.db_url.render_as_string(hide_password=True)

    @property
    def broker_url_safe(self) -> str:
        return str(maybe_sanitize_url(self.broker_url))

    @property
    def backend_url_safe(self) -> str:
        return str(maybe_sanitize_url(self.backend_url))


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(name, f"must be positive, got {raw}")
    return value


def _db_url(env: Mapping[str, str], home: Path) -> URL:
    if env.get("TUNA_DB_URL"):
        try:
            return make_url(env["TUNA_DB_URL"])
        except Exception:
            raise ConfigError("TUNA_DB_URL", "not a valid SQLAlchemy URL") from None
    if not any(env.get(name) for name in DB_VARIABLES):
        return URL.create("sqlite", database=str(home / "tuna.db"))
    return URL.create(
        "mysql+pymysql",
        username=env.get("TUNA_DB_USER_NAME") or "root",
        password=env.get("TUNA_DB_USER_PASSWORD") or None,
        host=env.get("TUNA_DB_HOSTNAME") or "localhost",
        port=_int(env, "TUNA_DB_PORT", 3306, minimum=1),
        database=env.get("TUNA_DB_NAME") or "tuna",
        query={"charset": "utf8mb4"},
    )


def _broker_url(env: Mapping[str, str]) -> str:
    if env.get("TUNA_CELERY_BROKER_URL"):
        return env["TUNA_CELERY_BROKER_URL"]
    if not any(env.get(name) for name in BROKER_VARIABLES):
        return "filesystem://"
    user = quote(env.get("TUNA_CELERY_BROKER_USER") or "guest", safe="")
    password = quote(env.get("TUNA_CELERY_BROKER_PWD") or "guest", safe="")
    host = env.get("TUNA_CELERY_BROKER_HOST") or "localhost"
    port = _int(env, "TUNA_CELERY_BROKER_PORT", 5672, minimum=1)
    vhost = quote(env.get("TUNA_CELERY_V_HOST") or "/", safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


def _backend_url(env: Mapping[str, str], home: Path) -> str:
    if env.get("TUNA_CELERY_BACKEND_URL"):
        return env["TUNA_CELERY_BACKEND_URL"]
    if not any(env.get(name) for name in BACKEND_VARIABLES):
        return f"file://{home / 'results'}"
    host = env.get("TUNA_CELERY_BACKEND_HOST") or "localhost"
    port = _int(env, "TUNA_CELERY_BACKEND_PORT", 6379, minimum=1)
    return f"redis://{host}:{port}/{REDIS_RESULT_DB}"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    home = Path(env.get("TUNA_HOME") or Path.home() / ".tuna").expanduser()
    level = (env.get("TUNA_LOGLEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("TUNA_LOGLEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return Settings(
        db_url=_db_url(env, home),
        broker_url=_broker_url(env),
        backend_url=_backend_url(env, home),
        tuna_home=home,
        rocm_path=Path(env.get("ROCM_PATH") or "/opt/rocm"),
        log_dir=Path(env["TUNA_LOG_DIR"]).expanduser() if env.get("TUNA_LOG_DIR", "").strip() else None,
        log_level=level,
        job_batch_size=_int(env, "TUNA_CELERY_JOB_BATCH_SIZE", 1000, minimum=1),
        cpus_on_node=_int(env, "SLURM_CPUS_ON_NODE", 0),
        job_time_limit_s=_float(env, "TUNA_JOB_TIME_LIMIT_S", 0.0) or None,
        max_retries=_int(env, "TUNA_MAX_RETRIES", 3, minimum=1),
        worker_heartbeat_s=_float(env, "TUNA_WORKER_HEARTBEAT_S", 10.0),
        worker_dead_after_s=_float(env, "TUNA_WORKER_DEAD_AFTER_S", 30.0),
        worker_max_restarts=_int(env, "TUNA_WORKER_MAX_RESTARTS", 5),
        worker_restart_window_s=_float(env, "TUNA_WORKER_RESTART_WINDOW_S", 600.0),
        result_expires_s=_int(env, "TUNA_RESULT_EXPIRES_S", 7 * 24 * 3600, minimum=60),
        bundle_target_s=_float(env, "TUNA_BUNDLE_TARGET_S", 1.0),
        max_bundle=_int(env, "TUNA_MAX_BUNDLE", 128, minimum=1),
        lost_result_after_s=_float(env, "TUNA_LOST_RESULT_AFTER_S", 30.0),
        db_retry_max_s=_float(env, "TUNA_DB_RETRY_MAX_S", 300.0),
    )
