"""The synthetic dataset generator: deterministic, balanced, learnable, in the prepared format."""

from __future__ import annotations

import numpy as np
import pytest

from autolora.data.prepared import PreparedDataset
from autolora.data.synthetic import generate_synthetic_arrays, write_synthetic_dataset
from autolora.errors import DataError


def test_arrays_are_deterministic_by_seed():
    first = generate_synthetic_arrays(num_classes=4, count=300, image_size=16, seed=5)
    again = generate_synthetic_arrays(num_classes=4, count=300, image_size=16, seed=5)
    other = generate_synthetic_arrays(num_classes=4, count=300, image_size=16, seed=6)
    test = generate_synthetic_arrays(num_classes=4, count=300, image_size=16, seed=5, part="test")
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], test[0])
    images, labels = first
    assert images.shape == (300, 16, 16, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [75, 75, 75, 75]
    assert images.std() > 10  # not a flat image


def test_nearest_centroid_beats_chance_by_far():
    train_x, train_y = generate_synthetic_arrays(num_classes=10, count=500, image_size=16, seed=11)
    test_x, test_y = generate_synthetic_arrays(
        num_classes=10, count=200, image_size=16, seed=11, part="test"
    )

    def features(images):  # mean colour: a simple, shift-invariant summary
        return images.reshape(len(images), -1, 3).mean(axis=1)

    centroids = np.stack([features(train_x)[train_y == k].mean(axis=0) for k in range(10)])
    distances = ((features(test_x)[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == test_y).mean()
    assert accuracy > 0.5  # chance is 0.1


def test_written_dataset(tmp_path):
    out = write_synthetic_dataset(
        tmp_path / "synth",
        name="synth",
        num_classes=3,
        train_size=40,
        test_size=12,
        image_size=8,
        seed=2,
    )
    dataset = PreparedDataset.open(out)
    dataset.verify(images=True)
    assert dataset.num_classes == 3 and len(dataset) == 52
    assert dataset.metadata["augmentation"] == "pad_crop" and dataset.metadata["pad"] == 4
    assert dataset.metadata["sources"][0]["generator"] == "autolora.synthetic"
    train_images, _ = generate_synthetic_arrays(num_classes=3, count=40, image_size=8, seed=2)
    test_images, test_labels = generate_synthetic_arrays(
        num_classes=3, count=12, image_size=8, seed=2, part="test"
    )
    np.random.seed(1)  # the released code's split, computed independently
    expected_train = np.random.choice(40, 38, replace=False).tolist()
    for scheme in ("paper", "clean"):
        splits = {name: dataset.split(scheme, name) for name in ("train", "val", "test")}
        assert splits["train"].indices.tolist() == expected_train
        assert splits["val"].indices.tolist() == sorted(set(range(40)) - set(expected_train))
        assert splits["test"].indices.tolist() == list(range(40, 52))
        assert dataset.split_info(scheme)["counts"] == {"train": 38, "val": 2, "test": 12}
        assert dataset.num_outputs(scheme) == 3
    np.testing.assert_array_equal(dataset.image(5), train_images[5])
    np.testing.assert_array_equal(splits["test"].image(3), test_images[3])
    assert splits["test"].labels.tolist() == test_labels.tolist()


def test_same_seed_writes_the_same_hashes(tmp_path):
    options = {"name": "s", "num_classes": 4, "train_size": 30, "test_size": 10, "image_size": 8}
    first = PreparedDataset.open(write_synthetic_dataset(tmp_path / "a", seed=3, **options))
    second = PreparedDataset.open(write_synthetic_dataset(tmp_path / "b", seed=3, **options))
    third = PreparedDataset.open(write_synthetic_dataset(tmp_path / "c", seed=4, **options))
    assert first.metadata["files"] == second.metadata["files"]
    hashes = [row["sha256"] for row in first.read_examples()]
    assert hashes == [row["sha256"] for row in second.read_examples()]
    assert hashes != [row["sha256"] for row in third.read_examples()]


def test_resized_crop_variant_generates_at_the_resize(tmp_path):
    out = write_synthetic_dataset(
        tmp_path / "big", name="big", num_classes=2, train_size=4, test_size=2, image_size=56,
        seed=0, augmentation="resized_crop",
    )  # fmt: skip
    dataset = PreparedDataset.open(out)
    assert (dataset.metadata["image_size"], dataset.metadata["resize"]) == (56, 64)
    assert dataset.image(0).shape == (64, 64, 3)


def test_invalid_sizes():
    with pytest.raises(DataError, match="num_classes >= 2"):
        generate_synthetic_arrays(num_classes=1, count=10, image_size=8, seed=0)
