"""SQL on a library's job table: claim, assign, apply outcomes, release, count.

Every function here runs inside the caller's transaction (hence ``_without_commit``) and
works on any table built with :func:`tuna.db.tables.job_columns`. Values are always bound
parameters. Work is found through the (session, state) index and never by reading
``result``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from tuna.db.tables import job_attempt
from tuna.library import Library, SessionInfo, Step

#: Rows per ``IN (...)`` list, well under every driver's parameter limit.
IN_CHUNK = 500


@dataclass(frozen=True)
class Scope:
    """Which jobs a head node may touch: one session, optionally one label."""

    table: sa.Table
    session_id: int
    label: str | None = None

    def where(self, *conditions: Any) -> list[Any]:
        c = self.table.c
        clauses = [c.session == self.session_id, c.valid.is_(True), *conditions]
        if self.label is not None:
            # load_job --count names its jobs LABEL#1 ... LABEL#N
            clauses.append(sa.or_(c.reason == self.label, c.reason.startswith(self.label + "#", autoescape=True)))
        return clauses


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def payload_columns(table: sa.Table) -> list[sa.Column]:
    """Every column but ``result``: finding and sending work never reads results."""
    return [column for column in table.c if column.name != "result"]


def claim_jobs_without_commit(
    conn: Connection,
    scope: Scope,
    step: Step,
    limit: int,
    *,
    owner: str | None = None,
    where: Sequence[Any] = (),
    order_by: Sequence[Any] = (),
) -> list[int]:
    """Atomically move up to ``limit`` jobs from ``step.claim_states`` to ``step.running``.

    ``where`` and ``order_by`` are the library's claim filter and order
    (:meth:`tuna.library.Library.claim_filter`, ``claim_order``; default: by id). The
    state each job was claimed from goes into ``claimed_from``, where a release or retry
    returns it. ``owner`` goes into ``task_id``: ``--execute`` names itself there, so that
    a later claimer can tell its jobs from a head node's (which assigns task ids afterwards).

    MySQL/MariaDB lock the candidate rows with ``FOR UPDATE SKIP LOCKED``, so concurrent
    claimers take disjoint sets without waiting. SQLite serialises writers, and a single
    ``UPDATE ... RETURNING`` makes the pick and the move one statement.
    """
    c = scope.table.c
    states = step.claim_states
    in_states = c.state == states[0] if len(states) == 1 else c.state.in_(states)
    order = list(order_by) or [c.id]
    pick = sa.select(c.id).where(*scope.where(in_states, *where)).order_by(*order).limit(limit)
    move = {"state": step.running, "attempt": c.attempt + 1, "task_id": owner, "claimed_from": c.state}
    if conn.dialect.name == "sqlite":
        stmt = sa.update(scope.table).where(c.id.in_(pick.scalar_subquery()), in_states).values(move).returning(c.id)
        return sorted(conn.execute(stmt).scalars())
    ids = list(conn.execute(pick.with_for_update(skip_locked=True)).scalars())
    for part in chunks(ids):
        # MySQL evaluates SET left to right: claimed_from must read state before it changes.
        conn.execute(
            sa.update(scope.table)
            .where(c.id.in_(part))
            .ordered_values(
                (c.claimed_from, c.state), (c.state, step.running), (c.attempt, c.attempt + 1), (c.task_id, owner)
            )
        )
    return ids


def task_jobs(
    conn: Connection,
    library: Library,
    step: Step,
    session: SessionInfo,
    rows: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """What a task carries for each job: its id, the attempt it runs, and its payload
    (built by the library inside the caller's transaction, which holds the claim)."""
    if not rows:
        return []
    payloads = library.job_payloads(conn, step, session, rows, options)
    if len(payloads) != len(rows):
        raise TypeError(f"{library.name}.job_payloads returned {len(payloads)} payloads for {len(rows)} jobs")
    return [{"id": r["id"], "attempt": r["attempt"], "payload": p} for r, p in zip(rows, payloads, strict=True)]


def assign_task_without_commit(conn: Connection, table: sa.Table, job_ids: Sequence[int], task_id: str) -> None:
    c = table.c
    conn.execute(sa.update(table).where(c.id.in_(job_ids)).values(task_id=task_id))


def load_jobs(
    conn: Connection, table: sa.Table, job_ids: Sequence[int], columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of ``job_ids``: the named columns plus id and attempt, or all but ``result``."""
    wanted = (
        payload_columns(table)
        if columns is None
        else [table.c[name] for name in dict.fromkeys(("id", "attempt", *columns))]
    )
    rows: list[dict[str, Any]] = []
    for part in chunks(job_ids):
        stmt = sa.select(*wanted).where(table.c.id.in_(part)).order_by(table.c.id)
        rows.extend(dict(row._mapping) for row in conn.execute(stmt))
    return rows


def running_attempts(
    conn: Connection, table: sa.Table, step: Step, job_ids: Sequence[int]
) -> dict[int, tuple[int, int]]:
    """job id → (attempt, retries), for those of ``job_ids`` still ``running``; on MySQL
    the rows stay locked until the transaction ends."""
    return {job_id: (a, r) for job_id, (a, r, _) in running_claims(conn, table, step, job_ids).items()}


def running_claims(
    conn: Connection, table: sa.Table, step: Step, job_ids: Sequence[int]
) -> dict[int, tuple[int, int, str]]:
    """job id → (attempt, retries, state claimed from), for those of ``job_ids`` still
    ``running``; on MySQL the rows stay locked until the transaction ends."""
    c = table.c
    found: dict[int, tuple[int, int, str]] = {}
    for part in chunks(job_ids):
        stmt = sa.select(c.id, c.attempt, c.retries, c.claimed_from).where(c.id.in_(part), c.state == step.running)
        if conn.dialect.name != "sqlite":
            stmt = stmt.with_for_update()
        found.update(
            (int(row.id), (int(row.attempt), int(row.retries), back_state(step, row.claimed_from)))
            for row in conn.execute(stmt)
        )
    return found


def back_state(step: Step, claimed_from: str | None) -> str:
    """Where a job claimed from ``claimed_from`` returns: that state, if the step claims
    from it (a row claimed before the column existed has none: ``step.claim_from``)."""
    return claimed_from if claimed_from in step.claim_states else step.claim_from


def count_redelivery_without_commit(
    conn: Connection, table: sa.Table, step: Step, attempts: Mapping[int, int]
) -> dict[int, int]:
    """A message came back after its worker was lost: count one more try on each job that
    is still on that attempt; returns job id → retries for those jobs only."""
    c = table.c
    current = {
        job_id: retries
        for job_id, (attempt, retries) in running_attempts(conn, table, step, list(attempts)).items()
        if attempts[job_id] == attempt
    }
    if current:
        conn.execute(sa.update(table).where(c.id.in_(list(current))).values(retries=c.retries + 1))
    return {job_id: retries + 1 for job_id, retries in current.items()}


def running_jobs(conn: Connection, scope: Scope, step: Step) -> list[tuple[int, int, str | None]]:
    """(id, attempt, task id) of the scope's ``running`` jobs."""
    c = scope.table.c
    stmt = sa.select(c.id, c.attempt, c.task_id).where(*scope.where(c.state == step.running))
    return [(int(r.id), int(r.attempt), r.task_id) for r in conn.execute(stmt)]


def _parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        return None


def apply_outcomes_without_commit(
    conn: Connection,
    scope: Scope,
    step: Step,
    outcomes: Sequence[Mapping[str, Any]],
    *,
    max_retries: int,
    max_statement_bytes: int = 0,
) -> list[Mapping[str, Any]]:
    """Write each outcome to its job, if that job is still on the attempt that produced it.

    Delivery is at least once, so an outcome for an older attempt, or for a job that is
    no longer running, is ignored: applying the same outcome twice changes nothing.
    A failure marked ``retryable`` sends the job back to the state it was claimed from
    until it has failed ``max_retries`` times (the step's own cap, when it has one).
    Returns the outcomes that were applied, each with the ``state`` it moved its job to.
    """
    if not outcomes:
        return []
    current = running_claims(conn, scope.table, step, [int(o["job_id"]) for o in outcomes])
    applied: list[Mapping[str, Any]] = []
    rows = []
    for o in outcomes:
        job_id = int(o["job_id"])
        attempt, retries, back = current.get(job_id, (None, 0, step.claim_from))
        if attempt != int(o["attempt"]):
            continue
        del current[job_id]  # a duplicate of this outcome in the same batch is a no-op
        if o["ok"]:
            state, text = step.done, o.get("result", "")
        else:
            retries += 0 if o.get("retries_counted") else 1
            give_up = not o.get("retryable") or retries >= max_retries
            state, text = (step.failed if give_up else back), o.get("reason", "")
        applied.append({**o, "state": state})  # the progress line tells a retry from a failed job
        rows.append(
            {
                "id": job_id,
                "state": state,
                "result": text,
                "retries": retries,
                "gpu_id": int(o.get("gpu_id", -1)),
                "machine_id": int(o.get("machine_id", -1)),
                "task_id": None,
            }
        )
    write_job_rows_without_commit(conn, scope.table, rows, max_statement_bytes=max_statement_bytes)
    record_attempts_without_commit(conn, [attempt_row(scope, step, o) for o in applied])
    return applied


def write_job_rows_without_commit(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, max_statement_bytes: int = 0
) -> None:
    """Set state, result, retries, GPU and machine of rows the caller has locked.

    MySQL gets one ``UPDATE ... SET col = CASE id WHEN ... END ... WHERE id IN (...)``
    per chunk instead of a round trip per job. It only updates: an ``INSERT ... ON
    DUPLICATE KEY UPDATE`` would be checked as an insert first, and fails on a job table
    with a NOT NULL column that has no default. A chunk ends before its statement would
    pass ``max_statement_bytes`` (0: no limit), so that it fits the server's packet.
    SQLite, which has no round trips, gets an executemany ``UPDATE``.
    """
    if not rows:
        return
    if conn.dialect.name == "mysql":
        for part in _byte_chunks(rows, max_statement_bytes):
            _mysql_update_case(conn, table, part)
        return
    c = table.c
    update = (
        sa.update(table)
        .where(c.id == sa.bindparam("b_id"))
        .values({name: sa.bindparam(f"b_{name}") for name in CHANGED})
    )
    conn.execute(update, [{f"b_{k}": row[k] for k in ("id", *CHANGED)} for row in rows])


#: The job columns an outcome sets.
CHANGED = ("state", "result", "retries", "gpu_id", "machine_id", "task_id")
#: Bytes per row of a CASE update besides its result: ids, numbers, SQL around them.
ROW_OVERHEAD_BYTES = 400


def _byte_chunks(rows: Sequence[Mapping[str, Any]], limit: int) -> Iterable[Sequence[Mapping[str, Any]]]:
    """Runs of at most IN_CHUNK rows whose results, sent as hex (twice their size), stay
    under ``limit`` bytes together; a row alone is a chunk whatever its size."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        cost = 2 * len(_as_bytes(row.get("result") or b"")) + ROW_OVERHEAD_BYTES
        if i > start and ((limit and size + cost > limit) or i - start >= IN_CHUNK):
            yield rows[start:i]
            start, size = i, 0
        size += cost
    if start < len(rows):
        yield rows[start:]


def _mysql_update_case(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """One UPDATE for many rows; only names (quoted) go into the text, every value is bound.
    Results go as UTF-8 bytes: PyMySQL sends bytes as a hex literal, far cheaper than
    escaping a multi-line string character by character."""
    quote = conn.dialect.identifier_preparer.quote
    ids = [row["id"] for row in rows]
    whens = " ".join(["WHEN %s THEN %s"] * len(rows))
    sets = ", ".join(f"{quote(name)} = CASE {quote('id')} {whens} END" for name in CHANGED)
    params: list[Any] = []
    for name in CHANGED:
        for row in rows:
            params += [row["id"], _as_bytes(row[name]) if name == "result" else row[name]]
    params += ids
    sql = (
        f"UPDATE {quote(table.name)} SET {sets}, {quote('update_ts')} = NOW() "
        f"WHERE {quote('id')} IN ({', '.join(['%s'] * len(ids))})"
    )
    conn.exec_driver_sql(sql, tuple(params))


def _mysql_insert_many(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    values: Sequence[tuple[Any, ...]],
    *,
    tail: str = "",
) -> None:
    """One INSERT run for many rows as a plain executemany: PyMySQL sends it as multi-row
    statements, and SQLAlchemy does not compile a bind parameter per value. Only names
    (quoted) go into the text; every value is bound."""
    quote = conn.dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}){tail}"
    )
    conn.exec_driver_sql(sql, values)


def _as_bytes(text: Any) -> Any:
    return text.encode("utf-8") if isinstance(text, str) else text


def attempt_row(scope: Scope, step: Step, o: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "job_table": scope.table.name,
        "job_id": int(o["job_id"]),
        "attempt": int(o["attempt"]),
        "session": scope.session_id,
        "step": step.name,
        "outcome": "completed" if o["ok"] else o.get("outcome", "failed"),
        "hostname": o.get("hostname"),
        "machine_id": int(o.get("machine_id", -1)),
        "gpu_id": int(o.get("gpu_id", -1)),
        "started": _parse_ts(o.get("started")),
        "ended": _parse_ts(o.get("ended")),
        "exit_status": o.get("exit_status"),
        "reason": None if o["ok"] else o.get("reason", ""),
    }


def record_attempts_without_commit(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert attempt records; one already recorded for (job, attempt) is kept as it is.

    Only the duplicate key is ignored: ``INSERT IGNORE`` would also turn a value too long
    for its column into a silently cut one, and other errors into warnings.
    """
    if not rows:
        return
    if conn.dialect.name == "mysql":
        columns = tuple(rows[0])
        values = [tuple(row[c] for c in columns) for row in rows]
        quote = conn.dialect.identifier_preparer.quote
        keep = f" ON DUPLICATE KEY UPDATE {quote('id')} = {quote('id')}"
        _mysql_insert_many(conn, job_attempt, columns, values, tail=keep)
    else:
        conn.execute(sqlite.insert(job_attempt).on_conflict_do_nothing(), list(rows))


def release_jobs_without_commit(conn: Connection, scope: Scope, step: Step, attempts: Mapping[int, int]) -> int:
    """Give running jobs back to the state they were claimed from (interrupt, lost task).

    ``attempts`` maps job id → the attempt the caller owns: a job claimed again since, by
    anyone, is not the caller's to give back, whatever its state.
    """
    c = scope.table.c
    released = 0
    by_attempt: dict[int, list[int]] = {}
    for job_id, attempt in attempts.items():
        by_attempt.setdefault(int(attempt), []).append(int(job_id))
    for attempt, job_ids in by_attempt.items():
        for part in chunks(job_ids):
            result = conn.execute(
                sa.update(scope.table)
                .where(c.id.in_(part), c.attempt == attempt, c.state == step.running)
                .values(state=return_state(scope.table, step), task_id=None)
            )
            released += result.rowcount or 0
    return released


def release_owned_without_commit(conn: Connection, scope: Scope, step: Step, owner: str) -> int:
    """Give back the scope's running jobs claimed under ``owner`` (an ended ``--execute``)."""
    c = scope.table.c
    result = conn.execute(
        sa.update(scope.table)
        .where(*scope.where(c.state == step.running, c.task_id == owner))
        .values(state=return_state(scope.table, step), task_id=None)
    )
    return result.rowcount or 0


def return_state(table: sa.Table, step: Step) -> Any:
    """SQL for the state a running job of ``step`` goes back to: its ``claimed_from`` when
    that is one of the step's claim states, else ``step.claim_from``."""
    back = table.c.claimed_from
    return sa.case((back.in_(step.claim_states), back), else_=step.claim_from)


def count_waiting(
    conn: Connection, scope: Scope, step: Step, claim_where: Sequence[Any], wait_where: Sequence[Any]
) -> tuple[int, int]:
    """Jobs of the scope that ``step`` may get later, not now, passing ``wait_where``:
    (those another step is running, those held back in a claim state until another step
    has run: they pass ``wait_where`` but not ``claim_where``)."""
    if not step.waits_on:
        return 0, 0
    later = count_states(conn, scope, wait_where)
    now = count_states(conn, scope, claim_where)
    running = sum(later.get(s, 0) for s in step.waits_on if s not in step.claim_states)
    held = sum(later.get(s, 0) - now.get(s, 0) for s in step.waits_on if s in step.claim_states)
    return running, held


def count_states(conn: Connection, scope: Scope, where: Sequence[Any] = ()) -> dict[str, int]:
    """Jobs of the scope per state; ``where``: further conditions (a claim filter)."""
    c = scope.table.c
    stmt = sa.select(c.state, sa.func.count()).where(*scope.where(*where)).group_by(c.state)
    return {str(state): int(n) for state, n in conn.execute(stmt)}
