"""Applying finished jobs' outcomes: job rows, attempt records and the library's own rows.

Used by the head node and by ``--execute`` alike. Two rules keep one bad outcome from
stopping a session:

* A result is sized to what the database accepts before it is written: the column's
  type (MEDIUMTEXT, 16 MiB) and, on MySQL, the server's ``max_allowed_packet`` (a result
  travels as a hex literal, twice its size). A larger one keeps its head and tail around
  a visible ``[... N bytes cut ...]``.
* A batch that fails to apply (a library hook that raises, a value the server refuses)
  is split in halves and each half applied on its own, down to the one outcome that
  fails; that job is errored with the reason, and every other outcome is applied.

A database that is away or busy is not the batch's fault: that error goes up to the
caller's retry loop, and the batch is applied whole when the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tuna.db.engine import Database, error_detail
from tuna.db.tables import job_attempt
from tuna.errors import DatabaseBusy, ServiceUnavailable
from tuna.jobs import Scope, apply_outcomes_without_commit
from tuna.library import Library, Step

log = logging.getLogger(__name__)

#: MEDIUMTEXT's limit, the type of ``result``.
RESULT_LIMIT_BYTES = 16 * 1024 * 1024 - 1
#: TEXT's limit, the type of ``job_attempt.reason``.
REASON_LIMIT_BYTES = 65535
#: Room in a packet for the statement around one result and the other columns.
PACKET_MARGIN_BYTES = 64 * 1024
#: Room left in a sized text for the note that says how much was cut.
NOTE_ROOM_BYTES = 64
#: Characters of an error kept in a job's reason.
ERROR_TEXT = 1000


@dataclass(frozen=True)
class WriteLimits:
    result_bytes: int
    reason_bytes: int
    statement_bytes: int  # 0: no limit


_limits: dict[str, WriteLimits] = {}


def write_limits(db: Database) -> WriteLimits:
    """What one result, one reason and one statement may hold on this database (read once)."""
    key = db.url.render_as_string(hide_password=True)
    if key not in _limits:
        if db.dialect == "mysql":
            with db.begin() as conn:
                packet = int(conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one())
            statement = packet - PACKET_MARGIN_BYTES
            _limits[key] = WriteLimits(
                result_bytes=min(RESULT_LIMIT_BYTES, statement // 2 - PACKET_MARGIN_BYTES),
                reason_bytes=min(REASON_LIMIT_BYTES, statement // 2 - PACKET_MARGIN_BYTES),
                statement_bytes=statement,
            )
        else:
            _limits[key] = WriteLimits(RESULT_LIMIT_BYTES, REASON_LIMIT_BYTES, 0)
    return _limits[key]


def sized(text: str, limit: int) -> str:
    """``text`` if its UTF-8 form fits in ``limit`` bytes, else its head and tail with a note."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    keep = max(0, limit - NOTE_ROOM_BYTES)
    head = data[: keep // 2].decode("utf-8", errors="ignore")
    tail = data[len(data) - (keep - keep // 2) :].decode("utf-8", errors="ignore")
    cut = len(data) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return f"{head}\n[... {cut} bytes cut ...]\n{tail}"


def sized_outcome(outcome: Mapping[str, Any], limits: WriteLimits) -> Mapping[str, Any]:
    changes: dict[str, Any] = {}
    result, reason = outcome.get("result"), outcome.get("reason")
    if isinstance(result, str):
        changes["result"] = sized(result, limits.result_bytes)
    if isinstance(reason, str):
        # A failure's reason goes to the job's result too, and to the attempt record.
        changes["reason"] = sized(reason, min(limits.reason_bytes, limits.result_bytes))
    return {**outcome, **changes}


def apply_outcomes(
    db: Database,
    scope: Scope,
    step: Step,
    library: Library,
    outcomes: Sequence[Mapping[str, Any]],
    max_retries: int,
) -> list[Mapping[str, Any]]:
    """Apply ``outcomes`` (see :func:`tuna.jobs.apply_outcomes_without_commit`) and the
    library's hook for all those applied; returns the outcomes applied, an outcome that
    could not be stored (the hook refused it, or storing it raised) replaced by the
    failure that errored its job."""
    if not outcomes:
        return []
    limits = write_limits(db)
    batch = [sized_outcome(o, limits) for o in outcomes]
    return _apply(db, scope, step, library, batch, max_retries, limits)


def _apply(
    db: Database,
    scope: Scope,
    step: Step,
    library: Library,
    batch: Sequence[Mapping[str, Any]],
    max_retries: int,
    limits: WriteLimits,
) -> list[Mapping[str, Any]]:
    try:
        with db.begin() as conn:
            applied = apply_outcomes_without_commit(
                conn, scope, step, batch, max_retries=max_retries, max_statement_bytes=limits.statement_bytes
            )
            refused = library.store_results_without_commit(conn, step, applied) or {}
            if refused:
                applied = _refuse_without_commit(conn, scope, step, applied, refused, limits)
        return applied
    except DatabaseBusy:
        raise
    except ServiceUnavailable:
        # A server that drops the connection on one statement (a packet too large, a
        # crash on a value) answers the next one: then the batch, not the server, is at fault.
        if not _reachable(db):
            raise
        problem = "the database dropped the connection while storing it"
    except Exception as exc:
        problem = _describe(exc)
        log.debug("storing %d outcomes failed", len(batch), exc_info=True)
    if len(batch) > 1:
        half = len(batch) // 2
        return [
            *_apply(db, scope, step, library, batch[:half], max_retries, limits),
            *_apply(db, scope, step, library, batch[half:], max_retries, limits),
        ]
    return _error_job(db, scope, step, batch[0], problem, max_retries, limits)


def _refuse_without_commit(
    conn: sa.engine.Connection,
    scope: Scope,
    step: Step,
    applied: Sequence[Mapping[str, Any]],
    refused: Mapping[int, str],
    limits: WriteLimits,
) -> list[Mapping[str, Any]]:
    """Fail, for good, the applied jobs whose result the library could not store, with its
    reason; their attempt records say so too. Returns ``applied`` with those outcomes
    replaced by the failures."""
    table, a = scope.table, job_attempt.c
    out: list[Mapping[str, Any]] = []
    for o in applied:
        job_id = int(o["job_id"])
        if job_id not in refused:
            out.append(o)
            continue
        reason = sized(f"its result could not be stored: {refused[job_id]}", limits.reason_bytes)
        conn.execute(
            sa.update(table)
            .where(table.c.id == job_id, table.c.attempt == int(o["attempt"]))
            .values(state=step.failed, result=reason, task_id=None)
        )
        conn.execute(
            sa.update(job_attempt)
            .where(a.job_table == table.name, a.job_id == job_id, a.attempt == int(o["attempt"]))
            .values(outcome="failed", reason=reason)
        )
        log.warning("session %s: job %s errored: %s", scope.session_id, job_id, reason)
        out.append({**o, "ok": False, "retryable": False, "reason": reason, "state": step.failed})
    return out


def _error_job(
    db: Database,
    scope: Scope,
    step: Step,
    outcome: Mapping[str, Any],
    problem: str,
    max_retries: int,
    limits: WriteLimits,
) -> list[Mapping[str, Any]]:
    """Error the job of an outcome that could not be stored, keeping only what cannot be
    at fault; the library hook is not called for it."""
    reason = sized(f"its outcome could not be stored: {problem}", limits.reason_bytes)
    hostname = outcome.get("hostname")
    failure = {
        "job_id": outcome["job_id"],
        "attempt": outcome["attempt"],
        "ok": False,
        "result": "",
        "reason": reason,
        "retryable": False,
        "outcome": "failed",
        "hostname": hostname if isinstance(hostname, str) and len(hostname) <= 255 else None,
        **{k: outcome[k] for k in ("machine_id", "gpu_id", "started", "ended", "seconds") if k in outcome},
    }
    log.warning("session %s: job %s errored: %s", scope.session_id, outcome["job_id"], reason)
    with db.begin() as conn:
        return apply_outcomes_without_commit(
            conn, scope, step, [failure], max_retries=max_retries, max_statement_bytes=limits.statement_bytes
        )


def _reachable(db: Database) -> bool:
    try:
        with db.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
    except (ServiceUnavailable, DatabaseBusy):
        return False
    return True


def _describe(exc: BaseException) -> str:
    text = error_detail(exc) if isinstance(exc, sa.exc.DBAPIError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT else text[:ERROR_TEXT] + " ..."
