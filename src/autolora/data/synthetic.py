"""Synthetic image classification data: deterministic by seed, learnable by a small CNN.

Each class has a prototype: a base colour plus a few low-frequency sinusoidal gratings (integer
cycles per image, so the pattern tiles). An image is its class prototype, circularly shifted by a
random offset, with random contrast and brightness and Gaussian pixel noise. Colour and texture
separate the classes; shift, lighting and noise keep the task from being a lookup. The demo and the
tests train on it, and ``autolora pretrain`` uses it (with another seed) as a source task.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from autolora.data.prepared import SplitPlan, holdout_split, write_prepared_dataset
from autolora.errors import DataError

GENERATOR_NAME = "autolora.synthetic"
GENERATOR_VERSION = 1  # bump when the images a seed produces change
WAVES_PER_CLASS = 3
MAX_CYCLES = 3
NOISE_STD = 0.08
CHUNK = 256  # images per noise generator; fixed so the output does not depend on memory use
SPLIT_SEED = 1  # the released code's validation-split seed (SPEC §2)
TRAIN_FRACTION = 0.95  # int(N * 0.95) training images, as the released code


def _part_code(part: str) -> int:
    return {"train": 1, "test": 2}.get(part) or zlib.crc32(part.encode()) + 3


def class_prototypes(num_classes: int, image_size: int, seed: int) -> np.ndarray:
    """float32 [K, S, S, 3] in [0, 1]: the noise-free pattern of every class."""
    rng = np.random.default_rng([seed, 0])
    grid = np.arange(image_size, dtype=np.float64) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    prototypes = np.broadcast_to(
        rng.uniform(0.25, 0.75, (num_classes, 1, 1, 3)), (num_classes, image_size, image_size, 3)
    ).copy()
    for _ in range(WAVES_PER_CLASS):
        fy = rng.integers(-MAX_CYCLES, MAX_CYCLES + 1, num_classes)
        fx = rng.integers(1, MAX_CYCLES + 1, num_classes)  # never zero: every wave varies in x
        phase = rng.uniform(0, 2 * np.pi, num_classes)
        amplitude = rng.uniform(-0.18, 0.18, (num_classes, 3))
        waves = np.sin(
            2 * np.pi * (fy[:, None, None] * yy + fx[:, None, None] * xx) + phase[:, None, None]
        )
        prototypes += waves[..., None] * amplitude[:, None, None, :]
    return np.clip(prototypes, 0.0, 1.0).astype(np.float32)


def generate_synthetic_arrays(
    *, num_classes: int, count: int, image_size: int, seed: int, part: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8 [N, S, S, 3]) and balanced labels (int64 [N]).

    The class prototypes depend on (seed, num_classes, image_size); the images also on ``part``,
    so "train" and "test" of one seed are independent draws from one distribution.
    """
    if num_classes < 2 or count < 1 or image_size < 4:
        raise DataError(
            f"synthetic data needs num_classes >= 2, count >= 1, image_size >= 4; got "
            f"{num_classes}, {count}, {image_size}"
        )
    prototypes = class_prototypes(num_classes, image_size, seed)
    code = _part_code(part)
    rng = np.random.default_rng([seed, code])
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int64)
    shifts = rng.integers(0, image_size, (count, 2))
    contrast = rng.uniform(0.7, 1.3, count).astype(np.float32)
    brightness = rng.uniform(-0.12, 0.12, count).astype(np.float32)
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        noise_rng = np.random.default_rng([seed, code, start // CHUNK])
        noise = noise_rng.normal(0.0, NOISE_STD, (stop - start, image_size, image_size, 3))
        for row, i in enumerate(range(start, stop)):
            pattern = np.roll(prototypes[labels[i]], tuple(shifts[i]), axis=(0, 1))
            mean = pattern.mean()
            pixels = (pattern - mean) * contrast[i] + mean + brightness[i] + noise[row]
            images[i] = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images, labels


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    name: str,
    num_classes: int,
    train_size: int,
    test_size: int,
    image_size: int,
    seed: int,
    augmentation: str = "pad_crop",
    input_upsample: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the prepared format (schemes ``paper`` and ``clean``).

    Both schemes hold out 5% of the training images as validation with the released code's draw
    (seed 1, SPEC §2) and keep the test images as the test split, so they coincide: synthetic data
    has no test-as-validation case to differ on. With ``resized_crop`` the images are generated at
    the eval resize (``image_size * 8 // 7``, 256 for 224) and ``image_size`` is the crop.
    """
    resize = image_size * 8 // 7
    native = image_size if augmentation == "pad_crop" else resize
    train_images, train_labels = generate_synthetic_arrays(
        num_classes=num_classes, count=train_size, image_size=native, seed=seed, part="train"
    )
    test_images, test_labels = generate_synthetic_arrays(
        num_classes=num_classes, count=test_size, image_size=native, seed=seed, part="test"
    )
    train, val = holdout_split(train_size, seed=SPLIT_SEED, train_fraction=TRAIN_FRACTION)
    test = list(range(train_size, train_size + test_size))
    notes = (
        f"synthetic: {1 - TRAIN_FRACTION:.0%} of the training images held out as validation "
        f"(np.random.seed({SPLIT_SEED}) draw of the released code); test = the generated test images"
    )
    splits = {
        scheme: SplitPlan(
            train=train, val=val, test=test, num_outputs=num_classes, seed=SPLIT_SEED, notes=notes
        )
        for scheme in ("paper", "clean")
    }
    width = len(str(max(train_size, test_size)))
    sources = [f"synthetic/train/{i:0{width}d}" for i in range(train_size)]
    sources += [f"synthetic/test/{i:0{width}d}" for i in range(test_size)]
    return write_prepared_dataset(
        out_dir,
        name=name,
        images=[*train_images, *test_images],
        labels=[*train_labels.tolist(), *test_labels.tolist()],
        sources=sources,
        class_names=[f"class{k:0{len(str(num_classes - 1))}d}" for k in range(num_classes)],
        augmentation=augmentation,
        image_size=image_size,
        input_upsample=input_upsample,
        archives=[
            {
                "generator": GENERATOR_NAME,
                "version": GENERATOR_VERSION,
                "seed": seed,
                "num_classes": num_classes,
                "train": train_size,
                "test": test_size,
                "image_size": native,
            }
        ],
        splits=splits,
        resize=resize,
        overwrite=overwrite,
    )
