"""The errors tuna reports to a person, and the exit code each one maps to.

Driver errors (SQLAlchemy, kombu, redis) are translated into these at the boundary where
they happen, so that ``go_fish`` can print one line and exit without a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOBS_FAILED = 1  # the run ended, but some of its jobs ended failed (e.g. errored)
EXIT_ERROR = 70  # sysexits EX_SOFTWARE: any other tuna error; never 1, which tells of jobs
EXIT_BAD_INPUT = 2  # the same code argparse uses for an unknown flag
EXIT_NOT_FOUND = 3
EXIT_SCHEMA = 4
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: try again later
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_INTERRUPTED = 130


class TunaError(Exception):
    """Root of every error tuna reports as one line."""

    exit_code = EXIT_ERROR


class BadInput(TunaError):
    """A flag, file or value given by the user cannot be used as it is."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(TunaError):
    """An environment variable is malformed."""

    exit_code = EXIT_CONFIG

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class NotFound(TunaError):
    """A row the user named does not exist."""

    exit_code = EXIT_NOT_FOUND

    def __init__(self, table: str, key: object, hint: str = "") -> None:
        message = f"no {table} with id {key}"
        super().__init__(f"{message}; {hint}" if hint else message)
        self.table = table
        self.key = key


class SchemaMismatch(TunaError):
    """The database schema is missing or older than this code."""

    exit_code = EXIT_SCHEMA


class ServiceUnavailable(TunaError):
    """The database, broker or result backend cannot be reached.

    ``url`` must already have its password removed.
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, service: str, url: str, how_to_start: str, detail: str = "") -> None:
        text = f"cannot reach the {service} at {url}"
        if detail:
            text += f" ({detail})"
        text += f"; {how_to_start}"
        super().__init__(text)
        self.service = service
        self.url = url


class DatabaseFailed(TunaError):
    """A statement failed for a reason other than reaching the server: the server's own
    error code and message, in one line."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"the database at {url} refused a statement: {detail}")
        self.url = url


class DatabaseBusy(TunaError):
    """A deadlock, a lock wait timeout or a locked SQLite file: retried, then reported.

    ``url`` must already have its password removed.
    """

    exit_code = EXIT_TEMPFAIL

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"the database at {url} is busy ({detail})")
        self.url = url
        self.detail = detail


class ScopeBusy(TunaError):
    """Another head node or ``--execute`` already works on this session and label."""

    exit_code = EXIT_TEMPFAIL
