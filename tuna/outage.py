"""Riding out a database, broker or result-backend restart: one clear line, then retries."""

from __future__ import annotations

import logging
import random
import time

from kombu.exceptions import OperationalError as KombuOperationalError

from tuna.config import load_settings
from tuna.errors import DatabaseBusy, ServiceUnavailable

log = logging.getLogger(__name__)

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover
    RedisError = OSError  # type: ignore[assignment,misc]

#: Errors that mean a service is away or busy, not that the work is wrong.
SERVICE_ERRORS = (ServiceUnavailable, DatabaseBusy, KombuOperationalError, RedisError, ConnectionError, TimeoutError)
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 15.0
REMIND_EVERY_S = 60.0


class Outage:
    """Backoff with jitter while a service is away; logs when it goes and when it returns.

    A server that is down may come back after any time, and is waited for. A database
    that keeps answering "busy" (deadlocks, lock wait timeouts) for longer than
    ``busy_max_s`` (TUNA_DB_RETRY_MAX_S) will not get better by waiting: the error is
    raised again, for one line and a non-zero exit.
    """

    def __init__(self, session_id: int, busy_max_s: float | None = None) -> None:
        self.session_id = session_id
        self.since: float | None = None
        self.busy_since: float | None = None
        self.busy_max_s = load_settings().db_retry_max_s if busy_max_s is None else busy_max_s
        self.backoff_s = FIRST_BACKOFF_S
        self.last_line = 0.0

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before trying again."""
        now = time.monotonic()
        if isinstance(exc, DatabaseBusy):
            self.busy_since = now if self.busy_since is None else self.busy_since
            if now - self.busy_since >= self.busy_max_s:
                raise DatabaseBusy(
                    exc.url, f"{exc.detail}; still busy after {now - self.busy_since:.0f} s (TUNA_DB_RETRY_MAX_S)"
                ) from None
        else:
            self.busy_since = None
        if self.since is None:
            self.since = now
            self.last_line = now
            log.warning("session %s: %s; retrying until it is back", self.session_id, describe(exc))
        elif now - self.last_line >= REMIND_EVERY_S:
            self.last_line = now
            log.warning("session %s: still waiting (%.0f s): %s", self.session_id, now - self.since, describe(exc))
        wait = self.backoff_s * random.uniform(0.5, 1.0)
        self.backoff_s = min(MAX_BACKOFF_S, self.backoff_s * 2)
        return wait

    def recovered(self) -> None:
        self.busy_since = None
        if self.since is not None:
            log.warning(
                "session %s: services back after %.1f s; carrying on",
                self.session_id,
                time.monotonic() - self.since,
            )
            self.since = None
            self.backoff_s = FIRST_BACKOFF_S


def describe(exc: BaseException) -> str:
    if isinstance(exc, (ServiceUnavailable, DatabaseBusy)):
        return str(exc)
    if isinstance(exc, KombuOperationalError):
        return f"lost the broker ({exc})"
    if isinstance(exc, RedisError):
        return f"lost the result backend ({type(exc).__name__})"
    return f"lost a service ({type(exc).__name__}: {exc})"
