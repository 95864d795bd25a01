"""Stanford Dogs: ``images.tar`` (Images/<wnid>-<name>/...) and ``lists.tar`` (.mat lists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autolora.data.sources import DatasetSource
from autolora.data.sources.common import require_file, write_resized_dataset
from autolora.data.sources.download import extract_tar
from autolora.data.sources.splits import SPLIT_SEED, official_split_plans
from autolora.errors import DataError


def read_mat_list(path: Path) -> tuple[list[str], list[int]]:
    """``file_list`` and ``labels`` (1-based in the file, returned 0-based) of a Dogs list."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        files = [str(np.asarray(item).ravel()[0]) for item in mat["file_list"].ravel()]
        labels = [int(label) - 1 for label in np.asarray(mat["labels"]).ravel()]
    except (KeyError, ValueError, IndexError) as error:
        raise DataError(f"{path}: not a Stanford Dogs list ({error}); wrong lists.tar?") from None
    if len(files) != len(labels):
        raise DataError(f"{path}: {len(files)} files but {len(labels)} labels")
    return files, labels


def class_names_from_folders(files: list[str], labels: list[int], path: Path) -> list[str]:
    """Class k is named after the folder (``n02085620-Chihuahua``) of its images."""
    names: dict[int, str] = {}
    for file, label in zip(files, labels, strict=True):
        folder = file.split("/")[0]
        if names.setdefault(label, folder) != folder:
            raise DataError(
                f"{path}: label {label + 1} used for folders {names[label]} and {folder}"
            )
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: labels are not 1..{len(names)}")
    return [names[k] for k in range(len(names))]


def prepare(
    source: DatasetSource,
    archives: dict[str, Path],
    records: list[dict],
    out_dir: Path,
    workdir: Path,
) -> Path:
    extract_tar(archives["images.tar"], workdir)
    extract_tar(archives["lists.tar"], workdir)
    train_files, train_labels = read_mat_list(require_file(workdir / "train_list.mat", source))
    test_files, test_labels = read_mat_list(require_file(workdir / "test_list.mat", source))
    files = train_files + test_files
    labels = train_labels + test_labels
    names = class_names_from_folders(files, labels, workdir / "train_list.mat")
    train = list(range(len(train_files)))
    test = list(range(len(train_files), len(files)))
    splits = official_split_plans(
        train, test, num_classes=len(names), paper_counts=source.paper_counts, seed=SPLIT_SEED
    )
    return write_resized_dataset(
        out_dir,
        source,
        records,
        image_paths=[require_file(workdir / "Images" / file, source) for file in files],
        labels=labels,
        example_sources=[f"Images/{file}" for file in files],
        class_names=names,
        splits=splits,
    )
