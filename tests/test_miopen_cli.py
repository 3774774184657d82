"""``go_fish.py miopen``: its schema branch, sessions, solver list and config import, as a user
runs them, on SQLite and on the real MariaDB.

The import tests read MITuna's real driver lines under ``../shared/data/miopen`` (set
TUNA_SHARED_DATA in a checkout that is not beside ``../shared``) and skip when absent.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_checks import one_line_error, snapshot
from conftest import MYSQL_URL, ROOT, SHARED_DATA, TunaEnv

from tuna.db import tables as core_tables
from tuna.db.schema import SCHEMA_REVISION
from tuna.errors import EXIT_BAD_INPUT, EXIT_SCHEMA
from tuna.miopen import tables
from tuna.miopen.driver import BnProblem, ConvProblem, DriverError, bn_from_rows, conv_from_rows, parse_line
from tuna.miopen.import_configs import rows_of
from tuna.miopen.library import SCHEMA_REVISION as MIOPEN_REVISION

ALEMBIC_INI = ROOT / "alembic.ini"
MIOPEN_DATA = SHARED_DATA / "miopen"
CORE_TABLES = {t.name for t in core_tables.CORE_TABLES}
EXAMPLE_TABLES = {"session_example", "job"}
MIOPEN_TABLES = {t.name for t in tables.TABLES}
WARNING = re.compile(r" WARNING tuna\.miopen\.import_configs: (?P<where>\S+:\d+|-d): (?P<message>.*)$")


def shared_files() -> list[Path]:
    files = sorted([*MIOPEN_DATA.glob("networks/*.txt"), *MIOPEN_DATA.glob("configs/*.txt")])
    if not files:
        pytest.skip(f"no MIOpen driver lines under {MIOPEN_DATA} (set TUNA_SHARED_DATA)")
    return files


def alembic(env: TunaEnv, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        env=env.vars,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env.home,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def stamps(env: TunaEnv) -> set[str]:
    return {row[0] for row in env.query("SELECT version_num FROM alembic_version")}


def table_names(env: TunaEnv) -> set[str]:
    engine = env.engine()
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def describe(env: TunaEnv, names: set[str]) -> dict[str, Any]:
    """Columns, keys and indexes of ``names`` as the inspector sees them."""
    engine = env.engine()
    try:
        inspector = sa.inspect(engine)
        found: dict[str, Any] = {}
        for table in sorted(names):
            found[table] = {
                "columns": [
                    (c["name"], c["type"].compile(dialect=engine.dialect), c["nullable"], c.get("default"))
                    for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                ),
                "fks": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                    for f in inspector.get_foreign_keys(table)
                ),
            }
        return found
    finally:
        engine.dispose()


@pytest.fixture
def other_env(tuna_env: TunaEnv) -> Iterator[TunaEnv]:
    """A second, empty database of the same kind, for ``alembic upgrade``."""
    home = tuna_env.home.parent / "other_home"
    home.mkdir()
    env_vars = {**tuna_env.vars, "TUNA_HOME": str(home)}
    db_name = None
    if tuna_env.kind == "services":
        db_name = f"{tuna_env.vars['TUNA_DB_NAME']}_other"
        env_vars["TUNA_DB_NAME"] = db_name
    try:
        yield TunaEnv(tuna_env.kind, env_vars, home)
    finally:
        if db_name:
            engine = sa.create_engine(MYSQL_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            engine.dispose()


# -- schema ------------------------------------------------------------------------------------


def test_add_tables_is_idempotent_and_stamps_the_core_and_miopen(tuna_env: TunaEnv) -> None:
    first = tuna_env.ok("miopen", "--add_tables")
    assert first.startswith("Created tables:")
    assert set(first.split(":", 1)[1].strip().split(", ")) == CORE_TABLES | MIOPEN_TABLES
    assert tuna_env.ok("miopen", "--add_tables").strip() == "All tables already exist"
    assert stamps(tuna_env) == {SCHEMA_REVISION, MIOPEN_REVISION}
    # Example's tables join the same database; the stamps stay one per branch head.
    assert tuna_env.ok("example", "--add_tables").strip() == "Created tables: session_example, job"
    assert stamps(tuna_env) == {SCHEMA_REVISION, MIOPEN_REVISION}
    assert table_names(tuna_env) == {"alembic_version"} | CORE_TABLES | EXAMPLE_TABLES | MIOPEN_TABLES


def test_the_miopen_migration_creates_what_tables_py_defines(tuna_env: TunaEnv, other_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")  # tables.py's definitions, through create_all
    alembic(other_env, "upgrade", "miopen@head")

    assert table_names(other_env) == {"alembic_version"} | MIOPEN_TABLES
    assert stamps(other_env) == {MIOPEN_REVISION}
    assert describe(other_env, MIOPEN_TABLES) == describe(tuna_env, MIOPEN_TABLES)
    # And tuna accepts the result once the core's branch is there too.
    alembic(other_env, "upgrade", "heads")
    assert stamps(other_env) == {SCHEMA_REVISION, MIOPEN_REVISION}
    assert other_env.ok("miopen", "--add_tables").strip() == "All tables already exist"
    assert other_env.ok("miopen", "--init_session", "-l", "x").strip() == "1"


def test_upgrading_one_library_leaves_the_other_alone(tuna_env: TunaEnv) -> None:
    alembic(tuna_env, "upgrade", "example@head")
    assert table_names(tuna_env) == {"alembic_version"} | CORE_TABLES | EXAMPLE_TABLES
    session = tuna_env.setup_session(jobs=2, label="keep")
    example_before = describe(tuna_env, CORE_TABLES | EXAMPLE_TABLES)
    rows_before = snapshot(tuna_env)
    assert rows_before is not None

    alembic(tuna_env, "upgrade", "miopen@head")
    assert stamps(tuna_env) == {SCHEMA_REVISION, MIOPEN_REVISION}
    assert describe(tuna_env, CORE_TABLES | EXAMPLE_TABLES) == example_before
    after = snapshot(tuna_env)
    assert after is not None
    assert {name: after[name] for name in rows_before if name != "alembic_version"} == {
        name: rows for name, rows in rows_before.items() if name != "alembic_version"
    }

    tuna_env.ok("miopen", "--init_session", "-l", "m")
    miopen_before = describe(tuna_env, MIOPEN_TABLES)
    alembic(tuna_env, "downgrade", "miopen@base")
    assert table_names(tuna_env) == {"alembic_version"} | CORE_TABLES | EXAMPLE_TABLES
    assert stamps(tuna_env) == {SCHEMA_REVISION}
    assert tuna_env.states(session) == {"new": 2}
    alembic(tuna_env, "upgrade", "miopen@head")
    assert describe(tuna_env, MIOPEN_TABLES) == miopen_before


def test_a_miopen_branch_at_another_revision_is_refused_and_example_still_works(tuna_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")
    tuna_env.query_commit(
        "UPDATE alembic_version SET version_num = 'miopen_0000' WHERE version_num = :v", v=MIOPEN_REVISION
    )
    before = snapshot(tuna_env)
    for args in (["--list_solvers"], ["--init_session", "-l", "x"], ["--add_tables"], ["import_configs", "-d", "x"]):
        line = one_line_error(tuna_env.run("miopen", *args), EXIT_SCHEMA)
        assert "miopen_0000" in line and MIOPEN_REVISION in line and "alembic upgrade heads" in line, line
    assert snapshot(tuna_env) == before
    assert tuna_env.setup_session(jobs=1) == 1  # Example's commands check only the core's stamp


def test_miopen_commands_on_a_database_without_its_tables_name_add_tables(tuna_env: TunaEnv) -> None:
    tuna_env.ok("example", "--add_tables")
    line = one_line_error(tuna_env.run("miopen", "--list_solvers"), EXIT_SCHEMA)
    assert "missing tables" in line and "./go_fish.py miopen --add_tables" in line


# -- sessions and solvers ----------------------------------------------------------------------


def test_init_session_reads_rocm_and_is_idempotent(tuna_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")
    label = 'it\'s "a" = b; c: 100%'
    proc = tuna_env.run("miopen", "--init_session", "-l", label)
    assert proc.returncode == 0 and proc.stdout == "1\n", proc.stderr
    assert "Added new session_id: 1" in proc.stderr
    again = tuna_env.run("miopen", "--init_session", "-l", label)
    assert again.stdout == "1\n" and "Session for these values already exists: 1" in again.stderr
    row = tuna_env.query("SELECT arch, num_cu, rocm_v, miopen_v, reason, ticket, docker FROM session")
    # The fake ROCm tree: rocminfo's gfx90a with 104 CUs, .info/version, include/miopen/version.h.
    assert row == [("gfx90a", 104, "6.2.0-66", "2d1fd99", label, "N/A", "miopentuna")]

    other = tuna_env.ok("miopen", "--init_session", "-l", label, "-a", "gfx1201", "-n", "32", "--ticket", "T-1")
    assert other == "2\n"
    assert tuna_env.query("SELECT arch, num_cu, ticket FROM session WHERE id = 2") == [("gfx1201", 32, "T-1")]


def test_init_session_without_version_header_is_one_line(tuna_env: TunaEnv, tmp_path: Path) -> None:
    tuna_env.ok("miopen", "--add_tables")
    rocm = tmp_path / "rocm"
    (rocm / ".info").mkdir(parents=True)
    (rocm / ".info" / "version").write_text("6.3.0\n")
    proc = tuna_env.run(
        "miopen", "--init_session", "-l", "x", "-a", "gfx90a", "-n", "104", extra_env={"ROCM_PATH": str(rocm)}
    )
    line = one_line_error(proc, EXIT_BAD_INPUT)
    assert "cannot read the MIOpen version from" in line and "version.h" in line
    # A header without a tweak names the version by MAJOR.MINOR.PATCH.
    (rocm / "include" / "miopen").mkdir(parents=True)
    (rocm / "include" / "miopen" / "version.h").write_text(
        "#define MIOPEN_VERSION_MAJOR 3\n#define MIOPEN_VERSION_MINOR 3\n#define MIOPEN_VERSION_PATCH 1\n"
        "#define MIOPEN_VERSION_TWEAK\n"
    )
    ok = tuna_env.run(
        "miopen", "--init_session", "-l", "x", "-a", "gfx90a", "-n", "104", extra_env={"ROCM_PATH": str(rocm)}
    )
    assert ok.returncode == 0, ok.stderr
    assert tuna_env.query("SELECT rocm_v, miopen_v FROM session") == [("6.3.0", "3.3.1")]


def test_list_solvers_prints_id_and_name_and_exits_zero(tuna_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")
    empty = tuna_env.run("miopen", "--list_solvers")
    assert empty.returncode == 0 and empty.stdout == "" and "Traceback" not in empty.stderr
    tuna_env.query_commit(
        "INSERT INTO solver (id, solver, tunable, config_type, is_dynamic, valid) VALUES "
        "(1, 'ConvAsm3x3U', 1, 'convolution', 0, 1), (26, 'GemmFwd1x1_0_1', 0, 'convolution', 0, 1), "
        "(7, 'Gone', 0, 'convolution', 0, 0), (114, 'ConvHipImplicitGemmV4R1Fwd', 1, 'convolution', 0, 1)"
    )
    proc = tuna_env.run("miopen", "--list_solvers")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stdout == "   1 - ConvAsm3x3U\n  26 - GemmFwd1x1_0_1\n 114 - ConvHipImplicitGemmV4R1Fwd\n"


# -- import_configs ----------------------------------------------------------------------------


def expected_outcome(text: str, config_type: str) -> tuple[str, list[Any]] | tuple[str, str]:
    """What the import must do with one line: ("ok", rows) or ("refused", message)."""
    try:
        problems = parse_line(text)
        wanted = ConvProblem if config_type == "convolution" else BnProblem
        if not all(isinstance(p, wanted) for p in problems):
            other = "batch_norm" if config_type == "convolution" else "convolution"
            what = "batch-norm" if other == "batch_norm" else "convolution"
            return "refused", f"a {what} line: import it with -C {other}"
        return "ok", [rows_of(p) for p in problems]
    except DriverError as exc:
        return "refused", str(exc)


def warnings_of(stderr: str) -> dict[str, str]:
    found = {}
    for line in stderr.splitlines():
        match = WARNING.search(line)
        if match:
            found[match["where"]] = match["message"]
    return found


def counts_of(stdout: str) -> dict[str, int]:
    return {key: int(value) for key, value in (line.rsplit(": ", 1) for line in stdout.splitlines())}


def table_counts(env: TunaEnv) -> dict[str, int]:
    names = ("tensor", "conv_config", "bn_config", "conv_config_tags", "bn_config_tags", "conv_benchmark")
    return {name: env.query(f"SELECT COUNT(*) FROM {name}")[0][0] for name in names}


def stored_keys(env: TunaEnv, config_type: str) -> set[tuple[Any, ...]]:
    if config_type == "convolution":
        return {row[0] for row in env.query("SELECT md5 FROM conv_config")}
    return {tuple(row) for row in env.query(f"SELECT {', '.join(tables.BN_KEY)} FROM bn_config")}


def test_every_shared_line_is_imported_or_refused_with_its_reason_and_twice_changes_nothing(
    services_env: TunaEnv,
) -> None:
    # On MariaDB only, where tuna runs in production: the file-by-file run takes minutes
    # per backend, and the import code is the same SQLAlchemy Core on both.
    tuna_env = services_env
    files = shared_files()
    tuna_env.ok("miopen", "--add_tables")
    for path in files:
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
        lines = [(n, t) for n, t in lines if t and not t.startswith("#")]
        for config_type in ("convolution", "batch_norm"):
            tag = f"{path.stem}-{config_type}"
            proc = tuna_env.run("miopen", "import_configs", "-C", config_type, "-f", str(path), "-t", tag)
            assert proc.returncode == 0, proc.stderr
            warned = warnings_of(proc.stderr)
            first_seen: set[str] = set()
            refused: dict[str, str] = {}
            keys: set[Any] = set()
            for number, text in lines:
                if text in first_seen:
                    continue
                first_seen.add(text)
                outcome, detail = expected_outcome(text, config_type)
                where = f"{path}:{number}"
                if outcome == "refused":
                    refused[where] = str(detail)
                else:
                    for r in detail:
                        keys.add(r.config["md5"] if config_type == "convolution" else _bn_key(tuna_env, r))
            assert warned == refused, path
            assert keys <= stored_keys(tuna_env, config_type)
            counts = counts_of(proc.stdout)
            assert counts["Refused lines"] == len(refused)
            assert counts["Duplicate lines"] == len(lines) - len(first_seen)
            assert counts["Tagged configs"] + counts["Already tagged"] == len(keys)
            assert counts["New configs added"] + counts["Known configs"] == len(keys)

            if not keys:
                continue  # nothing was stored: a second import has nothing to leave alone
            before = table_counts(tuna_env)
            again = tuna_env.run("miopen", "import_configs", "-C", config_type, "-f", str(path), "-t", tag)
            assert again.returncode == 0, again.stderr
            assert table_counts(tuna_env) == before
            again_counts = counts_of(again.stdout)
            assert again_counts["New configs added"] == 0 and again_counts["Tagged configs"] == 0
            assert again_counts["Known configs"] == len(keys)
    assert_driver_strings_round_trip(tuna_env)


def _bn_key(env: TunaEnv, r: Any) -> tuple[Any, ...]:
    tensor = dict(zip(("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type"), r.input_tensor))
    where = " AND ".join(f"{k} = :{k}" for k in tensor)
    (tensor_id,) = env.query(f"SELECT id FROM tensor WHERE {where}", **tensor)[0]
    return tuple(tensor_id if k == "input_tensor" else r.config[k] for k in tables.BN_KEY)


def assert_driver_strings_round_trip(env: TunaEnv) -> None:
    """Each stored config's canonical string, rebuilt from its rows, parses back to its rows."""
    engine = env.engine()
    try:
        with engine.connect() as conn:
            tensors = {row["id"]: row for row in conn.execute(sa.select(tables.tensor)).mappings()}
            convs = list(conn.execute(sa.select(tables.conv_config)).mappings())
            bns = list(conn.execute(sa.select(tables.bn_config)).mappings())
    finally:
        engine.dispose()
    assert convs and bns
    for config in convs:
        problem = conv_from_rows(config, tensors[config["input_tensor"]], tensors[config["weight_tensor"]])
        (again,) = parse_line(problem_driver(problem))
        assert isinstance(again, ConvProblem)
        rows = rows_of(again)
        assert rows.driver == config["driver"]
        assert rows.config["md5"] == config["md5"]
        assert rows.input_tensor == _tensor_key(tensors[config["input_tensor"]])
        assert rows.weight_tensor == _tensor_key(tensors[config["weight_tensor"]])
        assert all(rows.config[k] == config[k] for k in rows.config)
    for config in bns:
        problem = bn_from_rows(config, tensors[config["input_tensor"]])
        (again,) = parse_line(problem_driver(problem))
        rows = rows_of(again)
        assert rows.driver == config["driver"]
        assert rows.input_tensor == _tensor_key(tensors[config["input_tensor"]])
        assert all(rows.config[k] == config[k] for k in rows.config)


