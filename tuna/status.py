"""``--status``: what the database says about a session, in a few lines; and the reads
that the end of a run shows (why jobs failed)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.celery_app import make_app, queue_name
from tuna.celery_app.control import check_broker, count_consumers
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.db.tables import job_attempt, machine
from tuna.jobs import Scope, count_states
from tuna.library import Library, SessionInfo, Step
from tuna.outage import SERVICE_ERRORS
from tuna.progress import (
    RATE_MIN_JOBS,
    RATE_WINDOW_S,
    TOP_REASONS,
    estimate,
    first_line,
    format_eta,
    format_rate,
    format_reasons,
)
from tuna.watch import no_consumer_line

#: Distinct reason texts read per run's end: failures share a few reasons, not thousands.
REASON_GROUPS = 50
#: Characters of a reason compared when grouping (the text can be a long stderr tail).
REASON_PREFIX = 400


def utc_now(conn: Connection) -> datetime:
    """The database server's time in UTC, as workers record attempts (naive, microseconds)."""
    if conn.dialect.name == "mysql":
        when: datetime = conn.execute(sa.text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
        return when
    raw = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
    return datetime.fromisoformat(str(raw))


def recent_attempts(conn: Connection, library: Library, step: Step, session_id: int, now: datetime) -> sa.Row:
    """(attempts, first started, last ended) of the step's attempts that ended in the rate
    window, or of the last RATE_MIN_JOBS attempts if fewer ended in it (long jobs)."""
    a = job_attempt.c
    mine = [
        a.session == session_id,
        a.job_table == library.table_of(step).name,
        a.step == step.name,
        a.ended.is_not(None),
    ]
    began = sa.func.coalesce(a.started, a.ended)
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.min(began), sa.func.max(a.ended)).where(
            *mine, a.ended >= now - timedelta(seconds=RATE_WINDOW_S)
        )
    ).one()
    if row[0] >= RATE_MIN_JOBS:
        return row
    last = (
        sa.select(began.label("began"), a.ended).where(*mine).order_by(a.ended.desc()).limit(RATE_MIN_JOBS).subquery()
    )
    return conn.execute(sa.select(sa.func.count(), sa.func.min(last.c.began), sa.func.max(last.c.ended))).one()


def failure_reasons(conn: Connection, scope: Scope, step: Step, top: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The most common reasons (first line of ``result``) of the scope's failed jobs, with
    how many jobs failed for each, most common first."""
    c = scope.table.c
    reason = sa.func.substr(sa.func.coalesce(c.result, ""), 1, REASON_PREFIX).label("reason")
    jobs = sa.func.count().label("jobs")
    rows = conn.execute(
        sa.select(reason, jobs)
        .where(*scope.where(c.state == step.failed))
        .group_by(reason)
        .order_by(jobs.desc())
        .limit(REASON_GROUPS)
    ).all()
    merged: Counter[str] = Counter()
    for text, n in rows:
        merged[first_line(text) or "(no reason recorded)"] += int(n)
    return merged.most_common(top)


def print_status(
    library: Library, step: Step, session: SessionInfo, settings: Settings, db: Database, *, label: str | None
) -> int:
    scope = Scope(library.table_of(step), session.id, label)
    with db.begin() as conn:
        counts = count_states(conn, scope)
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        utc = utc_now(conn)
        finished, since, last = recent_attempts(conn, library, step, session.id, utc)
        reasons = failure_reasons(conn, scope, step) if counts.get(step.failed) else []
        workers = conn.execute(
            sa.select(machine.c.hostname, machine.c.worker_processes).where(
                machine.c.heartbeat_ts >= now - timedelta(seconds=settings.worker_dead_after_s)
            )
        ).all()
    total = sum(counts.values())
    print(f"session {session.id} ({library.name}, {session.arch}, {session.num_cu} CUs): {total} jobs")
    for state in library.table_of(step).c.state.type.enums:  # type: ignore[attr-defined]
        print(f"  {state:<12}{counts.get(state, 0):>10}")
    if reasons:
        print(f"most common reasons ({step.failed}): {format_reasons(reasons)}")
    hosts = ", ".join(f"{w.hostname} ({w.worker_processes} processes)" for w in workers) or "none"
    print(f"live workers: {hosts}")
    print(consumer_line(library, step, session, settings))
    left = sum(counts.get(state, 0) for state in (*step.claim_states, step.running))
    print(throughput_line(finished, since, last, utc, left))
    return 0


def throughput_line(finished: int, since: datetime | None, last: datetime | None, now: datetime, left: int) -> str:
    """Attempts finished per wall-clock second from the first one's start to the last one's
    end (so parallel workers count), and the time left counting down from that end."""
    if since is None or last is None:
        guess = estimate(0, 0.0, 0.0, 0.0, left)
    else:
        guess = estimate(finished, 0.0, (last - since).total_seconds(), (now - since).total_seconds(), left)
    rate = format_rate(guess.rate)
    eta = "nothing left to run" if not left else f"ETA {format_eta(guess.eta_s)}"
    return f"throughput: {rate} over the last {finished} finished attempts; {eta}"


def consumer_line(library: Library, step: Step, session: SessionInfo, settings: Settings) -> str:
    """Who consumes the step's queue, as the broker (or the workers) tell."""
    queue = queue_name(step.queue_kind, settings.db_name, session.id)
    app = make_app(settings)
    try:
        check_broker(app, settings.broker_url_safe)
        consumers = count_consumers(app, queue)
    except SERVICE_ERRORS as exc:
        return f"queue {queue}: consumers unknown ({exc})"
    if not consumers:
        return no_consumer_line(queue, library, step, session.id)
    return f"queue {queue}: {consumers} consumer(s)"
