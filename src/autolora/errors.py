"""Exceptions for user mistakes: each message names the key or file at fault and the fix.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AutoloraError(Exception):
    """Base class of every error a user can fix."""


class ConfigError(AutoloraError):
    """A configuration key is missing, unknown or has an invalid value."""


class DataError(AutoloraError):
    """An input file (archive, prepared dataset, checkpoint, record) is missing or malformed."""


class ChecksumError(DataError):
    """A file's checksum does not match the one published, pinned or recorded."""


class StorageError(AutoloraError):
    """A file could not be written for lack of space (disk full or quota exceeded)."""


def reject_unknown(mapping: Iterable[Any], allowed: Iterable[str], prefix: str = "") -> None:
    """A ConfigError naming the first key of ``mapping`` that is not in ``allowed`` (listed in the
    order given) with ``prefix``, its place in the configuration (e.g. ``"tables."``)."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed: {', '.join(allowed)}")
