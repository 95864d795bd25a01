"""The prepared-dataset format: write -> open round trip, checksums, atomicity, errors."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from autolora.data.prepared import PreparedDataset, SplitPlan, holdout_split, write_prepared_dataset
from autolora.errors import ChecksumError, DataError
from autolora.records import seal

SIZES = [(5, 7), (32, 32), (3, 11), (9, 4), (6, 6), (10, 2)]


def make_images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


LABELS = [0, 2, 1, 2, 0, 1]
PLAN = SplitPlan(
    train=[3, 0, 3, 5],  # example 3 twice, as Caltech-256's overlapping windows do
    val=[1],
    test=[2, 4],
    num_outputs=5,  # more outputs than classes, as DTD's 57-way head under `paper`
    seed=1,
    paper_counts={"train": 4, "test": 2},
    notes="toy",
)


def write(out_dir, images=None, **changes):
    arguments = {
        "name": "toy",
        "images": make_images() if images is None else images,
        "labels": LABELS,
        "sources": [f"toy/{i}.png" for i in range(len(LABELS))],
        "class_names": ["a", "b", "c"],
        "augmentation": "resized_crop",
        "image_size": 224,
        "input_upsample": None,
        "archives": [{"file": "toy.tar", "md5": "0" * 32}],
        "splits": {
            "paper": PLAN,
            "clean": SplitPlan(train=[0, 1, 2], val=[3], test=[4, 5], num_outputs=3),
        },
    }
    arguments.update(changes)
    return write_prepared_dataset(out_dir, **arguments)


@pytest.fixture
def toy(tmp_path):
    return write(tmp_path / "toy")


def test_round_trip(toy):
    images = make_images()
    dataset = PreparedDataset.open(toy)
    assert len(dataset) == 6 and dataset.num_classes == 3 and dataset.name == "toy"
    assert dataset.schemes == ["clean", "paper"]
    metadata = dataset.metadata
    assert metadata["format"] == 2 and metadata["augmentation"] == "resized_crop"
    assert (metadata["image_size"], metadata["resize"], metadata["pad"]) == (224, 256, None)
    assert metadata["sources"] == [{"file": "toy.tar", "md5": "0" * 32}]
    for example, image in enumerate(images):
        np.testing.assert_array_equal(dataset.image(example), image)
    train = dataset.split("paper", "train")
    assert train.indices.tolist() == [3, 0, 3, 5]
    assert train.labels.tolist() == [LABELS[3], LABELS[0], LABELS[3], LABELS[5]]
    np.testing.assert_array_equal(train.image(2), images[3])
    tensor, label = train[3]
    assert tuple(tensor.shape) == (3, 10, 2) and label == LABELS[5]
    assert tensor.permute(1, 2, 0).numpy().tobytes() == images[5].tobytes()
    info = dataset.split_info("paper")
    assert info["counts"] == {"train": 4, "val": 1, "test": 2}
    assert (
        info["num_outputs"] == 5
        and info["seed"] == 1
        and info["paper_counts"] == {"train": 4, "test": 2}
    )
    assert dataset.num_outputs("clean") == 3
    assert dataset.split("clean", "test").indices.tolist() == [4, 5]


def test_manifests_record_independent_hashes(toy):
    images = make_images()
    with open(toy / "examples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sha256"] for row in rows] == [
        hashlib.sha256(i.tobytes()).hexdigest() for i in images
    ]
    assert [row["source"] for row in rows] == [f"toy/{i}.png" for i in range(6)]
    with open(toy / "splits" / "paper.csv", newline="") as handle:
        split_rows = [
            (r["split"], int(r["position"]), int(r["example"])) for r in csv.DictReader(handle)
        ]
    assert ("train", 2, 3) in split_rows and len(split_rows) == 7
    files = json.loads((toy / "dataset.json").read_text())["files"]
    assert set(files) == {
        "images.u8", "images_index.npy", "labels.npy", "examples.csv",
        "splits/paper.csv", "splits/paper.json", "splits/clean.csv", "splits/clean.json",
    }  # fmt: skip
    for name, digest in files.items():
        assert hashlib.sha256((toy / name).read_bytes()).hexdigest() == digest
    assert (toy / "images.u8").stat().st_size == sum(h * w * 3 for h, w in SIZES)


def test_verify_detects_a_changed_byte(toy):
    dataset = PreparedDataset.open(toy)
    dataset.verify(images=True)
    data = bytearray((toy / "images.u8").read_bytes())
    data[17] ^= 0xFF
    (toy / "images.u8").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"images\.u8.*rebuild"):
        PreparedDataset.open(toy).verify()


def test_verify_images_detects_a_consistently_rewritten_image(toy):
    metadata = json.loads((toy / "dataset.json").read_text())
    data = bytearray((toy / "images.u8").read_bytes())
    data[0] ^= 0xFF
    (toy / "images.u8").write_bytes(bytes(data))
    metadata["files"]["images.u8"] = hashlib.sha256(bytes(data)).hexdigest()
    (toy / "dataset.json").write_text(json.dumps(seal(metadata)))  # re-sealed: consistent
    dataset = PreparedDataset.open(toy)
    dataset.verify()
    with pytest.raises(ChecksumError, match=r"image 0 \(toy/0\.png\)"):
        dataset.verify(images=True)


@pytest.mark.parametrize(
    ("old", "new"),
    [('"pad_crop"', '"resized_crop"'), ('"num_classes": 3', '"num_classes": 4')],
)
def test_an_edited_dataset_json_is_refused(tmp_path, old, new):
    """dataset.json's own fields (augmentation, padding, classes, ...) change what a cell trains
    on; its seal makes a hand edit fail where the dataset is opened."""
    toy = write(tmp_path / "toy", augmentation="pad_crop", image_size=32)
    path = toy / "dataset.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(DataError, match=r"dataset\.json: its content hashes to \w+, not to its "):
        PreparedDataset.open(toy)
    metadata = json.loads(text)
    del metadata["record_sha256"]
    path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=r"no record_sha256.*rebuild it"):
        PreparedDataset.open(toy)


def test_missing_file_names_it_and_the_fix(toy):
    (toy / "splits" / "clean.csv").unlink()
    with pytest.raises(
        DataError, match=r"file splits/clean\.csv is missing.*autolora data prepare --dataset toy"
    ):
        PreparedDataset.open(toy)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="dataset.json is missing"):
        PreparedDataset.open(tmp_path / "nothing")


def test_interrupted_write_leaves_nothing(tmp_path):
    def images():
        yield from make_images()[:3]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write(tmp_path / "toy", images=images())
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_kept_unless_overwrite(toy):
    before = (toy / "dataset.json").read_bytes()
    with pytest.raises(DataError, match="already exists; delete it"):
        write(toy)
    assert (toy / "dataset.json").read_bytes() == before
    write(toy, images=make_images(seed=1), overwrite=True)
    np.testing.assert_array_equal(PreparedDataset.open(toy).image(0), make_images(seed=1)[0])
    assert sorted(p.name for p in toy.parent.iterdir()) == ["toy"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"labels": [0, 2, 1, 3, 0, 1]}, "label 3 outside 0..2"),
        ({"sources": ["a"]}, "1 sources for 6 labels"),
        ({"augmentation": "flip"}, "allowed: pad_crop, resized_crop"),
        (
            {"splits": {"paper": SplitPlan(train=[0, 6], val=[], test=[1], num_outputs=3)}},
            "train index 6",
        ),
        (
            {"splits": {"paper": SplitPlan(train=[0], val=[], test=[1], num_outputs=2)}},
            "num_outputs 2",
        ),
    ],
)
def test_invalid_inputs(tmp_path, changes, fragment):
    with pytest.raises(DataError, match=fragment):
        write(tmp_path / "toy", **changes)
    assert not (tmp_path / "toy").exists()


def test_too_few_images(tmp_path):
    with pytest.raises(DataError, match="5 images for 6 labels"):
        write(tmp_path / "toy", images=make_images()[:5])
    assert list(tmp_path.iterdir()) == []


def test_bad_image_array(tmp_path):
    images = make_images()
    images[2] = images[2].astype(np.float32)
    with pytest.raises(DataError, match="image 2: expected a uint8"):
        write(tmp_path / "toy", images=images)


def test_unknown_scheme(toy):
    with pytest.raises(DataError, match="no split scheme 'other'; it has: clean, paper"):
        PreparedDataset.open(toy).split("other", "train")


def test_holdout_split_reproduces_the_released_draw():
    np.random.seed(1)  # the released code's global-state form, an independent path
    expected_train = np.random.choice(1000, int(1000 * 0.95), replace=False)
    train, val = holdout_split(1000)
    assert train == expected_train.tolist()
    assert val == sorted(set(range(1000)) - set(train))
    assert len(train) == 950 and len(val) == 50
