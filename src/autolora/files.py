"""Atomic file writes, canonical JSON and hashing: no partial file ever sits under a final name,
equal content always gives equal bytes, and a damaged file is reported by name, not by traceback.

Writers: :func:`atomic_path` / :func:`atomic_write` (a temporary file beside the target, fsync,
rename; removed on any failure, and a full disk becomes a :class:`StorageError` naming the file),
:func:`write_bytes` (returns the sha256 of what it wrote, so nobody reads it back to hash it) and
:func:`write_json` (key-sorted, ``repr`` floats: the same data always gives the same bytes).

Readers: :func:`read_json` (a truncated or damaged file is a :class:`DataError` naming the file and
the fix) and :func:`read_verified` (the bytes of a file checked against a recorded sha256, read
once: the hash is computed on the bytes the caller then parses).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from autolora.errors import ChecksumError, DataError, StorageError

HASH_CHUNK_BYTES = 1 << 20
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode an ordinary ``open()`` would give a new file (mkstemp's 0600 would hide records
    and checkpoints from the rest of a research group)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder (mkdtemp's 0700 would hide prepared data)."""
    return 0o777 & ~_umask()


def make_temporary_dir(final: Path, suffix: str = ".tmp") -> Path:
    """A fresh folder beside ``final`` (to be renamed into place), with the umask's mode."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent))
    os.chmod(path, default_dir_mode())
    return path


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def no_space_error(path: str | os.PathLike, error: OSError) -> StorageError:
    """The one-line message for a full disk or an exceeded quota while writing ``path``."""
    return StorageError(
        f"no space left to write {path} ({os.strerror(error.errno)}): free space on its file "
        f"system (or raise the quota) and rerun the same command; {path} was left as it was "
        "and no partial copy remains"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for writers that want a file name (numpy,
    matplotlib); it is renamed over ``path`` on success and removed on failure. A full disk
    becomes a :class:`StorageError` naming ``path``."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        if is_no_space(error):
            raise no_space_error(path, error) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. Text is written
    with ``\\n`` line ends and UTF-8 whatever the platform, so equal text gives equal bytes.
    """
    text = "b" not in mode
    options = {"encoding": "utf-8", "newline": "\n"} if text else {}
    with atomic_path(path) as tmp_path, open(tmp_path, mode, **options) as handle:
        yield handle


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 (hashed in memory, not re-read)."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write UTF-8 ``text`` atomically; returns the sha256 of the bytes written."""
    return write_bytes(path, text.encode("utf-8"))


def json_text(data: Any) -> str:
    """Indented, key-sorted JSON with a final newline: the one form every record is written in.
    Floats are written as Python's shortest round-trip ``repr``, so equal values give equal text."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def canonical_json(data: Any) -> str:
    """Compact, key-sorted, ASCII JSON: the form that is hashed (record seals) or embedded
    (safetensors metadata), identical for equal data on every machine."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def as_json_data(data: Any) -> Any:
    """``data`` as JSON reads it back (tuples become lists): what a record or a state holds."""
    return json.loads(json.dumps(data))


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` as :func:`json_text`, atomically; returns the file's sha256."""
    return write_text(path, json_text(data))


DEFAULT_JSON_FIX = "restore the file or rerun the step that writes it"


def parse_json(data: bytes | str, path: str | os.PathLike, fix: str = DEFAULT_JSON_FIX) -> Any:
    """JSON from ``data`` (the contents of ``path``); damaged or truncated JSON is a DataError."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise DataError(
            f"{path} is not valid JSON ({error.msg} at {where}): it is truncated or damaged; {fix}"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: it is damaged; {fix}") from None


def read_json(path: str | os.PathLike, fix: str = DEFAULT_JSON_FIX) -> Any:
    """The JSON in ``path``; a truncated or damaged file is a DataError naming it and ``fix``."""
    with open(path, "rb") as handle:
        return parse_json(handle.read(), path, fix)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mismatch_error(
    path: str | os.PathLike, expected: str, actual: str, recorded_in: str, fix: str
) -> ChecksumError:
    """The one-line message for a file whose sha256 is not the recorded one."""
    return ChecksumError(
        f"{path}: sha256 {actual} differs from {expected} recorded in {recorded_in}: the file "
        f"changed after it was recorded; {fix}"
    )


def read_verified(
    path: str | os.PathLike, expected: str, *, recorded_in: str, fix: str, what: str = "file"
) -> bytes:
    """The bytes of ``path`` after checking them against ``expected`` (one read: the caller
    parses the very bytes that were hashed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} is missing (recorded in {recorded_in}); {fix}")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected:
        raise mismatch_error(path, expected, actual, recorded_in, fix)
    return data
