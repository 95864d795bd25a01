"""The six downstream datasets of SPEC §2: where they come from, how to verify and prepare them.

``CATALOGUE`` holds, per dataset key, the archive files with their URLs and published checksums and
the counts the paper states. ``download_dataset`` fetches and verifies the archives;
``prepare_dataset`` verifies them again, extracts them into a temporary folder and writes the
prepared format (``autolora.data.prepared``) with the ``paper`` and ``clean`` split schemes.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autolora.data.sources.download import Checksum, download, remove_tree, verify_file
from autolora.errors import ConfigError, DataError
from autolora.files import sha256_file
from autolora.pins import check_or_pin
from autolora.planning.vocabulary import DATASETS, DatasetFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveFile:
    """One file to download: its name on disk, URL and published checksum (None: not published)."""

    name: str
    url: str
    checksum: Checksum | None


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset of SPEC §2 comes from: its archives. What the paper says of it (its name,
    classes, counts, and ``family``, the module of this package that prepares it) is in
    ``autolora.planning.vocabulary.DATASETS``."""

    key: str
    files: tuple[ArchiveFile, ...]

    @property
    def facts(self) -> DatasetFacts:
        return DATASETS[self.key]

    @property
    def paper_name(self) -> str:
        return self.facts.label

    @property
    def family(self) -> str:
        return self.facts.family

    @property
    def num_classes(self) -> int:
        return self.facts.num_classes

    @property
    def paper_counts(self) -> dict[str, int]:
        """The paper's train / val / test sizes under its protocol."""
        return dict(self.facts.paper_counts)


def _md5(hexdigest: str) -> Checksum:
    return Checksum("md5", hexdigest)


_DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs"

CATALOGUE: dict[str, DatasetSource] = {
    source.key: source
    for source in (
        DatasetSource(
            key="cifar10",
            files=(
                ArchiveFile(
                    "cifar-10-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    _md5("c58f30108f718f92721af3b95e74349a"),
                ),
            ),
        ),
        DatasetSource(
            key="cifar100",
            files=(
                ArchiveFile(
                    "cifar-100-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                    _md5("eb9058c3a382ffc7106e4002c42a8d85"),
                ),
            ),
        ),
        DatasetSource(
            key="dtd",
            files=(
                ArchiveFile(
                    "dtd-r1.0.1.tar.gz",
                    "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                    _md5("fff73e5086ae6bdbea199a49dfb8a4c1"),
                ),
            ),
        ),
        DatasetSource(
            key="dogs",
            files=(
                ArchiveFile("images.tar", f"{_DOGS_URL}/images.tar", None),
                ArchiveFile("lists.tar", f"{_DOGS_URL}/lists.tar", None),
            ),
        ),
        DatasetSource(
            key="cub",
            files=(
                ArchiveFile(
                    "CUB_200_2011.tgz",
                    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                    _md5("97eceeb196236b17998738112f37df78"),
                ),
            ),
        ),
        DatasetSource(
            key="caltech256",
            files=(
                ArchiveFile(
                    "256_ObjectCategories.tar",
                    "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar",
                    _md5("67b4f42ca05d46448c6bb8ecd2220f6d"),
                ),
            ),
        ),
    )
}


def dataset_source(key: str) -> DatasetSource:
    try:
        return CATALOGUE[key]
    except KeyError:
        raise ConfigError(
            f"dataset {key!r} is not one of the real datasets {sorted(CATALOGUE)}; "
            "use `autolora data synthesize` for synthetic data"
        ) from None


def pin_name(source: DatasetSource, archive: ArchiveFile) -> str:
    """An unpublished archive's name in the lock file: ``<dataset>/<file>``."""
    return f"{source.key}/{archive.name}"


def check_unpublished(
    source: DatasetSource, archive: ArchiveFile, path: Path, lock_path: str | os.PathLike | None
) -> str:
    """The sha256 of an archive whose publisher gives no checksum, checked against the one the
    lock file pins (pinned now where there is none: trust on first use; no check without a
    lock). Returns the sha256."""
    actual = sha256_file(path)
    if lock_path is not None:
        redo = f"delete it and run `autolora data download --dataset {source.key}` again"
        check_or_pin(actual, pin_name(source, archive), lock_path, path, redo)
    return actual


def download_dataset(
    key: str,
    dest_dir: str | os.PathLike,
    *,
    staging_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    lock_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Download and verify every archive of dataset ``key`` into ``dest_dir``.

    With ``staging_dir`` the archives (and their resumable ``.part`` files) live there until all
    of them are verified, then move into ``dest_dir``: a workflow deletes a failed job's output
    folder, and the staging folder keeps what was already fetched for the retry. An archive
    without a published checksum is checked against (or pinned in) ``lock_path``.
    """
    source = dataset_source(key)
    dest_dir = Path(dest_dir)
    staging = Path(staging_dir) if staging_dir is not None else dest_dir
    staged = []
    for archive in source.files:
        path = download(
            archive.url, staging / archive.name, checksum=archive.checksum, progress=progress
        )
        if archive.checksum is None:
            sha256 = check_unpublished(source, archive, path, lock_path)
            log.info("%s: no checksum is published; sha256 %s", path, sha256)
        staged.append(path)
    if staging == dest_dir:
        return staged
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in staged:
        os.replace(path, dest_dir / path.name)
        paths.append(dest_dir / path.name)
    return paths


def verify_archives(
    source: DatasetSource, source_dir: Path, lock_path: str | os.PathLike | None = None
) -> tuple[dict[str, Path], list[dict]]:
    """Check that every archive is present and matches its published checksum (or, where none
    is published, the sha256 ``lock_path`` pins: :func:`check_unpublished`).

    Returns the archive paths by file name and their records for ``dataset.json`` (the published
    digest, or the sha256 computed here where none is published).
    """
    paths: dict[str, Path] = {}
    records: list[dict] = []
    for archive in source.files:
        path = source_dir / archive.name
        if not path.is_file():
            raise DataError(
                f"{path}: missing archive of {source.key}; run `autolora data download "
                f"--dataset {source.key} --dest {source_dir}` or download {archive.url} there by hand"
            )
        if archive.checksum is None:
            sha256 = check_unpublished(source, archive, path, lock_path)
            records.append({"file": archive.name, "sha256": sha256})
        else:
            verify_file(path, archive.checksum, source=archive.url)
            records.append({"file": archive.name, **archive.checksum.as_record()})
        paths[archive.name] = path
    return paths, records


def prepare_dataset(
    key: str,
    source_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    source: DatasetSource | None = None,
    lock_path: str | os.PathLike | None = None,
) -> Path:
    """Verify, extract and prepare dataset ``key`` from the archives in ``source_dir``.

    ``source`` replaces the catalogue entry (tests pass one with the digests of their miniature
    archives). Nothing is written to ``out_dir`` unless every archive verifies; an archive placed
    by hand without a published checksum is pinned in ``lock_path`` on its first preparation.
    """
    source = source or dataset_source(key)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; delete it to prepare {source.key} again")
    archives, records = verify_archives(source, source_dir, lock_path)
    from autolora.data.sources.common import PreparationJob  # common imports this package

    family = importlib.import_module(f"autolora.data.sources.{source.family}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{source.key}-extract-", dir=out_dir.parent))
    try:
        return family.prepare(PreparationJob(source, archives, records, out_dir, workdir))
    finally:
        remove_tree(workdir)
