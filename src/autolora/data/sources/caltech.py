"""Caltech-256: ``256_ObjectCategories.tar`` with 257 folders ``001.ak47`` ... ``257.clutter``."""

from __future__ import annotations

from pathlib import Path

from autolora.data.sources.common import PreparationJob, write_resized_dataset
from autolora.data.sources.splits import caltech_plans
from autolora.errors import DataError

FOLDER = "256_ObjectCategories"


def list_images(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Classes = sorted folder names; per class the ``.jpg`` files directly inside, sorted by name.

    Only top-level ``.jpg`` files count (the archive holds a few stray non-image files), which gives
    the published 30,607 images.
    """
    classes = sorted(path.name for path in root.iterdir() if path.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders; is this the Caltech-256 archive?")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            path
            for path in (root / name).iterdir()
            if path.is_file() and path.suffix.lower() == ".jpg"
        )
        paths.extend(files)
        labels.extend([label] * len(files))
    return classes, paths, labels


def prepare(job: PreparationJob) -> Path:
    root = job.extract(job.first_archive) / FOLDER
    if not root.is_dir():
        raise DataError(f"{job.first_archive}: no {FOLDER}/ folder inside")
    classes, paths, labels = list_images(root)
    splits = caltech_plans(labels, num_classes=len(classes), paper_counts=job.source.paper_counts)
    return write_resized_dataset(
        job,
        image_paths=paths,
        labels=labels,
        example_sources=[f"{FOLDER}/{path.parent.name}/{path.name}" for path in paths],
        class_names=classes,
        splits=splits,
    )
