"""``--status``: what the database says about a session, in a few lines."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from tuna.celery_app import make_app, queue_name
from tuna.celery_app.control import check_broker, count_consumers
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.db.tables import job_attempt, machine
from tuna.jobs import Scope, count_states
from tuna.library import Library, SessionInfo, Step
from tuna.outage import SERVICE_ERRORS
from tuna.progress import RATE_WINDOW_S, format_eta
from tuna.watch import no_consumer_line


def print_status(
    library: Library, step: Step, session: SessionInfo, settings: Settings, db: Database, *, label: str | None
) -> int:
    scope = Scope(library.job_table, session.id, label)
    with db.begin() as conn:
        counts = count_states(conn, scope)
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        ended = job_attempt.c.insert_ts
        finished_last_minute, first, last = conn.execute(
            sa.select(sa.func.count(), sa.func.min(ended), sa.func.max(ended)).where(
                job_attempt.c.session == session.id,
                job_attempt.c.job_table == library.job_table.name,
                job_attempt.c.insert_ts >= now - timedelta(seconds=RATE_WINDOW_S),
            )
        ).one()
        workers = conn.execute(
            sa.select(machine.c.hostname, machine.c.worker_processes).where(
                machine.c.heartbeat_ts >= now - timedelta(seconds=settings.worker_dead_after_s)
            )
        ).all()
    total = sum(counts.values())
    print(f"session {session.id} ({library.name}, {session.arch}, {session.num_cu} CUs): {total} jobs")
    for state in library.job_table.c.state.type.enums:  # type: ignore[attr-defined]
        print(f"  {state:<12}{counts.get(state, 0):>10}")
    hosts = ", ".join(f"{w.hostname} ({w.worker_processes} processes)" for w in workers) or "none"
    print(f"live workers: {hosts}")
    print(consumer_line(library, step, session, settings))
    # Over the last minute, or over the part of it in which attempts finished.
    window_s = (last - first).total_seconds() if finished_last_minute > 1 else RATE_WINDOW_S
    rate = finished_last_minute / max(window_s, 1.0)
    left = counts.get(step.claim_from, 0) + counts.get(step.running, 0)
    eta = "nothing left to run" if not left else f"ETA {format_eta(left / rate if rate else None)}"
    print(f"throughput: {rate:.1f} jobs/s over the last minute; {eta}")
    return 0


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
        return no_consumer_line(queue, library.name, session.id)
    return f"queue {queue}: {consumers} consumer(s)"
