"""CIFAR-10 / CIFAR-100 from the official python pickle batches."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolora.data.prepared import write_prepared_dataset
from autolora.data.sources.common import PreparationJob
from autolora.data.sources.splits import official_split_plans
from autolora.errors import DataError

IMAGE_SIZE = 32
INPUT_UPSAMPLE = 224


@dataclass(frozen=True)
class Layout:
    folder: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes


LAYOUTS = {
    "cifar10": Layout(
        folder="cifar-10-batches-py",
        train_batches=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_batches=("test_batch",),
        label_key=b"labels",
        meta_file="batches.meta",
        names_key=b"label_names",
    ),
    "cifar100": Layout(
        folder="cifar-100-python",
        train_batches=("train",),
        test_batches=("test",),
        label_key=b"fine_labels",
        meta_file="meta",
        names_key=b"fine_label_names",
    ),
}

# The batches are pickles written by Python 2. They are opened only after the archive matched its
# published md5, and through an unpickler that resolves nothing but the numpy array constructors,
# so even a tampered file could not run code. encoding="bytes" keeps Python 2 str as bytes.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _NumpyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(
            f"{path}: not a CIFAR python batch ({error}); delete the archive and download it again"
        ) from error
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(batch).__name__})")
    return batch


def batch_arrays(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    """Images as N×32×32×3 uint8 (the batch stores N×3072, channel planes R, G, B) and labels."""
    batch = load_batch(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = [int(label) for label in batch[label_key]]
    except KeyError as error:
        raise DataError(f"{path}: CIFAR batch without key {error}; wrong archive?") from None
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def class_names(path: Path, names_key: bytes) -> list[str]:
    meta = load_batch(path)
    try:
        return [name.decode() if isinstance(name, bytes) else str(name) for name in meta[names_key]]
    except KeyError:
        raise DataError(
            f"{path}: no {names_key.decode()} in the metadata; wrong archive?"
        ) from None


def prepare(job: PreparationJob) -> Path:
    layout = LAYOUTS[job.source.key]
    root = job.extract(job.first_archive) / layout.folder
    parts: list[np.ndarray] = []
    labels: list[int] = []
    sources: list[str] = []
    train: list[int] = []
    test: list[int] = []
    for batches, split in ((layout.train_batches, train), (layout.test_batches, test)):
        for batch in batches:
            images, batch_labels = batch_arrays(job.require(root / batch), layout.label_key)
            split.extend(range(len(labels), len(labels) + len(batch_labels)))
            sources.extend(f"{layout.folder}/{batch}#{i}" for i in range(len(batch_labels)))
            parts.append(images)
            labels.extend(batch_labels)
    names = class_names(job.require(root / layout.meta_file), layout.names_key)
    splits = official_split_plans(
        train, test, num_classes=len(names), paper_counts=job.source.paper_counts
    )
    return write_prepared_dataset(
        job.out_dir,
        name=job.source.key,
        images=(image for part in parts for image in part),
        labels=labels,
        sources=sources,
        class_names=names,
        augmentation="pad_crop",
        image_size=IMAGE_SIZE,
        input_upsample=INPUT_UPSAMPLE,
        archives=job.records,
        splits=splits,
    )
