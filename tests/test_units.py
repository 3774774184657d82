"""Small tests that need no service: rocminfo parsing, settings, and names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROCM
from kombu.utils.url import url_to_parts

from tuna.celery_app.naming import is_session_worker, queue_name, session_worker_pattern, task_id_prefix, worker_name
from tuna.config import load_settings
from tuna.errors import BadInput, ConfigError
from tuna.machine import discover, parse_rocminfo

SECRET = "s3cretPW/@:x"


@pytest.fixture(scope="module")
def rocminfo_text() -> str:
    return subprocess.run([str(ROCM / "bin" / "rocminfo")], capture_output=True, text=True, check=True).stdout


# -- rocminfo --------------------------------------------------------------------------


def test_parse_rocminfo_lists_the_cpu_and_both_gpus_with_their_target_ids(rocminfo_text: str) -> None:
    agents = parse_rocminfo(rocminfo_text)

    assert [agent.device_type for agent in agents] == ["CPU", "GPU", "GPU"]
    gpus = agents[1:]
    assert {gpu.name for gpu in gpus} == {"gfx90a"}
    assert {gpu.isa for gpu in gpus} == {"gfx90a:sramecc+:xnack-"}
    assert {gpu.compute_units for gpu in gpus} == {104}
    # Cache and pool sections nested under an agent do not leak into its fields.
    assert agents[0].name == "AMD EPYC 7A53 64-Core Processor"


def test_discover_ignores_the_cpu_agent() -> None:
    local = discover(ROCM)

    assert (local.arch, local.arch_full, local.num_cu) == ("gfx90a", "gfx90a:sramecc+:xnack-", 104)
    assert local.gpus == (0, 1) and local.avail_gpus == "0,1"


def test_discover_without_rocminfo_names_the_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"rocminfo not found at .*bin/rocminfo"):
        discover(tmp_path)


def test_a_rocminfo_that_cannot_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "rocminfo").write_text("not executable")
    with pytest.raises(BadInput, match=r"cannot run rocminfo at .*bin/rocminfo: Permission denied"):
        discover(tmp_path)


def test_rocminfo_without_gpu_agents_is_refused(tmp_path: Path, rocminfo_text: str) -> None:
    cpu_only = rocminfo_text.split("Agent 2")[0]
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "rocminfo"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + cpu_only + "\nEOF\n")
    fake.chmod(0o755)
    assert [a.device_type for a in parse_rocminfo(cpu_only)] == ["CPU"]
    with pytest.raises(BadInput, match="lists no GPU agent"):
        discover(tmp_path)


# -- settings --------------------------------------------------------------------------


def test_no_variables_means_the_embedded_default(tmp_path: Path) -> None:
    settings = load_settings({"TUNA_HOME": str(tmp_path)})

    assert settings.db_url.get_backend_name() == "sqlite"
    assert settings.db_url.database == str(tmp_path / "tuna.db")
    assert settings.broker_url == "filesystem://"
    assert settings.backend_url == f"file://{tmp_path / 'results'}"
    assert settings.rocm_path == Path("/opt/rocm")
    assert settings.job_batch_size == 1000


def test_mysql_url_is_built_from_the_tuna_db_variables(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TUNA_HOME": str(tmp_path),
            "TUNA_DB_HOSTNAME": "db.example",
            "TUNA_DB_PORT": "3307",
            "TUNA_DB_USER_NAME": "tuner",
            "TUNA_DB_USER_PASSWORD": SECRET,
            "TUNA_DB_NAME": "tuna_prod",
        }
    )
    url = settings.db_url

    assert url.drivername == "mysql+pymysql"
    assert (url.host, url.port, url.username, url.database) == ("db.example", 3307, "tuner", "tuna_prod")
    assert url.password == SECRET  # special characters survive
    assert settings.db_name == "tuna_prod"
    assert "s3cretPW" not in settings.db_url_safe and "db.example:3307" in settings.db_url_safe


def test_broker_url_uses_the_virtual_host_and_hides_its_password(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TUNA_HOME": str(tmp_path),
            "TUNA_CELERY_BROKER_HOST": "mq.example",
            "TUNA_CELERY_BROKER_PORT": "5673",
            "TUNA_CELERY_BROKER_USER": "tuner",
            "TUNA_CELERY_BROKER_PWD": SECRET,
            "TUNA_CELERY_V_HOST": "tuna_vhost",
        }
    )
    parts = url_to_parts(settings.broker_url)

    assert (parts.scheme, parts.hostname, parts.port) == ("amqp", "mq.example", 5673)
    assert (parts.username, parts.password, parts.path) == ("tuner", SECRET, "tuna_vhost")
    assert "s3cretPW" not in settings.broker_url_safe and "mq.example:5673" in settings.broker_url_safe


def test_broker_without_a_virtual_host_uses_the_default_one(tmp_path: Path) -> None:
    settings = load_settings({"TUNA_HOME": str(tmp_path), "TUNA_CELERY_BROKER_HOST": "mq"})
    assert url_to_parts(settings.broker_url).path == "/"


def test_redis_backend_uses_db_15_and_hides_a_password(tmp_path: Path) -> None:
    settings = load_settings({"TUNA_HOME": str(tmp_path), "TUNA_CELERY_BACKEND_HOST": "redis.example"})
    assert settings.backend_url == "redis://redis.example:6379/15"

    with_password = load_settings(
        {"TUNA_HOME": str(tmp_path), "TUNA_CELERY_BACKEND_URL": "redis://:s3cretPW@redis.example:6379/15"}
    )
    assert "s3cretPW" not in with_password.backend_url_safe
    assert "redis.example:6379/15" in with_password.backend_url_safe


def test_full_url_overrides_win_over_the_parts(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TUNA_HOME": str(tmp_path),
            "TUNA_DB_URL": "sqlite:////data/other.db",
            "TUNA_DB_HOSTNAME": "ignored",
            "TUNA_CELERY_BROKER_URL": "amqp://u:p@elsewhere:5672/vh",
            "TUNA_CELERY_BROKER_HOST": "ignored",
        }
    )
    assert settings.db_url.database == "/data/other.db" and settings.db_name == "other"
    assert settings.broker_url == "amqp://u:p@elsewhere:5672/vh"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TUNA_CELERY_JOB_BATCH_SIZE", "abc"),
        ("TUNA_CELERY_JOB_BATCH_SIZE", "0"),
        ("TUNA_DB_PORT", "3306x"),
        ("SLURM_CPUS_ON_NODE", "-1"),
        ("TUNA_LOGLEVEL", "chatty"),
    ],
)
def test_a_malformed_setting_names_its_variable(tmp_path: Path, variable: str, value: str) -> None:
    env = {"TUNA_HOME": str(tmp_path), "TUNA_DB_HOSTNAME": "db", variable: value}
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert raised.value.variable == variable and str(raised.value).startswith(variable)


# -- names -----------------------------------------------------------------------------


def test_queue_and_task_names_carry_the_database_and_session() -> None:
    assert queue_name("compile", "tuna_db", 3) == "compile_q_tuna_db_sess_3"
    assert queue_name("eval", "tuna_db", 3) == "eval_q_tuna_db_sess_3"
    assert task_id_prefix("tuna_db", 3, "example") != task_id_prefix("tuna_db", 31, "example")
    assert worker_name("host", "tuna_db", 1) == "tuna_host_sess_1.tuna_db"
    assert worker_name("host", "tuna_db", 1, 0) == "tuna_host_sess_1_gpu_id_0.tuna_db"


@pytest.mark.parametrize(
    ("nodename", "db_name", "session_id", "expected"),
    [
        ("tuna_host_sess_1.db@host", "db", 1, True),
        ("tuna_host_sess_1_gpu_id_0.db@host", "db", 1, True),
        ("tuna_host_sess_10.db@host", "db", 1, False),
        ("tuna_host_sess_10_gpu_id_0.db@host", "db", 1, False),
        ("tuna_host_sess_1.db@host", "db", 10, False),
        ("tuna_host_sess_12.db@host", "db", 12, True),
        # Session 1 of another database, or of a database whose name ends like this one's.
        ("tuna_host_sess_1.other@host", "db", 1, False),
        ("tuna_host_sess_1.x.db@host", "db", 1, False),
        ("tuna_host_sess_1.db@host", "x.db", 1, False),
        # A host name that itself looks like a session name, or holds dots.
        ("tuna_box_sess_1_sess_2.db@box_sess_1", "db", 1, False),
        ("tuna_box_sess_1_sess_2.db@box_sess_1", "db", 2, True),
        ("tuna_node1.cluster_sess_3.db@node1.cluster", "db", 3, True),
        ("celery@host", "db", 1, False),
        ("tuna_host_sess_1@host", "db", 1, False),  # a worker named before databases were
    ],
)
def test_is_session_worker_matches_the_database_and_session_exactly(
    nodename: str, db_name: str, session_id: int, expected: bool
) -> None:
    assert is_session_worker(nodename, db_name, session_id) is expected
    per_gpu = "_gpu_id_" in nodename
    assert (re.match(session_worker_pattern(db_name, session_id, per_gpu=per_gpu), nodename) is not None) is expected
