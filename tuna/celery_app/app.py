"""Building the Celery app from tuna's settings (reference/celery.md §3.2)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from tuna.celery_app import fs_transport
from tuna.celery_app.results import AtomicFileBackend
from tuna.config import Settings

RUN_JOBS_TASK = "tuna.run_jobs"
BROKER_HEARTBEAT_S = 30
#: The embedded filesystem transport polls its folder; a second (kombu's default) would
#: cap the embedded default at a few messages a second.
FILESYSTEM_POLL_S = 0.01


def is_filesystem_broker(url: str) -> bool:
    return url.partition("://")[0] in ("filesystem", fs_transport.ALIAS)


def _broker_options(settings: Settings) -> dict[str, Any]:
    if is_filesystem_broker(settings.broker_url):
        folder = settings.tuna_home / "broker"
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "polling_interval": FILESYSTEM_POLL_S,
        }
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        # Without confirms a publish can be dropped silently when the broker is short of
        # resources.
        return {"confirm_publish": True}
    return {}


def make_app(settings: Settings) -> Celery:
    if settings.backend_url.startswith("file://"):
        (settings.tuna_home / "results").mkdir(parents=True, exist_ok=True)
    app = Celery("tuna", broker=settings.broker_url, backend=settings.backend_url, set_as_current=False)
    if settings.backend_url.startswith("file://"):
        app.backend_cls = AtomicFileBackend
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task that is running when its worker dies goes back to the queue ...
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # ... and one GPU worker never hoards messages that another could run.
        worker_prefetch_multiplier=1,
        # After a broker reconnect, a late-ack task would otherwise run twice at once.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_heartbeat=BROKER_HEARTBEAT_S,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_broker_options(settings),
        # Every process of an embedded run (head node, workers, --execute) builds its app
        # here, so all of them publish and consume through the atomic transport.
        # kombu's own filesystem transport lets a consumer read a message before it is written.
        broker_transport=fs_transport.ALIAS if is_filesystem_broker(settings.broker_url) else None,
        result_expires=settings.result_expires_s,
        result_backend_always_retry=True,
        result_backend_max_retries=10,
        task_create_missing_queues=True,
        # A STARTED record names the worker running a task, so that the head node can give
        # back the jobs of a host whose heartbeat stops.
        task_track_started=True,
        worker_hijack_root_logger=False,
        worker_disable_rate_limits=True,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app
