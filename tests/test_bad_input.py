"""Bad input (DESIGN.md §4): a one-line error, a non-zero exit, and no row changed.

Each case runs the command as a user would and checks three things: its exit code, that
stderr is exactly one line with no traceback, and that a snapshot of every table is the
same before and after. Errors about a service must name it and how to start it, and
never show a password.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_checks import LOAD_JOB, one_line_error, run, snapshot
from conftest import TunaEnv

from tuna.errors import EXIT_BAD_INPUT, EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_SCHEMA, EXIT_UNAVAILABLE

SECRET = "s3cretPW"
#: A label that breaks any SQL built by pasting strings.
NASTY_LABEL = 'it\'s; DROP TABLE job -- "x": y'


def session_args(session_id: int | str) -> dict[str, list[str]]:
    """Every command that works on one session, by name."""
    s = str(session_id)
    return {
        "enqueue_only": ["example", "--session_id", s, "--enqueue_only"],
        "execute": ["example", "--session_id", s, "--execute"],
        "status": ["example", "--session_id", s, "--status"],
        "worker": ["example", "--session_id", s],
        "load_job": ["-l", "seed", "--session_id", s],
        "load_job_shim": ["-l", "seed", "--session_id", s],
    }


def script_for(command: str) -> str:
    return {"load_job": LOAD_JOB, "load_job_shim": "example/load_job.py"}.get(command, "go_fish.py")


# -- sessions and jobs ------------------------------------------------------------------


@pytest.mark.parametrize("command", list(session_args(0)))
def test_unknown_session_id_is_refused(tuna_env: TunaEnv, command: str) -> None:
    tuna_env.setup_session(jobs=2)
    before = snapshot(tuna_env)

    proc = run(tuna_env, *session_args(99)[command], script=script_for(command))

    line = one_line_error(proc, EXIT_NOT_FOUND)
    assert "session_example" in line and "99" in line and "--init_session" in line
    assert snapshot(tuna_env) == before


@pytest.mark.parametrize("label_args", [[], ["-l", ""]], ids=["no-label", "empty-label"])
def test_init_session_needs_a_label(tuna_env: TunaEnv, label_args: list[str]) -> None:
    tuna_env.ok("example", "--add_tables")
    before = snapshot(tuna_env)

    proc = run(tuna_env, "example", "--init_session", *label_args)

    assert "-l LABEL" in one_line_error(proc, EXIT_BAD_INPUT)
    assert snapshot(tuna_env) == before


@pytest.mark.parametrize("script", ["go_fish.py", LOAD_JOB])
def test_a_label_longer_than_its_column_is_refused(tuna_env: TunaEnv, script: str) -> None:
    session = tuna_env.setup_session(jobs=1)
    before = snapshot(tuna_env)
    label = "x" * 61
    args = ["example", "--init_session"] if script == "go_fish.py" else ["--session_id", str(session)]

    proc = run(tuna_env, *args, "-l", label, script=script)

    assert "60" in one_line_error(proc, EXIT_BAD_INPUT)
    assert snapshot(tuna_env) == before


@pytest.mark.parametrize(
    "arch_args",
    [["-a", "gfx908"], ["-n", "120"], ["-a", "gfx90a", "-n", "120"], ["-a", "gfx908", "-n", "104"]],
    ids=["arch", "num_cu", "right-arch-wrong-cu", "wrong-arch-right-cu"],
)
def test_load_job_arch_or_cu_contradicting_the_session_is_refused(tuna_env: TunaEnv, arch_args: list[str]) -> None:
    session = tuna_env.setup_session(jobs=1)  # detected from the fake rocminfo: gfx90a, 104 CUs
    before = snapshot(tuna_env)

    proc = run(tuna_env, "-l", "more", "--session_id", str(session), *arch_args, script=LOAD_JOB)

    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert "contradicts session" in line and ("gfx90a" in line or "104" in line)
    assert snapshot(tuna_env) == before


def test_load_job_arch_and_cu_matching_the_session_are_accepted(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=1)

    out = tuna_env.ok("-l", "more", "--session_id", str(session), "-a", "gfx90a", "-n", "104", script=LOAD_JOB)

    assert out.strip() == "New jobs added: 1"
    assert tuna_env.states(session) == {"new": 2}


def test_head_node_arch_contradicting_the_session_is_refused(embedded_env: TunaEnv) -> None:
    session = embedded_env.setup_session(jobs=2)
    before = snapshot(embedded_env)

    proc = run(embedded_env, "example", "--session_id", str(session), "--execute", "-a", "gfx908")

    assert "contradicts session" in one_line_error(proc, EXIT_BAD_INPUT)
    assert snapshot(embedded_env) == before


@pytest.mark.parametrize(
    ("script", "args"),
    [
        (LOAD_JOB, ["-l", "x", "--session_id", "1", "-n", "7"]),
        ("go_fish.py", ["example", "--init_session", "-l", "x", "-n", "7"]),
    ],
    ids=["load_job", "init_session"],
)
def test_num_cu_outside_the_allowed_choices_is_refused(embedded_env: TunaEnv, script: str, args: list[str]) -> None:
    embedded_env.setup_session(jobs=1)
    before = snapshot(embedded_env)

    proc = run(embedded_env, *args, script=script)

    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert "invalid choice: 7" in line and "104" in line
    assert snapshot(embedded_env) == before


def test_a_label_with_quotes_and_colons_is_stored_verbatim(tuna_env: TunaEnv) -> None:
    tuna_env.ok("example", "--add_tables")
    session = int(tuna_env.ok("example", "--init_session", "-l", NASTY_LABEL).strip())
    # The same values again find the same session: the lookup binds the label too.
    assert int(tuna_env.ok("example", "--init_session", "-l", NASTY_LABEL).strip()) == session

    out = tuna_env.ok("-l", NASTY_LABEL, "--session_id", str(session), script=LOAD_JOB)

    assert out.strip() == "New jobs added: 1"
    assert tuna_env.query("SELECT reason FROM session_example WHERE id = :s", s=session) == [(NASTY_LABEL,)]
    assert tuna_env.query("SELECT reason FROM job WHERE session = :s", s=session) == [(NASTY_LABEL,)]
    # As a head node's job filter it is a bound value as well.
    assert "completed 1" in tuna_env.ok("example", "--session_id", str(session), "--execute", "-l", NASTY_LABEL)
    assert tuna_env.states(session) == {"completed": 1}


# -- services that cannot be reached ---------------------------------------------------

UNREACHABLE_DB = {
    "TUNA_DB_HOSTNAME": "127.0.0.1",
    "TUNA_DB_PORT": "1",
    "TUNA_DB_USER_NAME": "root",
    "TUNA_DB_USER_PASSWORD": SECRET,
}
UNREACHABLE_BROKER = {
    "TUNA_CELERY_BROKER_HOST": "127.0.0.1",
    "TUNA_CELERY_BROKER_PORT": "1",
    "TUNA_CELERY_BROKER_USER": "guest",
    "TUNA_CELERY_BROKER_PWD": SECRET,
}


def db_commands(session: int) -> dict[str, tuple[str, list[str]]]:
    s = str(session)
    return {
        "add_tables": ("go_fish.py", ["example", "--add_tables"]),
        "init_session": ("go_fish.py", ["example", "--init_session", "-l", "other"]),
        "load_job": (LOAD_JOB, ["-l", "other", "--session_id", s]),
        "status": ("go_fish.py", ["example", "--session_id", s, "--status"]),
        "enqueue_only": ("go_fish.py", ["example", "--session_id", s, "--enqueue_only"]),
        "execute": ("go_fish.py", ["example", "--session_id", s, "--execute"]),
        "worker": ("go_fish.py", ["example", "--session_id", s]),
    }


def assert_no_secret(proc: subprocess.CompletedProcess[str]) -> None:
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", list(db_commands(0)))
def test_unreachable_database_is_named_with_how_to_start_it(tuna_env: TunaEnv, command: str) -> None:
    session = tuna_env.setup_session(jobs=2)
    before = snapshot(tuna_env)
    script, args = db_commands(session)[command]

    proc = run(tuna_env, *args, script=script, extra_env=UNREACHABLE_DB)

    line = one_line_error(proc, EXIT_UNAVAILABLE)
    assert "cannot reach the database" in line and "127.0.0.1:1" in line
    assert "mariadbd" in line and "TUNA_DB_HOSTNAME" in line
    assert_no_secret(proc)
    assert snapshot(tuna_env) == before


def test_a_refused_database_login_names_the_credentials(services_env: TunaEnv) -> None:
    session = services_env.setup_session(jobs=1)
    before = snapshot(services_env)

    proc = run(
        services_env,
        "example",
        "--session_id",
        str(session),
        "--status",
        extra_env={"TUNA_DB_USER_PASSWORD": SECRET},
    )

    line = one_line_error(proc, EXIT_UNAVAILABLE)
    assert "database" in line and "TUNA_DB_USER_PASSWORD" in line
    assert_no_secret(proc)
    assert snapshot(services_env) == before


@pytest.mark.parametrize(
    ("db_url", "exit_code", "message"),
    [
        ("sqlite:////dev/null/tuna.db", EXIT_UNAVAILABLE, "cannot reach the database at sqlite:////dev/null"),
        (
            f"postgresql://tuner:{SECRET}@127.0.0.1:1/tuna",
            EXIT_CONFIG,
            "TUNA_DB_URL: no driver for 'postgresql'",
        ),
    ],
    ids=["sqlite-folder-not-creatable", "driver-not-installed"],
)
def test_an_unusable_database_url_is_one_line(embedded_env: TunaEnv, db_url: str, exit_code: int, message: str) -> None:
    proc = run(embedded_env, "example", "--add_tables", extra_env={"TUNA_DB_URL": db_url})

    assert message in one_line_error(proc, exit_code)
    assert_no_secret(proc)


@pytest.mark.parametrize("command", ["enqueue_only", "worker", "shutdown_workers"])
def test_unreachable_broker_is_named_with_how_to_start_it(tuna_env: TunaEnv, command: str) -> None:
    session = tuna_env.setup_session(jobs=2)
    before = snapshot(tuna_env)
    args = {
        "enqueue_only": ["example", "--session_id", str(session), "--enqueue_only"],
        "worker": ["example", "--session_id", str(session)],
        "shutdown_workers": ["example", "--shutdown_workers"],
    }[command]

    proc = run(tuna_env, *args, extra_env=UNREACHABLE_BROKER)

    line = one_line_error(proc, EXIT_UNAVAILABLE)
    assert "cannot reach the broker" in line and "127.0.0.1:1" in line and "rabbitmq-server" in line
    assert_no_secret(proc)
    assert snapshot(tuna_env) == before


@pytest.mark.parametrize(
    "backend_env",
    [
        {"TUNA_CELERY_BACKEND_HOST": "127.0.0.1", "TUNA_CELERY_BACKEND_PORT": "1"},
        {"TUNA_CELERY_BACKEND_URL": f"redis://:{SECRET}@127.0.0.1:1/15"},
    ],
    ids=["port", "url-with-password"],
)
def test_unreachable_result_backend_is_named_with_how_to_start_it(
    tuna_env: TunaEnv, backend_env: dict[str, str]
) -> None:
    session = tuna_env.setup_session(jobs=2)
    before = snapshot(tuna_env)

    proc = run(tuna_env, "example", "--session_id", str(session), "--enqueue_only", extra_env=backend_env)

    line = one_line_error(proc, EXIT_UNAVAILABLE)
    assert "cannot reach the result backend" in line and "127.0.0.1:1" in line and "redis-server" in line
    assert_no_secret(proc)
    assert snapshot(tuna_env) == before
    assert tuna_env.states(session) == {"new": 2}


# -- the GPU host's tools ------------------------------------------------------------


@pytest.mark.parametrize("command", ["init_session", "worker"])
def test_missing_rocminfo_is_refused_before_anything_is_written(
    tuna_env: TunaEnv, tmp_path: Path, command: str
) -> None:
    session = tuna_env.setup_session(jobs=1)
    before = snapshot(tuna_env)
    empty = tmp_path / "no_rocm"
    empty.mkdir()
    args = ["--init_session", "-l", "other"] if command == "init_session" else ["--session_id", str(session)]

    proc = run(tuna_env, "example", *args, extra_env={"ROCM_PATH": str(empty)})

    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert f"rocminfo not found at {empty}/bin/rocminfo" in line and "ROCM_PATH" in line
    assert snapshot(tuna_env) == before


def test_missing_rocminfo_at_run_time_errors_every_job(tuna_env: TunaEnv, tmp_path: Path) -> None:
    session = tuna_env.setup_session(jobs=3)  # created with the fake ROCm tree
    empty = tmp_path / "no_rocm"
    empty.mkdir()

    proc = run(tuna_env, "example", "--session_id", str(session), "--execute", extra_env={"ROCM_PATH": str(empty)})

    assert "Traceback" not in proc.stderr, proc.stderr
    assert tuna_env.states(session) == {"errored": 3}, proc.stderr
    rows = tuna_env.query("SELECT result, retries FROM job WHERE session = :s", s=session)
    for result, retries in rows:
        assert f"rocminfo not found at {empty}/bin/rocminfo" in result
        assert retries >= 1
    assert "errored 3" in proc.stdout


# -- files, flags and settings -----------------------------------------------------------

BAD_YAML = {
    "syntax": ("session_id: 1\nstatus: [unclosed\n", "is not valid YAML"),
    "not-a-mapping": ("- session_id\n- status\n", "must hold a mapping"),
    "unknown-option": (
        "session_id: 1\nexecute: true\nno_such_flag: 3\n",
        "unknown key 'no_such_flag'",
    ),
    # A bad later step must stop the file before its first step runs.
    "bad-second-step": (
        "session_id: 1\nexecute:\n  enabled: true\nbogus:\n  enabled: true\n",
        "unknown key 'bogus'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_YAML))
def test_malformed_yaml_is_refused(embedded_env: TunaEnv, case: str) -> None:
    session = embedded_env.setup_session(jobs=2)
    assert session == 1
    before = snapshot(embedded_env)
    text, message = BAD_YAML[case]
    path = embedded_env.home / "options.yaml"
    path.write_text(text)

    proc = run(embedded_env, "example", "--yaml", str(path))

    assert message in one_line_error(proc, EXIT_BAD_INPUT)
    assert snapshot(embedded_env) == before


def test_yaml_that_is_missing_or_joined_by_flags_is_refused(embedded_env: TunaEnv) -> None:
    session = embedded_env.setup_session(jobs=1)
    path = embedded_env.home / "options.yaml"
    path.write_text(f"session_id: {session}\nexecute: true\n")
    before = snapshot(embedded_env)

    missing = run(embedded_env, "example", "--yaml", str(path) + ".nope")
    joined = run(embedded_env, "example", "--yaml", str(path), "--session_id", str(session))

    assert "cannot read" in one_line_error(missing, EXIT_BAD_INPUT)
    assert "not accepted with --yaml" in one_line_error(joined, EXIT_BAD_INPUT)
    assert snapshot(embedded_env) == before


def test_a_valid_yaml_file_runs_like_its_flags(embedded_env: TunaEnv) -> None:
    session = embedded_env.setup_session(jobs=2)
    path = embedded_env.home / "options.yaml"
    path.write_text(f"session_id: {session}\nexecute: true\n")

    out = embedded_env.ok("example", f"--yaml={path}", "--debug")

    assert "completed 2" in out
    assert embedded_env.states(session) == {"completed": 2}


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("go_fish.py", ["example", "--no_such_flag"]),
        ("go_fish.py", ["--no_such_flag"]),
        ("go_fish.py", ["no_such_library"]),
        ("go_fish.py", ["example", "--session_id", "one"]),
        (LOAD_JOB, ["-l", "x", "--session_id", "1", "--no_such_flag"]),
        (LOAD_JOB, ["--session_id", "1"]),
        ("example/load_job.py", ["-l", "x", "--session_id", "1", "--no_such_flag"]),
    ],
    ids=[
        "go_fish",
        "go_fish-no-library",
        "unknown-library",
        "session-not-int",
        "load_job",
        "load_job-no-label",
        "load_job-shim",
    ],
)
def test_unknown_or_malformed_flags_are_one_usage_line(embedded_env: TunaEnv, script: str, args: list[str]) -> None:
    proc = run(embedded_env, *args, script=script)

    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert "--help" in line
    assert not (embedded_env.home / "tuna.db").exists()


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("go_fish.py", ["example", "--session_id", "1", "--enqueue_only"]),
        ("go_fish.py", ["example", "--init_session", "-l", "other"]),
        (LOAD_JOB, ["-l", "other", "--session_id", "1"]),
    ],
    ids=["enqueue_only", "init_session", "load_job"],
)
def test_a_malformed_setting_is_one_line_naming_the_variable(
    embedded_env: TunaEnv, script: str, args: list[str]
) -> None:
    assert embedded_env.setup_session(jobs=2) == 1
    before = snapshot(embedded_env)

    proc = run(embedded_env, *args, script=script, extra_env={"TUNA_CELERY_JOB_BATCH_SIZE": "abc"})

    line = one_line_error(proc, EXIT_CONFIG)
    assert "TUNA_CELERY_JOB_BATCH_SIZE" in line and "'abc'" in line
    assert snapshot(embedded_env) == before


def test_enqueue_only_and_execute_together_are_refused(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=2)
    before = snapshot(tuna_env)

    proc = run(tuna_env, "example", "--session_id", str(session), "--enqueue_only", "--execute")

    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert "--enqueue_only" in line and "--execute" in line
    assert snapshot(tuna_env) == before


# -- before --add_tables -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "enqueue_only", "execute", "worker", "init_session", "load_job"])
def test_commands_before_add_tables_say_to_run_it(tuna_env: TunaEnv, command: str) -> None:
    before = snapshot(tuna_env)
    script, args = db_commands(1)[command]

    proc = run(tuna_env, *args, script=script)

    assert "./go_fish.py example --add_tables" in one_line_error(proc, EXIT_SCHEMA)
    assert snapshot(tuna_env) == before
