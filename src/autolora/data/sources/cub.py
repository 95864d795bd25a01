"""CUB-200-2011: ``CUB_200_2011.tgz`` with its index files (ids and labels 1-based)."""

from __future__ import annotations

from pathlib import Path

from autolora.data.sources.common import PreparationJob, read_index_file, write_resized_dataset
from autolora.data.sources.splits import official_split_plans
from autolora.errors import DataError


def id_table(path: Path) -> dict[int, str]:
    """``<id> <value>`` rows as a mapping."""
    table = {}
    for row in read_index_file(path):
        if len(row) != 2:
            raise DataError(f"{path}: expected '<id> <value>' rows, got {' '.join(row)!r}")
        table[int(row[0])] = row[1]
    return table


def prepare(job: PreparationJob) -> Path:
    root = job.extract(job.first_archive) / "CUB_200_2011"
    images = id_table(job.require(root / "images.txt"))
    image_labels = id_table(job.require(root / "image_class_labels.txt"))
    is_train = id_table(job.require(root / "train_test_split.txt"))
    classes = id_table(job.require(root / "classes.txt"))
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids are not 1..{len(class_ids)}")
    ids = sorted(images)  # examples in image-id order
    missing = [i for i in ids if i not in image_labels or i not in is_train]
    if missing:
        raise DataError(f"{root}: image id {missing[0]} has no label or no train/test flag")
    labels = [int(image_labels[i]) - 1 for i in ids]
    train = [k for k, i in enumerate(ids) if is_train[i] == "1"]
    test = [k for k, i in enumerate(ids) if is_train[i] != "1"]
    splits = official_split_plans(
        train, test, num_classes=len(class_ids), paper_counts=job.source.paper_counts
    )
    return write_resized_dataset(
        job,
        image_paths=[job.require(root / "images" / images[i]) for i in ids],
        labels=labels,
        example_sources=[f"CUB_200_2011/images/{images[i]}" for i in ids],
        class_names=[classes[c] for c in class_ids],
        splits=splits,
    )
