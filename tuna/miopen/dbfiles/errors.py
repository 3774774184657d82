"""Errors of the MIOpen database files: one line each, saying what MIOpen would do with the value."""

from __future__ import annotations

from tuna.errors import BadInput


class DbFileError(BadInput):
    """A key, name or value that a MIOpen database file cannot hold, or a file MIOpen cannot read."""


class KernelBlobError(DbFileError):
    """A kernel object whose blob MIOpen would reject (bad base64, bzip2, size or md5)."""
