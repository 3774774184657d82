"""``update_golden``: promote a session's results (and/or an older golden version) to a
golden version, the set that ``export_db --golden_v`` writes (reference/miopen.md §2.8).

Rule, fixing §11.13. Rows are matched by (config, solver, arch, num_cu, opencl); the base
version's rows come first, the session's are newer and override them, and rows already in
the target version are updated in place (rows of the target that neither source has stay).
Two things are merged separately, each from the newest source that has it:

* the timing (kernel_time, workspace_sz, alg_lib, kernel_group, fdb_key): from a row with a
  positive time, so a perf-only row (kernel_time -1, from a perf-db import) never erases a
  measured time;
* the tuning parameters: from a row with non-empty params, so a find-db row (no params)
  never erases tuned parameters.

A row with neither a positive time nor params carries nothing either export could write and
is not copied. Without ``-o`` an existing target version is refused (one line, exit 2)
instead of MITuna's traceback; a target equal to the base is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import BadInput
from tuna.miopen import tables as t
from tuna.miopen.dbstore import session_row

TIMING = ("kernel_time", "workspace_sz", "alg_lib", "kernel_group", "fdb_key")
MatchKey = tuple[int, int, str, int, bool]


@dataclass
class GoldenStats:
    version: int
    from_base: int = 0
    from_session: int = 0
    added: int = 0
    updated: int = 0

    def line(self) -> str:
        return (
            f"golden version {self.version}: {self.added} rows added, {self.updated} updated "
            f"(read {self.from_base} base rows, {self.from_session} session rows)"
        )


def _merge(into: dict[MatchKey, dict[str, Any]], key: MatchKey, row: dict[str, Any], session: int) -> None:
    timed = row["kernel_time"] is not None and row["kernel_time"] > 0
    tuned = bool(row["params"])
    if not timed and not tuned:
        return
    known = into.get(key)
    if known is None:
        known = into[key] = {
            "kernel_time": -1.0,
            "workspace_sz": -1,
            "alg_lib": None,
            "kernel_group": None,
            "fdb_key": row["fdb_key"],
            "params": "",
        }
    if timed:
        known.update({c: row[c] for c in TIMING})
    if tuned:
        known["params"] = row["params"]
    if known["fdb_key"] is None:
        known["fdb_key"] = row["fdb_key"]
    known["session"] = session


def update_golden(
    settings: Settings,
    golden_v: int,
    *,
    base_golden_v: int | None = None,
    session_id: int | None = None,
    overwrite: bool = False,
) -> GoldenStats:
    if base_golden_v is None and session_id is None:
        raise BadInput("update_golden needs --session_id and/or --base_golden_v to copy from")
    if base_golden_v == golden_v:
        raise BadInput(f"--base_golden_v {base_golden_v} is the target version itself")
    g, fdb = t.conv_golden, t.conv_find_db
    stats = GoldenStats(golden_v)
    database = Database(settings)
    try:
        with database.begin() as conn:
            exists = conn.execute(
                sa.select(g.c.id).where(g.c.golden_miopen_v == golden_v, g.c.valid == sa.true()).limit(1)
            ).first()
            if exists is not None and not overwrite:
                raise BadInput(f"golden version {golden_v} exists; give -o/--overwrite to update it")
            merged: dict[MatchKey, dict[str, Any]] = {}
            columns = [g.c[c] for c in (*TIMING, "params")]
            # The target's own rows are the oldest layer: a source overrides only what it has.
            existing: dict[MatchKey, int] = {}
            query = sa.select(
                g.c.id, g.c.config, g.c.solver, g.c.arch, g.c.num_cu, g.c.opencl, g.c.session, *columns
            ).where(g.c.golden_miopen_v == golden_v)
            for row in conn.execute(query).mappings():
                key = (row["config"], row["solver"], row["arch"], row["num_cu"], bool(row["opencl"]))
                existing[key] = row["id"]
                _merge(merged, key, dict(row), row["session"])
            touched: set[MatchKey] = set()
            if base_golden_v is not None:
                query = sa.select(
                    g.c.config, g.c.solver, g.c.arch, g.c.num_cu, g.c.opencl, g.c.session, *columns
                ).where(g.c.golden_miopen_v == base_golden_v, g.c.valid == sa.true())
                found = conn.execute(query.order_by(g.c.update_ts, g.c.id)).mappings().all()
                if not found:
                    raise BadInput(f"golden version {base_golden_v} has no rows")
                for row in found:
                    key = (row["config"], row["solver"], row["arch"], row["num_cu"], bool(row["opencl"]))
                    _merge(merged, key, dict(row), row["session"])
                    touched.add(key)
                stats.from_base = len(found)
            if session_id is not None:
                session = session_row(conn, session_id)
                query = sa.select(fdb.c.config, fdb.c.solver, fdb.c.opencl, *[fdb.c[c.name] for c in columns]).where(
                    fdb.c.session == session_id, fdb.c.valid == sa.true()
                )
                found = conn.execute(query.order_by(fdb.c.update_ts, fdb.c.id)).mappings().all()
                if not found:
                    raise BadInput(f"session {session_id} has no find-db rows")
                for row in found:
                    key = (row["config"], row["solver"], session["arch"], session["num_cu"], bool(row["opencl"]))
                    _merge(merged, key, dict(row), session_id)
                    touched.add(key)
                stats.from_session = len(found)
            inserts, updates = [], []
            for key, values in merged.items():
                if key not in touched:
                    continue
                if key in existing:
                    updates.append({"b_id": existing[key], **{f"b_{k}": v for k, v in values.items()}})
                else:
                    config, solver, arch, num_cu, opencl = key
                    inserts.append(
                        {
                            **values,
                            "golden_miopen_v": golden_v,
                            "config": config,
                            "solver": solver,
                            "arch": arch,
                            "num_cu": num_cu,
                            "opencl": opencl,
                            "valid": True,
                        }
                    )
            if inserts:
                conn.execute(g.insert(), inserts)
            if updates:
                names = [k[2:] for k in updates[0] if k != "b_id"]
                statement = (
                    g.update()
                    .where(g.c.id == sa.bindparam("b_id"))
                    .values({**{n: sa.bindparam(f"b_{n}") for n in names}, "valid": True, "update_ts": sa.func.now()})
                )
                conn.execute(statement, updates)
            stats.added, stats.updated = len(inserts), len(updates)
    finally:
        database.dispose()
    return stats


def perf_table_name(version: int) -> str:
    """MITuna's name for the comparison table of ``version`` (§2.8): conv_gv0, conv_gv10,
    else the three versions run together (conv_gv345 for version 5)."""
    if version == 0:
        return "conv_gv0"
    if version == 1:
        return "conv_gv10"
    return f"conv_gv{version - 2}{version - 1}{version}"


def create_perf_table(settings: Settings, golden_v: int) -> str:
    """(Re)create the table comparing the fastest time of each (config, arch, num_cu) over
    versions V-2, V-1 and V: k1, k2, k3 and their differences gv4_5 = k2 - k1, gv5_6 = k3 - k2
    (MITuna's column names). Only positive times count."""
    name = perf_table_name(golden_v)  # built from an integer only: safe as an identifier
    g = t.conv_golden

    def fastest(version: int) -> Any:
        return sa.func.min(sa.case((g.c.golden_miopen_v == version, g.c.kernel_time), else_=None))

    inner = (
        sa.select(
            g.c.config,
            g.c.arch,
            g.c.num_cu,
            fastest(golden_v - 2).label("k1"),
            fastest(golden_v - 1).label("k2"),
            fastest(golden_v).label("k3"),
        )
        .where(
            g.c.golden_miopen_v.in_([golden_v - 2, golden_v - 1, golden_v]),
            g.c.valid == sa.true(),
            g.c.kernel_time > 0,
        )
        .group_by(g.c.config, g.c.arch, g.c.num_cu)
        .subquery()
    )
    query = sa.select(
        inner.c.config,
        inner.c.arch,
        inner.c.num_cu,
        inner.c.k1,
        inner.c.k2,
        inner.c.k3,
        (inner.c.k2 - inner.c.k1).label("gv4_5"),
        (inner.c.k3 - inner.c.k2).label("gv5_6"),
    )
    database = Database(settings)
    try:
        with database.begin() as conn:
            select_sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted}"))
            conn.execute(sa.text(f"CREATE TABLE {quoted} AS {select_sql}"))
    finally:
        database.dispose()
    return name