def problem_driver(problem: Any) -> str:
    from tuna.miopen.driver import driver_string

    return driver_string(problem)


def _tensor_key(row: Any) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type"))


LINE = "./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -p 0 -q 0 -u 2 -v 2 -l 1 -j 1 -F 2 -t 1"
BN_LINE = "./bin/MIOpenDriver bnorm -n 32 -c 64 -H 56 -W 56 -m 1 --forw 1 -b 0 -s 1 -r 1 --layout NCHW"
ODD = 'it\'s "odd"; k=v: 50%'


def test_frameworks_models_tags_and_benchmarks_keep_odd_names(tuna_env: TunaEnv, tmp_path: Path) -> None:
    tuna_env.ok("miopen", "--add_tables")
    assert tuna_env.ok("miopen", "import_configs", "--add_framework", ODD, "--fw_version", "2") == (
        f"Added framework {ODD!r} version 2: id 1\n"
    )
    assert tuna_env.ok("miopen", "import_configs", "--add_framework", ODD, "--fw_version", "2") == (
        f"Framework {ODD!r} version 2 already exists: id 1\n"
    )
    tuna_env.ok("miopen", "import_configs", "--add_model", ODD, "--md_version", "1")
    tuna_env.ok("miopen", "import_configs", "--add_model", "Mask-r-cnn", "--md_version", "3")
    assert tuna_env.ok("miopen", "import_configs", "--print_models") == (
        f"model {ODD} version 1\nmodel Mask-r-cnn version 3\n"
    )
    lines = tmp_path / "net.txt"
    lines.write_text(f"{LINE}\n{LINE}\n\n# a comment\n")
    out = tuna_env.ok(
        "miopen", "import_configs", "-f", str(lines), "-t", ODD, "--mark_recurrent", "-b", "16,32",
        "-c", "convfp16", "--add_benchmark", "-F", ODD, "--fw_version", "2", "-m", ODD, "--md_version", "1",
    )  # fmt: skip
    assert counts_of(out) == {
        "New configs added": 2,
        "Known configs": 0,
        "Tagged configs": 2,
        "Already tagged": 0,
        "Benchmarks added": 2,
        "Benchmarks known": 0,
        "Duplicate lines": 1,
        "Refused lines": 0,
    }
    assert tuna_env.query("SELECT DISTINCT tag, recurrent FROM conv_config_tags") == [(ODD, 1)]
    configs = tuna_env.query(
        "SELECT c.batchsize, t.data_type, c.direction FROM conv_config c JOIN tensor t ON t.id = c.input_tensor "
        "ORDER BY c.batchsize"
    )
    assert configs == [(16, "FP16", "B"), (32, "FP16", "B")]
    bench = tuna_env.query("SELECT batchsize, gpu_number, driver_cmd FROM conv_benchmark ORDER BY batchsize")
    assert [(b, g) for b, g, _ in bench] == [(16, 1), (32, 1)]
    assert all(d.startswith("./bin/MIOpenDriver convfp16 --batchsize ") for _, _, d in bench)

    # -T tags known configs only; an unknown one is refused by line.
    other = tmp_path / "other.txt"
    other.write_text(f"{LINE.replace('-n 128', '-n 16')} -c 7\n{LINE.replace('-k 2048', '-k 7')}\n")
    proc = tuna_env.run("miopen", "import_configs", "-f", str(other), "-t", "second", "-T")
    assert proc.returncode == 0, proc.stderr
    assert "Refused (conflicting_flag): 1" in proc.stdout and "Refused (unknown_config): 1" in proc.stdout
    assert warnings_of(proc.stderr)[f"{other}:2"] == "its config is not in conv_config; import it without -T"

    # MariaDB's unique keys ignore letter case: a tag differing only in case is refused there.
    upper = tuna_env.run(
        "miopen", "import_configs", "-f", str(lines), "-t", ODD.upper(), "-b", "16,32", "-c", "convfp16"
    )
    if tuna_env.kind == "services":
        assert "differ only in letter case" in one_line_error(upper, EXIT_BAD_INPUT)
    else:
        assert upper.returncode == 0 and counts_of(upper.stdout)["Tagged configs"] == 2, upper.stderr

    bn = tuna_env.run("miopen", "import_configs", "-C", "batch_norm", "-d", BN_LINE, "-t", ODD)
    assert bn.returncode == 0 and counts_of(bn.stdout)["New configs added"] == 1, bn.stderr
    assert tuna_env.query("SELECT tag FROM bn_config_tags") == [(ODD,)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import_configs"], "import_configs needs -f FILE or -d LINE"),
        (["import_configs", "--add_model", "Resnet50"], "--add_model needs --md_version V"),
        (["import_configs", "--add_framework", "Pytorch"], "--add_framework needs --fw_version V"),
        (["import_configs", "-d", LINE, "--add_benchmark"], "--add_benchmark needs -F and -m"),
        (["import_configs", "-d", LINE, "-m", "Resnet50"], "-m/--model needs --md_version V"),
        (["import_configs", "-d", LINE, "-F", "Pytorch"], "-F/--framework needs --fw_version V"),
        (
            ["import_configs", "-d", LINE, "-m", "Resnet50", "--md_version", "1"],
            "no model 'Resnet50' version 1; add it",
        ),
        (["import_configs", "-d", LINE, "-T"], "-T/--tag_only needs the tag: -t TAG"),
        (["import_configs", "-d", LINE, "-b", "32,x"], "-b/--batches '32,x' is not a list of positive batch sizes"),
        (["import_configs", "-d", LINE, "-c", "bnorm"], "-c bnorm is not a convolution command"),
        (["import_configs", "-d", LINE, "-t", " x"], "starts or ends with spaces"),
        (["import_configs", "-d", LINE, "-t", "a\tb"], "holds a control character"),
        (["import_configs", "-d", LINE, "-t", "x" * 129], "-t/--tag is 129 characters; at most 128 fit"),
        (["import_configs", "-d", "./bin/MIOpenDriver conv -n 1 --bogus 2"], "-d: Unknown parameter: '--bogus'"),
        (["import_configs", "-d", BN_LINE], "-d: a batch-norm line: import it with -C batch_norm"),
        (["import_configs", "-f", "/nonexistent/x.txt"], "cannot read /nonexistent/x.txt"),
        (["import_configs", "-f", "x", "-d", "y"], "argument -d/--driver: not allowed with argument -f/--file_name"),
        (["import_configs", "--add_model", "m", "--print_models"], "not allowed with argument --add_model"),
        (["--init_session"], "--init_session needs a label: -l LABEL"),
        (["--init_session", "-l", "x" * 61], "--label is 61 characters; at most 60 fit"),
        (["--init_session", "--list_solvers"], "argument --list_solvers: not allowed with argument --init_session"),
        (["--add_tables", "--init_session", "-l", "x"], "not allowed with argument --add_tables"),
        (["--list_solvers", "-a", "sm_90"], "'sm_90' is not a MIOpen arch name"),
        (["--list_solvers", "-n", "0"], "'0' is not a positive number of compute units"),
        (["--list_solvers", "-B", "MIOPEN_DEBUG_CONV_FFT,FOO"], "Incorrect blacklist value: 'FOO'"),
        (["--list_solvers", "--find_mode", "2"], "argument --find_mode: invalid choice: 2"),
    ],
)
def test_every_refusal_is_one_line_and_changes_nothing(tuna_env: TunaEnv, args: list[str], message: str) -> None:
    tuna_env.ok("miopen", "--add_tables")
    before = snapshot(tuna_env)
    line = one_line_error(tuna_env.run("miopen", *args), EXIT_BAD_INPUT)
    assert message in line, line
    assert snapshot(tuna_env) == before
