"""Pieces shared by the dataset families: the preparation job, image decoding and the call into
the prepared format."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from autolora.data.prepared import SplitPlan, write_prepared_dataset
from autolora.data.sources import DatasetSource
from autolora.data.sources.download import extract_tar
from autolora.errors import DataError

# The high-resolution datasets are stored after Resize(256) (shorter side 256, bilinear with
# antialiasing, exactly torchvision's Resize on a PIL image). Every transform of SPEC §2 starts with
# that Resize, and Resize(256) of an image whose shorter side is already 256 returns it unchanged,
# so training and evaluation see the same pixels as from the original files at a fraction of the size.
RESIZE_SHORT_SIDE = 256
RESIZED_CROP_SIZE = 224
STORAGE_NOTE = (
    f"high-resolution images are stored after Resize({RESIZE_SHORT_SIDE}) (torchvision, "
    "bilinear, antialias), the first step of every transform; converted to RGB"
)


def load_resized_rgb(path: Path) -> np.ndarray:
    """Decode an image file, convert it to RGB and apply torchvision's Resize(256): HWC uint8."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(
            f"{path}: cannot decode image ({error}); the archive is damaged: delete it and "
            "download it again"
        ) from error
    resized = functional.resize(rgb, RESIZE_SHORT_SIDE)
    return np.asarray(resized, dtype=np.uint8)


def resized_images(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        yield load_resized_rgb(path)


def require_file(path: Path, source: DatasetSource) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path.name}: expected in the {source.key} archive at {path} but missing; the archive "
            "is not the published one: delete it and download it again"
        )
    return path


@dataclasses.dataclass(frozen=True)
class PreparationJob:
    """What a family's ``prepare`` gets: the dataset, its verified archives (paths by file name and
    their records for ``dataset.json``), the output folder and a temporary folder to extract into."""

    source: DatasetSource
    archives: dict[str, Path]
    records: list[dict]
    out_dir: Path
    workdir: Path

    @property
    def first_archive(self) -> Path:
        return self.archives[self.source.files[0].name]

    def extract(self, archive: Path) -> Path:
        """Extract ``archive`` into the work folder; returns the work folder."""
        return extract_tar(archive, self.workdir)

    def require(self, path: Path) -> Path:
        return require_file(path, self.source)


def write_resized_dataset(
    job: PreparationJob,
    *,
    image_paths: Sequence[Path],
    labels: Sequence[int],
    example_sources: Sequence[str],
    class_names: Sequence[str],
    splits: dict[str, SplitPlan],
) -> Path:
    """Write a high-resolution dataset (RandomResizedCrop training, 224 crops) from image files."""
    splits = {
        scheme: dataclasses.replace(plan, notes=f"{plan.notes}; {STORAGE_NOTE}")
        for scheme, plan in splits.items()
    }
    return write_prepared_dataset(
        job.out_dir,
        name=job.source.key,
        images=resized_images(image_paths),
        labels=list(labels),
        sources=list(example_sources),
        class_names=list(class_names),
        augmentation="resized_crop",
        image_size=RESIZED_CROP_SIZE,
        input_upsample=None,
        archives=job.records,
        splits=splits,
    )


def read_index_file(path: Path) -> list[list[str]]:
    """Whitespace-separated rows of a text index (CUB's ``images.txt`` and friends)."""
    rows = []
    with open(path) as handle:
        for line in handle:
            if line.strip():
                rows.append(line.split())
    return rows
