"""Exceptions for user mistakes: each message names the key or file at fault and the fix.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


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
