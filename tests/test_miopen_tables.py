"""The MIOpen tables are creatable on SQLite and MariaDB, and their keys hold on both.

Each MariaDB run makes its own uniquely named database and drops it afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, require_services

from tuna.db.engine import make_engine
from tuna.db.tables import machine
from tuna.db.tables import metadata as core_metadata
from tuna.miopen import tables as t
from tuna.miopen.driver import driver_string, parse_line
from tuna.miopen.problem import BnProblem, ConvProblem, config_md5

LINE = "./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -u 2 -v 2 -F 2 -t 1"
BN_LINE = "./bin/MIOpenDriver bnormfp16 -n 256 -c 64 -H 56 -W 56 -m 1 --forw 1 -b 0 -s 1 -r 1"


@pytest.fixture(params=["sqlite", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        eng = make_engine(sa.make_url(f"sqlite:///{tmp_path / 'miopen.db'}"))
        yield eng
        eng.dispose()
        return
    require_services()
    name = f"tuna_test_miopen_{uuid.uuid4().hex[:10]}"
    server = sa.create_engine(MYSQL_URL)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    eng = make_engine(sa.make_url(f"{MYSQL_URL}/{name}"))
    try:
        yield eng
    finally:
        eng.dispose()
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


def insert(conn: sa.Connection, table: sa.Table, **values: Any) -> int:
    return int(conn.execute(table.insert().values(**values)).inserted_primary_key[0])


def refused(engine: sa.Engine, table: sa.Table, **values: Any) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(table.insert().values(**values))
    except sa.exc.IntegrityError:
        return True
    return False


def test_tables_are_created_and_keys_refuse_duplicates(engine: sa.Engine) -> None:
    core_metadata.create_all(engine, tables=[machine])
    t.metadata.create_all(engine)
    assert {table.name for table in t.TABLES} <= set(sa.inspect(engine).get_table_names())
    assert "machine" not in t.metadata.tables  # the core's table, not redefined

    (conv,) = parse_line(LINE)
    assert isinstance(conv, ConvProblem)
    (bn,) = parse_line(BN_LINE)
    assert isinstance(bn, BnProblem)
    with engine.begin() as conn:
        session = insert(conn, t.session, arch="gfx90a", num_cu=104, rocm_v="6.2", reason="r", miopen_v="abc")
        solver = insert(conn, t.solver, solver="ConvAsm1x1UV2")
        inp = insert(conn, t.tensor, **conv.input_tensor())
        wei = insert(conn, t.tensor, **conv.weight_tensor())
        md5 = config_md5(conv.config_row(), conv.input_tensor(), conv.weight_tensor())
        config = insert(
            conn,
            t.conv_config,
            **conv.config_row(),
            input_tensor=inp,
            weight_tensor=wei,
            md5=md5,
            driver=driver_string(conv),
        )
        job = insert(conn, t.conv_job, config=config, solver="ConvAsm1x1UV2", session=session)
        insert(conn, t.conv_config_tags, config=config, tag="resnet50")
        fdb = dict(config=config, solver=solver, session=session, opencl=False, params="", workspace_sz=0)
        insert(conn, t.conv_find_db, **fdb, kernel_time=0.0123456789012, fdb_key="k")
        golden = dict(golden_miopen_v=1, arch="gfx90a", num_cu=104, **fdb, kernel_time=1.5)
        insert(conn, t.conv_golden, **golden)
        bn_inp = insert(conn, t.tensor, **bn.input_tensor())
        insert(conn, t.bn_config, **bn.config_row(), input_tensor=bn_inp, driver=driver_string(bn))
        row = conn.execute(sa.select(t.conv_job).where(t.conv_job.c.id == job)).mappings().one()
        time = conn.execute(sa.select(t.conv_find_db.c.kernel_time)).scalar_one()

    # The head node's columns, with MITuna's defaults.
    assert (row["state"], row["fin_step"], row["retries"], row["gpu_id"], row["attempt"], row["valid"]) == (
        "new",
        "not_fin",
        0,
        -1,
        0,
        True,
    )
    assert time == 0.0123456789012  # double precision, not MITuna's FLOAT (§11.23)

    assert refused(engine, t.tensor, **conv.input_tensor())
    assert refused(
        engine, t.conv_config, **conv.config_row(), input_tensor=inp, weight_tensor=wei, md5=md5, driver="other"
    )
    assert refused(engine, t.session, arch="gfx90a", num_cu=104, rocm_v="6.2", reason="r", miopen_v="abc")
    assert refused(engine, t.solver, solver="ConvAsm1x1UV2")
    assert refused(engine, t.conv_job, config=config, solver="ConvAsm1x1UV2", session=session)
    steps = "miopen_find_eval,miopen_find_compile"
    assert not refused(engine, t.conv_job, config=config, solver="ConvAsm1x1UV2", session=session, fin_step=steps)
    # The same set listed in another order is the same job, on SQLite as in MySQL's SET.
    reordered = "miopen_find_compile,miopen_find_eval"
    assert refused(engine, t.conv_job, config=config, solver="ConvAsm1x1UV2", session=session, fin_step=reordered)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(t.conv_job.c.fin_step).order_by(t.conv_job.c.id)).scalars().all()
    assert stored == ["not_fin", "miopen_find_compile,miopen_find_eval"]
    assert refused(engine, t.conv_config_tags, config=config, tag="resnet50")
    assert refused(engine, t.conv_find_db, **fdb, kernel_time=2.0)
    assert refused(engine, t.conv_golden, **golden)
    assert refused(engine, t.bn_config, **bn.config_row(), input_tensor=bn_inp)
    assert not refused(engine, t.bn_config, **{**bn.config_row(), "save": 0}, input_tensor=bn_inp)
    # Foreign keys hold on both databases.
    assert refused(engine, t.conv_config_tags, config=config + 100, tag="x")
    assert refused(engine, t.conv_job, config=config, solver="s", session=session + 100)
