"""The prepared-dataset format: images, labels and split manifests in one verifiable directory.

Layout (docs/internals.md, "Prepared dataset format")::

    dataset.json          metadata, including the sha256 of every other file; sealed
    images.u8             all images, raw uint8 HWC RGB, concatenated
    images_index.npy      int64 [N, 3]: byte offset, height, width of each image
    labels.npy            int64 [N]: class index of each image
    examples.csv          example, source, label, sha256 (of the image bytes)
    splits/<scheme>.csv   split, position, example (rows may repeat an example)
    splits/<scheme>.json  scheme, seed, counts, paper_counts, num_outputs, notes

A dataset is written into a temporary sibling directory and renamed into place at the end, so a
directory under the final name is always complete. A cell only reads it.

Verification at the point of use: ``PreparedDataset.open(directory, verify=scheme)`` hashes every
file that training or evaluation under ``scheme`` reads (the arrays, ``images.u8``, the scheme's
split files) as it reads them, checks each against ``dataset.json`` and refuses a mismatch before
any of it is used; ``dataset.verified`` lists what was checked, for the run and evaluation records.
``dataset.json`` itself carries ``record_sha256``, the seal of its canonical content
(``autolora.records.seal``), checked by every ``open``: its own fields (augmentation, padding,
classes, the file hashes) cannot be edited by hand unnoticed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autolora import records
from autolora.errors import ChecksumError, DataError
from autolora.files import (
    as_json_data,
    atomic_path,
    atomic_write,
    is_no_space,
    make_temporary_dir,
    no_space_error,
    parse_json,
    sha256_bytes,
    sha256_file,
    write_json,
)
from autolora.planning import layout

FORMAT_VERSION = 2  # 2: dataset.json sealed (record_sha256)
SPLIT_NAMES = ("train", "val", "test")
AUGMENTATIONS = ("pad_crop", "resized_crop")
REQUIRED_KEYS = (
    "format",
    "name",
    "num_classes",
    "class_names",
    "augmentation",
    "image_size",
    "resize",
    "pad",
    "input_upsample",
    "sources",
    "schemes",
    "files",
)


@dataclass
class SplitPlan:
    """One split scheme: example indices of each split (in order; repeats allowed) and its head size."""

    train: list[int]
    val: list[int]
    test: list[int]
    num_outputs: int
    seed: int | None = None
    paper_counts: dict[str, int] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more facts for splits/<scheme>.json


def holdout_split(
    num_examples: int, *, seed: int = 1, train_fraction: float = 0.95
) -> tuple[list[int], list[int]]:
    """The released code's validation split (SPEC §2).

    ``np.random.seed(seed); train = np.random.choice(N, int(N * 0.95), replace=False)``; validation =
    the remaining indices in ascending order. Train keeps the order of the draw.
    """
    state = np.random.RandomState(seed)
    train = state.choice(num_examples, int(num_examples * train_fraction), replace=False)
    val = np.setdiff1d(np.arange(num_examples), train)
    return [int(i) for i in train], [int(i) for i in val]


# ---- writer ------------------------------------------------------------------------------------


def _check_image(index: int, image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise DataError(f"image {index}: expected a uint8 numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise DataError(f"image {index}: expected shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image)


def _write_images(
    directory: Path, images: Iterable[np.ndarray]
) -> tuple[np.ndarray, list[str], str]:
    """Stream images into images.u8; return the [N, 3] index, each image's sha256 and the
    file's sha256 (hashed while writing: the file can be gigabytes)."""
    rows: list[tuple[int, int, int]] = []
    digests: list[str] = []
    file_digest = hashlib.sha256()
    offset = 0
    with open(directory / layout.IMAGES, "wb") as handle:
        for index, image in enumerate(images):
            pixels = _check_image(index, image)
            data = pixels.tobytes()
            handle.write(data)
            file_digest.update(data)
            rows.append((offset, pixels.shape[0], pixels.shape[1]))
            digests.append(sha256_bytes(data))
            offset += len(data)
        handle.flush()
        os.fsync(handle.fileno())
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3), digests, file_digest.hexdigest()


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _check_plan(scheme: str, plan: SplitPlan, num_examples: int, num_classes: int) -> None:
    where = f"split scheme {scheme!r}"
    if not isinstance(plan.num_outputs, int) or plan.num_outputs < num_classes:
        raise DataError(f"{where}: num_outputs {plan.num_outputs!r} must be >= {num_classes}")
    for name in SPLIT_NAMES:
        indices = getattr(plan, name)
        bad = [i for i in indices if not 0 <= int(i) < num_examples]
        if bad:
            raise DataError(f"{where}: {name} index {bad[0]} outside 0..{num_examples - 1}")
    if not plan.train or not plan.test:
        raise DataError(f"{where}: the train and test splits must not be empty")


