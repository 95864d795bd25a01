"""DTD (Describable Textures Dataset) r1.0.1, partition 1."""

from __future__ import annotations

from pathlib import Path

from autolora.data.sources.common import PreparationJob, write_resized_dataset
from autolora.data.sources.splits import dtd_plans
from autolora.errors import DataError

PARTITION = 1


def read_list(path: Path) -> list[str]:
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def dtd_classes(root: Path) -> list[str]:
    """Class order: ``labels/classes.txt`` when present, else the sorted folder names of images/."""
    listed = root / "labels" / "classes.txt"
    if listed.is_file():
        return read_list(listed)
    return sorted(path.name for path in (root / "images").iterdir() if path.is_dir())


def prepare(job: PreparationJob) -> Path:
    root = job.extract(job.first_archive) / "dtd"
    classes = dtd_classes(root)
    class_index = {name: i for i, name in enumerate(classes)}
    entries: list[str] = []
    train: list[int] = []
    test: list[int] = []
    for list_name, split in (("train", train), ("val", train), ("test", test)):
        names = read_list(job.require(root / "labels" / f"{list_name}{PARTITION}.txt"))
        split.extend(range(len(entries), len(entries) + len(names)))
        entries.extend(names)
    labels = []
    for entry in entries:
        name = entry.split("/")[0]
        if name not in class_index:
            raise DataError(
                f"{job.source.key}: {entry} names class {name!r}, not in the class list"
            )
        labels.append(class_index[name])
    splits = dtd_plans(train, test, num_classes=len(classes), paper_counts=job.source.paper_counts)
    return write_resized_dataset(
        job,
        image_paths=[job.require(root / "images" / entry) for entry in entries],
        labels=labels,
        example_sources=[f"dtd/images/{entry}" for entry in entries],
        class_names=classes,
        splits=splits,
    )
