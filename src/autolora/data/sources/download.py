"""Download with resume, checksum verification and safe extraction of archives.

A download goes to ``<dest>.part``; an interrupted one resumes from the bytes already there with an
HTTP ``Range`` request. Only a completely downloaded file whose checksum matches is renamed to
``<dest>``, so a file under its final name is always complete and verified.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from autolora.errors import ChecksumError, DataError
from autolora.files import md5_file, sha256_file

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Checksum:
    """A published (or pinned) digest of a file: ``algorithm`` is "md5" or "sha256"."""

    algorithm: str
    hexdigest: str

    def as_record(self) -> dict[str, str]:
        return {self.algorithm: self.hexdigest}


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    if algorithm == "md5":
        return md5_file(path)
    if algorithm == "sha256":
        return sha256_file(path)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def verify_file(path: str | os.PathLike, checksum: Checksum, *, source: str | None = None) -> None:
    """Raise ChecksumError naming the file, both digests and the fix when ``path`` does not match."""
    actual = file_digest(path, checksum.algorithm)
    if actual != checksum.hexdigest.lower():
        where = f" (downloaded from {source})" if source else ""
        raise ChecksumError(
            f"{path}{where}: {checksum.algorithm} is {actual}, expected {checksum.hexdigest}; "
            f"the file is corrupt or not the published one: delete it and download it again"
            + (", and check the URL" if source else "")
        )


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    checksum: Checksum | None = None,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``<dest>.part``), verify it, rename it into place.

    An existing ``dest`` is verified and kept. ``progress=None`` shows a bar only on a terminal.
    Without network the DataError says where to put a manually downloaded copy.
    """
    dest = Path(dest)
    if dest.exists():
        if checksum is not None:
            verify_file(dest, checksum)
        log.info("%s already present", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    try:
        fetch_to(url, part, progress=sys.stderr.isatty() if progress is None else progress)
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"could not download {url} ({error}); download it by hand and put it at {dest} "
            f"(a partial download is kept at {part} and resumed on the next attempt)"
        ) from error
    if checksum is not None:
        try:
            verify_file(part, checksum, source=url)
        except ChecksumError:
            part.unlink()
            raise
    os.replace(part, dest)
    return dest


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch_to(url: str, part: Path, *, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (HTTP Range from its current size)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "autolora"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http/https URLs of the catalogue)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the part already holds the whole file
            return
        raise
    with response:
        if have and response.status != 206:  # server ignored the range: start again
            log.info("%s: server does not resume, downloading from the start", url)
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        bar = progress_bar(total, have, part.name) if progress else None
        with open(part, "ab" if have else "wb") as handle:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                handle.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        if bar is not None:
            bar.close()
        if total is not None and part.stat().st_size != total:
            raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def progress_bar(total: int | None, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, file=sys.stderr)


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a (possibly compressed) tar archive into ``dest_dir``.

    The ``data`` filter refuses absolute paths, ``..`` components, links leaving the folder and
    device files, so a crafted archive cannot write outside ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest_dir, filter="data")
    except (tarfile.TarError, EOFError) as error:
        raise DataError(
            f"{archive}: not a readable tar archive ({error}); delete it and download it again"
        ) from error
    return dest_dir


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