def _validate_inputs(
    labels: Sequence[int],
    sources: Sequence[str],
    class_names: Sequence[str],
    augmentation: str,
    splits: Mapping[str, SplitPlan],
) -> None:
    if augmentation not in AUGMENTATIONS:
        raise DataError(f"augmentation {augmentation!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if len(sources) != len(labels):
        raise DataError(f"{len(sources)} sources for {len(labels)} labels; give one per image")
    bad = [label for label in labels if not 0 <= int(label) < len(class_names)]
    if bad:
        raise DataError(
            f"label {bad[0]} outside 0..{len(class_names) - 1} ({len(class_names)} classes)"
        )
    if not splits:
        raise DataError("a prepared dataset needs at least one split scheme")
    for scheme, plan in splits.items():
        if not scheme.isidentifier():
            raise DataError(f"split scheme name {scheme!r} must be a plain word")
        _check_plan(scheme, plan, len(labels), len(class_names))


def write_prepared_dataset(
    out_dir: str | os.PathLike,
    *,
    name: str,
    images: Iterable[np.ndarray],
    labels: Sequence[int],
    sources: Sequence[str],
    class_names: Sequence[str],
    augmentation: str,
    image_size: int,
    input_upsample: int | None,
    archives: list[dict[str, Any]],
    splits: Mapping[str, SplitPlan],
    resize: int = 256,
    pad: int = 4,
    overwrite: bool = False,
) -> Path:
    """Write a prepared dataset to ``out_dir`` atomically (a complete directory or nothing).

    ``images`` may be a generator (streamed; HWC uint8 RGB, sizes may vary); ``labels`` and
    ``sources`` give one entry per image. ``archives`` lands in dataset.json as ``sources``.
    An existing ``out_dir`` is refused unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists; delete it to prepare the dataset again")
    _validate_inputs(labels, sources, class_names, augmentation, splits)
    tmp = make_temporary_dir(out_dir)
    try:
        index, digests, images_sha256 = _write_images(tmp, images)
        if len(digests) != len(labels):
            raise DataError(f"{len(digests)} images for {len(labels)} labels; give one per image")
        _write_npy(tmp / layout.IMAGE_INDEX, index)
        _write_npy(tmp / layout.LABELS, np.asarray(labels, dtype=np.int64))
        _write_csv(
            tmp / layout.EXAMPLES,
            ("example", "source", "label", "sha256"),
            ((i, sources[i], int(labels[i]), digests[i]) for i in range(len(digests))),
        )
        for scheme, plan in splits.items():
            _write_scheme(tmp, scheme, plan)
        files = {
            path.relative_to(tmp).as_posix(): (
                images_sha256 if path.name == layout.IMAGES else sha256_file(path)
            )
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        metadata = {
            "format": FORMAT_VERSION,
            "name": name,
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "augmentation": augmentation,
            "image_size": int(image_size),
            "resize": int(resize) if augmentation == "resized_crop" else None,
            "pad": int(pad) if augmentation == "pad_crop" else None,
            "input_upsample": input_upsample,
            "num_examples": len(digests),
            "sources": list(archives),
            "schemes": sorted(splits),
            "files": files,
        }
        write_json(tmp / layout.DATASET_METADATA, records.seal(metadata))
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(error):
            raise no_space_error(out_dir, error) from None
        raise
    return out_dir


def _write_scheme(directory: Path, scheme: str, plan: SplitPlan) -> None:
    rows = [
        (split, position, int(example))
        for split in SPLIT_NAMES
        for position, example in enumerate(getattr(plan, split))
    ]
    _write_csv(directory / layout.split_manifest(scheme), ("split", "position", "example"), rows)
    info = {
        "scheme": scheme,
        "seed": plan.seed,
        "counts": {split: len(getattr(plan, split)) for split in SPLIT_NAMES},
        "paper_counts": plan.paper_counts,
        "num_outputs": plan.num_outputs,
        "notes": plan.notes,
        **plan.extra,
    }
    write_json(directory / layout.split_info(scheme), info)


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not overwrite:
        raise DataError(f"{out_dir} already exists; delete it to prepare the dataset again")
    old = make_temporary_dir(out_dir, suffix=".old")
    os.rename(out_dir, old / out_dir.name)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---- reader ------------------------------------------------------------------------------------


def _rebuild_hint(directory: Path, metadata: Mapping[str, Any] | None) -> str:
    name = (metadata or {}).get("name") or directory.name
    sources = (metadata or {}).get("sources") or []
    if any("generator" in source for source in sources):
        command = "`autolora data synthesize ...`"
    else:
        command = f"`autolora data prepare --dataset {name} ...`"
    return f"delete {directory} and rebuild it with {command} (or the workflow's data rule)"


class PreparedDataset:
    """A prepared dataset opened for reading (validated; images read lazily via np.memmap)."""

    def __init__(
        self,
        directory: Path,
        metadata: dict[str, Any],
        verify: str | None = None,
        metadata_sha256: str | None = None,
    ):
        self.directory = directory
        self.metadata = metadata
        self.metadata_sha256 = metadata_sha256  # of the dataset.json bytes that were parsed
        self.verified: list[dict[str, str]] = []  # files checked against dataset.json
        self.verification_seconds = 0.0  # time spent hashing them
        self._split_cache: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
        self._verify = verify is not None
        try:
            self.index = np.load(io.BytesIO(self._read(layout.IMAGE_INDEX)))
            self.labels = np.load(io.BytesIO(self._read(layout.LABELS)))
        except ValueError as error:
            raise DataError(
                f"prepared dataset {directory}: unreadable array ({error}); "
                + _rebuild_hint(directory, metadata)
            ) from None
        self._pixels: np.memmap | None = None
        self._check_arrays()
        if verify is not None:
            self._check_scheme(verify)
            # images.u8 is read through a memmap, image by image: hash it in one streaming pass
            # now (which also brings it into the page cache the memmap then reads from).
            started = time.monotonic()
            digest = sha256_file(self.directory / layout.IMAGES)
            self.verification_seconds += time.monotonic() - started
            self._check_hash(layout.IMAGES, digest)
            self._load_scheme(verify)

    def _check_hash(self, name: str, actual: str) -> None:
        """Compare the sha256 of file ``name`` with dataset.json's; record it as verified."""
        path = self.directory / name
        expected = self.metadata["files"].get(name)
        if expected != actual:
            recorded = f"differs from {expected}" if expected else "is not listed"
            raise ChecksumError(
                f"{path}: sha256 {actual} {recorded} in {self.directory / layout.DATASET_METADATA}: the "
                "prepared dataset changed after it was written; "
                + _rebuild_hint(self.directory, self.metadata)
            )
        self.verified.append({"file": name, "sha256": actual})

    def _read(self, name: str) -> bytes:
        """The bytes of file ``name``, checked against dataset.json when verifying."""
        data = (self.directory / name).read_bytes()
        if self._verify:
            started = time.monotonic()
            digest = sha256_bytes(data)
            self.verification_seconds += time.monotonic() - started
            self._check_hash(name, digest)
        return data

    @classmethod
    def open(cls, directory: str | os.PathLike, *, verify: str | None = None) -> PreparedDataset:
        """Open (and validate) a prepared dataset. With ``verify`` (a split scheme) every file
        that training or evaluation under that scheme reads is checked against dataset.json
        first; a mismatch is a ChecksumError naming the file, both hashes and the fix."""
        directory = Path(directory)
        metadata_path = directory / layout.DATASET_METADATA
        if not metadata_path.is_file():
            raise DataError(
                f"prepared dataset {directory}: {layout.DATASET_METADATA} is missing; "
                + _rebuild_hint(directory, None)
            )
        metadata_bytes = metadata_path.read_bytes()
        metadata = parse_json(metadata_bytes, metadata_path, _rebuild_hint(directory, None))
        if not isinstance(metadata, dict):
            raise DataError(
                f"{metadata_path} is not a JSON object; " + _rebuild_hint(directory, None)
            )
        missing_keys = [key for key in REQUIRED_KEYS if key not in metadata]
        if missing_keys:
            raise DataError(
                f"{metadata_path} lacks key {missing_keys[0]!r}; "
                + _rebuild_hint(directory, metadata)
            )
        if metadata["format"] != FORMAT_VERSION:
            raise DataError(
                f"{metadata_path}: format {metadata['format']!r}, this version reads "
                f"{FORMAT_VERSION}; " + _rebuild_hint(directory, metadata)
            )
        metadata = _unsealed(metadata, metadata_path, directory)
        for name in metadata["files"]:
            if not (directory / name).is_file():
                raise DataError(
                    f"prepared dataset {directory}: file {name} is missing; "
                    + _rebuild_hint(directory, metadata)
                )
        return cls(directory, metadata, verify, sha256_bytes(metadata_bytes))

    def _check_arrays(self) -> None:
        where = f"prepared dataset {self.directory}"
        hint = _rebuild_hint(self.directory, self.metadata)
        if (
            self.index.ndim != 2
            or self.index.shape[1] != 3
            or self.labels.shape != (len(self.index),)
        ):
            raise DataError(f"{where}: {layout.IMAGE_INDEX} and {layout.LABELS} disagree; {hint}")
        sizes = self.index[:, 1] * self.index[:, 2] * 3
        expected = int(self.index[-1, 0] + sizes[-1]) if len(self.index) else 0
        actual = (self.directory / layout.IMAGES).stat().st_size
        if actual != expected:
            raise DataError(
                f"{where}: {layout.IMAGES} has {actual} bytes, the index says {expected}; {hint}"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pixels"] = None  # reopened lazily in each worker process
        return state

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def schemes(self) -> list[str]:
        return list(self.metadata["schemes"])

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, example: int) -> np.ndarray:
        """Example ``example`` as a uint8 HWC RGB array (a copy)."""
        if self._pixels is None:
            size = (self.directory / layout.IMAGES).stat().st_size
            self._pixels = (
                np.memmap(self.directory / layout.IMAGES, dtype=np.uint8, mode="r")
                if size
                else np.zeros(0, np.uint8)
            )
        offset, height, width = (int(v) for v in self.index[example])
        flat = self._pixels[offset : offset + height * width * 3]
        return np.array(flat).reshape(height, width, 3)

    def _check_scheme(self, scheme: str) -> None:
        if scheme not in self.metadata["schemes"]:
            raise DataError(
                f"prepared dataset {self.directory} has no split scheme {scheme!r}; "
                f"it has: {', '.join(self.metadata['schemes'])}"
            )

    def _load_scheme(self, scheme: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """splits/<scheme>.json and the indices of splits/<scheme>.csv, read (and, when
        verifying, checked) once."""
        if scheme not in self._split_cache:
            self._check_scheme(scheme)
            info_name, manifest_name = layout.split_info(scheme), layout.split_manifest(scheme)
            hint = _rebuild_hint(self.directory, self.metadata)
            info = parse_json(self._read(info_name), self.directory / info_name, hint)
            manifest = self._read(manifest_name).decode("utf-8", errors="replace")
            indices = _parse_manifest(manifest, self.directory / manifest_name)
            self._split_cache[scheme] = (info, indices)
        return self._split_cache[scheme]

    def split_info(self, scheme: str) -> dict[str, Any]:
        """The contents of splits/<scheme>.json."""
        return as_json_data(self._load_scheme(scheme)[0])

    def num_outputs(self, scheme: str) -> int:
        return int(self.split_info(scheme)["num_outputs"])

    def split_indices(self, scheme: str) -> dict[str, np.ndarray]:
        """Example indices of every split of ``scheme``, in position order."""
        return {name: array.copy() for name, array in self._load_scheme(scheme)[1].items()}

    def split(self, scheme: str, name: str) -> SplitView:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_NAMES)}")
        return SplitView(self, scheme, name, self.split_indices(scheme)[name])

    def read_examples(self) -> list[dict[str, str]]:
        with open(self.directory / layout.EXAMPLES, newline="") as handle:
            return list(csv.DictReader(handle))

    def verify(self, *, images: bool = False) -> None:
        """Recompute the sha256 of every file (and, with ``images``, of every image)."""
        hint = _rebuild_hint(self.directory, self.metadata)
        for name in self.metadata["files"]:
            self._check_hash(name, sha256_file(self.directory / name))
        if images:
            for row in self.read_examples():
                example = int(row["example"])
                actual = sha256_bytes(self.image(example).tobytes())
                if actual != row["sha256"]:
                    raise ChecksumError(
                        f"{self.directory}: image {example} ({row['source']}) has sha256 "
                        f"{actual}, examples.csv records {row['sha256']}; {hint}"
                    )


