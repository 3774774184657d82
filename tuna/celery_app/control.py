"""Talking to the broker and the workers: reachability, queues, shutdown, live tasks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from amqp.exceptions import AccessRefused
from celery import Celery

from tuna.celery_app.naming import is_session_worker
from tuna.errors import ServiceUnavailable

log = logging.getLogger(__name__)

HOW_TO_START_RABBITMQ = "start it (here: rabbitmq-server -detached) or fix TUNA_CELERY_BROKER_HOST/PORT/URL"
BROKER_CONNECT_TIMEOUT_S = 5.0
CONTROL_REPLY_TIMEOUT_S = 1.0


def check_broker(app: Celery, url_safe: str) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.connect_timeout = BROKER_CONNECT_TIMEOUT_S
            conn.ensure_connection(max_retries=1, interval_start=0.2)
    except AccessRefused:
        raise ServiceUnavailable(
            "broker", url_safe, "check TUNA_CELERY_BROKER_USER and TUNA_CELERY_BROKER_PWD", "login refused"
        ) from None
    except Exception as exc:  # kombu raises the transport's own errors
        raise ServiceUnavailable("broker", url_safe, HOW_TO_START_RABBITMQ, type(exc).__name__) from None


def purge_queue(app: Celery, queue: str) -> int:
    """Drop the messages waiting in ``queue``; messages held by a worker stay."""
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_purge(queue) or 0)
        except conn.channel_errors:  # the queue does not exist yet
            return 0


def queue_length(app: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (not those held by workers); 0 if it does not exist."""
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            return 0


def delete_queue(app: Celery, queue: str) -> None:
    """Remove a finished session's queue, so that none is left behind on the broker."""
    with app.connection_for_write() as conn, contextlib.suppress(conn.channel_errors):
        conn.default_channel.queue_delete(queue)


def live_workers(app: Celery, timeout_s: float = CONTROL_REPLY_TIMEOUT_S) -> list[str]:
    replies = app.control.ping(timeout=timeout_s) or []
    return sorted(name for reply in replies for name in reply)


def session_workers(app: Celery, db_name: str, session_id: int) -> list[str]:
    """Live workers of one session of one database."""
    return [name for name in live_workers(app) if is_session_worker(name, db_name, session_id)]


def shutdown_workers(app: Celery, names: Iterable[str] | None = None) -> list[str]:
    """Warm shutdown: each worker finishes or hands back its running task, then exits.

    ``names`` None means every worker that answers a ping.
    """
    targets = live_workers(app) if names is None else list(names)
    if targets:
        app.control.shutdown(destination=targets)
    return targets


def shutdown_matching(app: Celery, pattern: str) -> None:
    """Warm shutdown of every worker whose node name matches ``pattern`` (a regex)."""
    app.control.shutdown(pattern=pattern, matcher="pcre")


def tasks_held_by_workers(app: Celery, names: list[str]) -> set[str] | None:
    """Ids of tasks that the workers ``names`` are running or have reserved.

    None unless every one of them answered both questions: a worker that is alive but slow
    to answer (a busy host) may hold anything, and treating its silence as "holds nothing"
    would run its jobs twice.
    """
    if not names:
        return set()
    inspect = app.control.inspect(destination=names, timeout=CONTROL_REPLY_TIMEOUT_S)
    held: set[str] = set()
    for reply in (inspect.active(), inspect.reserved()):
        if reply is None or not set(names) <= set(reply):
            return None
        for tasks in reply.values():
            held.update(task["id"] for task in tasks or [])
    return held


def queue_consumers(app: Celery, queue: str) -> int | None:
    """How many consumers the broker counts on ``queue`` (0 if it does not exist), or None
    for a transport that keeps no count (the embedded filesystem one)."""
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "amqp":
            return None
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).consumer_count)
        except conn.channel_errors:
            return 0


def workers_consuming(app: Celery, queue: str, timeout_s: float = CONTROL_REPLY_TIMEOUT_S) -> list[str]:
    """Node names of the workers that answer within ``timeout_s`` and consume ``queue``."""
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def count_consumers(app: Celery, queue: str) -> int:
    """Live consumers of ``queue``: the broker's own count where it keeps one, else the
    workers that say they consume it (which costs a reply timeout)."""
    counted = queue_consumers(app, queue)
    return counted if counted is not None else len(workers_consuming(app, queue))
