"""Stanford Dogs: ``images.tar`` (Images/<wnid>-<name>/...) and ``lists.tar`` (.mat lists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autolora.data.sources.common import PreparationJob, write_resized_dataset
from autolora.data.sources.splits import official_split_plans
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


def prepare(job: PreparationJob) -> Path:
    job.extract(job.archives["images.tar"])
    job.extract(job.archives["lists.tar"])
    train_files, train_labels = read_mat_list(job.require(job.workdir / "train_list.mat"))
    test_files, test_labels = read_mat_list(job.require(job.workdir / "test_list.mat"))
    files = train_files + test_files
    labels = train_labels + test_labels
    names = class_names_from_folders(files, labels, job.workdir / "train_list.mat")
    train = list(range(len(train_files)))
    test = list(range(len(train_files), len(files)))
    splits = official_split_plans(
        train, test, num_classes=len(names), paper_counts=job.source.paper_counts
    )
    return write_resized_dataset(
        job,
        image_paths=[job.require(job.workdir / "Images" / file) for file in files],
        labels=labels,
        example_sources=[f"Images/{file}" for file in files],
        class_names=names,
        splits=splits,
    )
