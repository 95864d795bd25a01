"""The lock file ``config/weights.lock``: the sha256 pinned for each input file whose publisher
gives no hash (two backbone checkpoints, the Stanford Dogs archives), recorded on first use.

One ``name: sha256`` per line (comments after ``#``). The first verified download or preparation
of such a file appends its line (trust on first use); committed, it makes every later download,
on any machine, produce the very same file. A later file with another hash is refused with both
hashes; only a user who trusts the new file deletes the line so that it is recorded anew.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from autolora.errors import ChecksumError, ConfigError
from autolora.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_LOCK = Path("config/weights.lock")  # beside the workflow; the rules pass its path
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def read_lock(path: str | os.PathLike) -> dict[str, str]:
    """The ``name: sha256`` entries of the lock file; a missing file has none.

    The file reads as YAML, but it is parsed line by line: a YAML loader would turn a digest made
    of digits only into a number.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        name, _, digest = (part.strip() for part in content.partition(":"))
        if not name or not SHA256_PATTERN.fullmatch(digest.lower()):
            raise ConfigError(
                f"{path}, line {number}: expected 'file name: <64 hex digits>', got {line.strip()!r}; "
                "fix or delete that line"
            )
        entries[name] = digest.lower()
    return entries


@contextlib.contextmanager
def _locked_folder(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the lock file's folder: two jobs pinning at once (a Dogs
    download beside a checkpoint conversion) each keep their line. The folder must exist: a lock
    file is never started in a folder of its own, away from the committed one."""
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"lock file {path}: its folder {folder} does not exist (run from another folder?); "
            "pass --lock <repository>/config/weights.lock, the workflow's pins"
        )
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the flock


def record_lock(path: str | os.PathLike, name: str, sha256: str) -> None:
    """Append ``name: sha256`` to the lock file (atomically; existing lines and comments kept)."""
    path = Path(path)
    with _locked_folder(path):
        _append(path, name, sha256)


def _append(path: Path, name: str, sha256: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    today = datetime.date.today().isoformat()
    with atomic_write(path) as handle:
        handle.write(f"{text}{name}: {sha256}  # recorded on first use, {today}\n")


def check_or_pin(
    actual: str, name: str, lock_path: str | os.PathLike, path: str | os.PathLike, redo: str
) -> str:
    """Compare ``actual`` (the sha256 of ``path``) with the hash the lock pins for ``name``, or pin
    it where there is none (trust on first use). A mismatch is a ChecksumError naming both hashes,
    ``redo`` (how to get the file again) and the line to delete if the new file is trusted.
    Returns where the expected hash came from."""
    with _locked_folder(Path(lock_path)):
        pinned = read_lock(lock_path).get(name)
        if pinned is None:
            _append(Path(lock_path), name, actual)
    if pinned is None:
        log.warning(
            "%s: no published sha256; recorded %s in %s (trust on first use: commit that file)",
            name,
            actual,
            lock_path,
        )
        return f"{lock_path} (recorded now)"
    if actual != pinned:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, expected {pinned} ({lock_path}) for {name}; {redo}; "
            f"if you trust the new file, delete its line from {lock_path}"
        )
    return str(lock_path)