def _unsealed(metadata: dict[str, Any], path: Path, directory: Path) -> dict[str, Any]:
    """dataset.json's content after checking its seal (DataError naming the file and the fix)."""
    recorded = metadata.get(records.SEAL_KEY)
    if recorded is None:
        raise DataError(
            f"{path} has no {records.SEAL_KEY} (it was not written by `autolora data`); "
            + _rebuild_hint(directory, metadata)
        )
    actual = records.seal_digest(metadata)
    if actual != recorded:
        raise DataError(
            f"{path}: its content hashes to {actual}, not to its {records.SEAL_KEY} {recorded}: "
            "it was changed after the dataset was prepared; " + _rebuild_hint(directory, metadata)
        )
    return {key: value for key, value in metadata.items() if key != records.SEAL_KEY}


def _parse_manifest(text: str, path: Path) -> dict[str, np.ndarray]:
    """splits/<scheme>.csv (split, position, example) as example indices per split."""
    rows: dict[str, list[tuple[int, int]]] = {name: [] for name in SPLIT_NAMES}
    try:
        for row in csv.DictReader(io.StringIO(text, newline="")):
            if row["split"] not in rows:
                raise DataError(f"{path}: unknown split {row['split']!r}")
            rows[row["split"]].append((int(row["position"]), int(row["example"])))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed split manifest ({error})") from None
    result = {}
    for name, pairs in rows.items():
        pairs.sort()
        if [p for p, _ in pairs] != list(range(len(pairs))):
            raise DataError(f"{path}: positions of split {name!r} are not 0..{len(pairs) - 1}")
        result[name] = np.asarray([e for _, e in pairs], dtype=np.int64)
    return result


class SplitView:
    """One split of one scheme: ``len``, ``labels``, ``image(position)``; indexable like a
    torch Dataset (``view[i]`` -> uint8 CHW tensor, label)."""

    def __init__(self, dataset: PreparedDataset, scheme: str, name: str, indices: np.ndarray):
        self.dataset = dataset
        self.scheme = scheme
        self.name = name
        self.indices = indices
        self.labels = dataset.labels[indices] if len(indices) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.dataset.metadata

    def image(self, position: int) -> np.ndarray:
        return self.dataset.image(int(self.indices[position]))

    def label(self, position: int) -> int:
        return int(self.labels[position])

    def __getitem__(self, position: int) -> tuple[Any, int]:
        import torch

        image = torch.from_numpy(self.image(position)).permute(2, 0, 1).contiguous()
        return image, self.label(position)
