"""Rows the database commands share: configs and tensors found or created by identity,
solvers by name, sessions by their unique key, all in bulk.

Every lookup is one query per batch (``IN`` over at most :data:`CHUNK` values) and every
insert one multi-row statement, so that importing thousands of records is a handful of
round trips on MariaDB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from tuna.errors import BadInput, NotFound
from tuna.miopen import tables as t
from tuna.miopen.driver import conv_driver_string
from tuna.miopen.keys import problem_key
from tuna.miopen.problem import ConvProblem, DriverError, config_md5, conv_from_rows, expected_output

CHUNK = 500
T = TypeVar("T")

_TENSOR_COLUMNS = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def storable(problem: ConvProblem) -> ConvProblem:
    """``problem`` as a config row can hold it.

    MIOpen ships keys whose output size does not follow from the input (reference/miopen.md
    §13.1). The config tables have no output-size column, so such a problem is stored by its
    input side; the key itself is kept verbatim in ``fdb_key`` and exported as it was read.
    Anything else the rows cannot hold (bias, mixed or cast types) is refused with its reason.
    """
    reason = problem.storable_reason()
    if reason is None:
        return problem
    d, h, w = expected_output(problem)
    fixed = dataclasses.replace(problem, out_d=d, out_h=h, out_w=w)
    if fixed.storable_reason() is None:
        return fixed
    raise DriverError("not_storable", f"cannot store this problem as a config: {reason}")


@dataclasses.dataclass(frozen=True)
class ConfigRows:
    config: dict[str, Any]
    input_tensor: dict[str, Any]
    weight_tensor: dict[str, Any]
    md5: str


def config_rows(problem: ConvProblem) -> ConfigRows:
    p = storable(problem)
    config, inp, wei = p.config_row(), p.input_tensor(), p.weight_tensor()
    return ConfigRows(config, inp, wei, config_md5(config, inp, wei))


def _tensor_key(row: Any) -> tuple[Any, ...]:
    return tuple(row[c] for c in _TENSOR_COLUMNS)


def ensure_tensors(conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> dict[tuple[Any, ...], int]:
    """Tensor values -> id, creating the missing tensors."""
    wanted = {_tensor_key(r): r for r in rows}
    found: dict[tuple[Any, ...], int] = {}
    tensor = t.tensor
    cols = [tensor.c[c] for c in _TENSOR_COLUMNS]

    def look(keys: Sequence[tuple[Any, ...]]) -> None:
        # Tensors are few and small; matching on (dim1, layout, data_type) narrows enough.
        for part in chunks(list(keys)):
            firsts = {k[1] for k in part}
            for row in conn.execute(sa.select(tensor.c.id, *cols).where(tensor.c.dim1.in_(firsts))).mappings():
                key = _tensor_key(row)
                if key in wanted:
                    found[key] = row["id"]

    look(list(wanted))
    missing = [wanted[k] for k in wanted if k not in found]
    if missing:
        conn.execute(tensor.insert(), missing)
        look([_tensor_key(r) for r in missing])
    return found


def ensure_configs(conn: sa.Connection, items: Iterable[ConfigRows]) -> dict[str, int]:
    """Config md5 -> id, creating the missing configs (and their tensors)."""
    by_md5 = {item.md5: item for item in items}
    cfg = t.conv_config
    ids: dict[str, int] = {}

    def look(md5s: Sequence[str]) -> None:
        for part in chunks(md5s):
            ids.update(conn.execute(sa.select(cfg.c.md5, cfg.c.id).where(cfg.c.md5.in_(part))).all())

    look(list(by_md5))
    missing = [item for md5, item in by_md5.items() if md5 not in ids]
    if missing:
        tensors = ensure_tensors(conn, [r for m in missing for r in (m.input_tensor, m.weight_tensor)])
        rows = []
        for m in missing:
            try:
                driver = conv_driver_string(conv_from_rows(m.config, m.input_tensor, m.weight_tensor))
            except DriverError:
                # A shipped key whose filter does not fit its input: no driver line gives it.
                driver = ""
            rows.append(
                {
                    **m.config,
                    "input_tensor": tensors[_tensor_key(m.input_tensor)],
                    "weight_tensor": tensors[_tensor_key(m.weight_tensor)],
                    "md5": m.md5,
                    "driver": driver,
                }
            )
        conn.execute(cfg.insert(), rows)
        look([m.md5 for m in missing])
    return ids


def ensure_solvers(conn: sa.Connection, names: Iterable[str], *, tunable: bool | None = None) -> dict[str, int]:
    """Solver name -> id, creating unknown solvers; ``tunable`` True marks them tunable
    (a perf-db holds only tunable solvers)."""
    wanted = sorted(set(names))
    solver = t.solver
    ids: dict[str, int] = {}
    for part in chunks(wanted):
        ids.update(conn.execute(sa.select(solver.c.solver, solver.c.id).where(solver.c.solver.in_(part))).all())
    missing = [n for n in wanted if n not in ids]
    if missing:
        # Unknown tunability stays at the column default; only a perf-db proves a solver tunable.
        conn.execute(solver.insert(), [{"solver": n} for n in missing])
        for part in chunks(missing):
            ids.update(conn.execute(sa.select(solver.c.solver, solver.c.id).where(solver.c.solver.in_(part))).all())
    if tunable:
        for part in chunks(wanted):
            conn.execute(
                solver.update().where(solver.c.solver.in_(part), solver.c.tunable == sa.false()), {"tunable": True}
            )
    return ids


def session_row(conn: sa.Connection, session_id: int) -> Any:
    row = conn.execute(sa.select(t.session).where(t.session.c.id == session_id)).mappings().first()
    if row is None:
        raise NotFound("session", session_id, "list sessions with --list_sessions or create one with --init_session")
    return row


def ensure_session(
    conn: sa.Connection, *, arch: str, num_cu: int, rocm_v: str, miopen_v: str, reason: str, docker: str = "n_a"
) -> int:
    values = {
        "arch": arch,
        "num_cu": num_cu,
        "rocm_v": rocm_v,
        "miopen_v": miopen_v,
        "reason": reason,
        "docker": docker,
        "ticket": "N/A",
    }
    s = t.session
    where = [s.c[k] == v for k, v in values.items()]
    found = conn.execute(sa.select(s.c.id).where(*where)).scalar()
    if found is not None:
        return int(found)
    inserted = conn.execute(s.insert().values(**values)).inserted_primary_key
    assert inserted is not None
    return int(inserted[0])


def keys_of_configs(conn: sa.Connection, config_ids: Iterable[int]) -> dict[int, str]:
    """Config id -> the problem key MIOpen looks it up by, for rows without a stored fdb_key."""
    cfg, inp, wei = t.conv_config, t.tensor.alias("inp"), t.tensor.alias("wei")
    ids = sorted(set(config_ids))
    keys: dict[int, str] = {}
    for part in chunks(ids):
        query = (
            sa.select(
                cfg,
                *[inp.c[c].label(f"i_{c}") for c in _TENSOR_COLUMNS],
                *[wei.c[c].label(f"w_{c}") for c in _TENSOR_COLUMNS],
            )
            .join(inp, inp.c.id == cfg.c.input_tensor)
            .join(wei, wei.c.id == cfg.c.weight_tensor)
            .where(cfg.c.id.in_(part))
        )
        for row in conn.execute(query).mappings():
            i = {c: row[f"i_{c}"] for c in _TENSOR_COLUMNS}
            w = {c: row[f"w_{c}"] for c in _TENSOR_COLUMNS}
            try:
                keys[row["id"]] = problem_key(conv_from_rows(dict(row), i, w))
            except DriverError as error:
                raise BadInput(f"conv_config {row['id']}: {error}") from None
    return keys
