"""Reading and deleting a session's task results in Celery's result backend.

Works on any key-value backend (Redis in production, ``file://`` embedded); Redis gets
one round trip per batch instead of one per key.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend
from celery.backends.filesystem import FilesystemBackend
from kombu.utils.encoding import ensure_bytes

from tuna.celery_app.fs_transport import write_atomically
from tuna.errors import ServiceUnavailable

log = logging.getLogger(__name__)

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: The status :meth:`ResultStore.fetch` gives a record it cannot decode (not a Celery state).
UNDECODABLE = "UNDECODABLE"
HOW_TO_START_REDIS = (
    "start it (here: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no) or fix TUNA_CELERY_BACKEND_HOST/PORT/URL"
)
KEY_CHUNK = 500

try:  # redis is optional for the embedded default
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    RedisError = OSError  # type: ignore[assignment,misc]


class AtomicFileBackend(FilesystemBackend):
    """Celery's ``file://`` result backend, but a reader never sees a record half-written.

    Celery's own truncates the file and then writes it, so the head node could read an empty
    or cut record (a STARTED record being replaced by the result). Here the record is written
    under a hidden name in the same folder and renamed over the old one.
    """

    def __init__(self, url: str | None = None, *args: Any, app: Celery, **kwargs: Any) -> None:
        # Selected as the app's backend class, which Celery instantiates without the URL.
        super().__init__(url or app.conf.result_backend, *args, app=app, **kwargs)

    def set(self, key: bytes, value: Any) -> None:
        write_atomically(os.fsdecode(self._filename(key)), ensure_bytes(value))


class ResultStore:
    """The finished results of tasks, by task id."""

    def __init__(self, app: Celery, url_safe: str) -> None:
        backend = app.backend
        if not isinstance(backend, BaseKeyValueStoreBackend):
            raise TypeError(f"result backend {type(backend).__name__} is not a key-value store")
        self.backend: BaseKeyValueStoreBackend = backend
        self.url_safe = url_safe
        self._redis: Any = getattr(backend, "client", None) if hasattr(backend, "_get_client") else None

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        return ServiceUnavailable("result backend", self.url_safe, HOW_TO_START_REDIS, type(exc).__name__)

    def ping(self) -> None:
        try:
            if self._redis is not None:
                self._redis.ping()
            else:
                self.backend.get(self.backend.get_key_for_task("tuna-ping"))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def fetch(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The decoded record of each task in ``task_ids`` that has one (STARTED or finished).

        A record that does not decode to a mapping gets the status :data:`UNDECODABLE`: a
        file caught half-written, or bytes that are no result at all; the caller decides
        how long to wait before calling it a failure.
        """
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(task_ids), KEY_CHUNK):
            chunk = task_ids[start : start + KEY_CHUNK]
            keys = [self.backend.get_key_for_task(task_id) for task_id in chunk]
            try:
                values = list(self.backend.mget(keys))
            except (RedisError, OSError) as exc:
                raise self._unavailable(exc) from None
            for task_id, raw in zip(chunk, values):
                if not raw:
                    continue
                try:
                    meta = self.backend.decode(raw)
                except Exception:  # the decoder's errors are those of json, pickle, zlib ...
                    meta = None
                if not isinstance(meta, dict):
                    meta = {"status": UNDECODABLE, "result": f"undecodable record ({len(raw)} bytes)"}
                found[task_id] = meta
        return found

    def forget(self, task_ids: Iterable[str]) -> None:
        """Delete results; call only after their rows are committed."""
        keys = [self.backend.get_key_for_task(task_id) for task_id in task_ids]
        try:
            if self._redis is not None:
                for start in range(0, len(keys), KEY_CHUNK):
                    self._redis.delete(*keys[start : start + KEY_CHUNK])
            else:
                for key in keys:
                    with contextlib.suppress(FileNotFoundError):
                        self.backend.delete(key)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def forget_prefix(self, prefix: str) -> int:
        """Delete every result whose task id starts with ``prefix`` (a finished session's,
        late results of superseded attempts included); returns how many were deleted."""
        pattern = self._key(prefix)
        try:
            if self._redis is not None:
                escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in pattern)
                keys = list(self._redis.scan_iter(match=escaped + "*", count=1000))
                for start in range(0, len(keys), KEY_CHUNK):
                    self._redis.delete(*keys[start : start + KEY_CHUNK])
                return len(keys)
            folder = Path(os.fsdecode(getattr(self.backend, "path", b".")))
            deleted = 0
            for path in folder.glob(glob.escape(pattern) + "*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    deleted += 1
            return deleted
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _key(self, task_id: str) -> str:
        key = self.backend.get_key_for_task(task_id)
        return key.decode() if isinstance(key, bytes) else str(key)


def failure_reason(meta: dict[str, Any]) -> str:
    """One line naming what made a whole task fail."""
    result = meta.get("result")
    if isinstance(result, dict):
        exc_type = result.get("exc_type", "error")
        message = result.get("exc_message", "")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return f"{exc_type}: {message}".strip().rstrip(":")
    return str(result or meta.get("status"))
