"""Real-dataset preparation on miniature archives in the exact real formats (SPEC §2, §7),
downloads with resume and checksum verification, and the `autolora data` command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from archives import (
    build_caltech,
    build_cifar,
    build_cub,
    build_dogs,
    build_dtd,
    colour_of,
    identity_of,
    md5_of,
    serving,
)

from autolora import cli
from autolora.data.prepared import PreparedDataset
from autolora.data.sources import CATALOGUE, ArchiveFile, DatasetSource, prepare_dataset
from autolora.data.sources.download import Checksum, download
from autolora.errors import ChecksumError, DataError


def seed1_draw(n: int) -> tuple[list[int], list[int]]:
    state = np.random.get_state()
    try:
        np.random.seed(1)
        train = np.random.choice(n, int(n * 0.95), replace=False).tolist()
    finally:
        np.random.set_state(state)
    return train, sorted(set(range(n)) - set(train))


def local_source(key: str, paths: list[Path], url: str = "http://127.0.0.1:9/") -> DatasetSource:
    """The catalogue entry with the miniature archives' md5 in place of the published ones
    (none where none is published)."""
    published = {file.name: file.checksum for file in CATALOGUE[key].files}
    files = tuple(
        ArchiveFile(
            path.name,
            url + path.name,
            Checksum("md5", md5_of(path)) if published[path.name] else None,
        )
        for path in paths
    )
    return dataclasses.replace(CATALOGUE[key], files=files)


def prepare(key: str, paths: list[Path], tmp_path: Path) -> PreparedDataset:
    out = prepare_dataset(
        key, paths[0].parent, tmp_path / "prepared" / key, source=local_source(key, paths)
    )
    return PreparedDataset.open(out)


def check_images(dataset: PreparedDataset, numbers: list[int]) -> None:
    assert [identity_of(dataset.image(i)) for i in range(len(dataset))] == numbers


def check_draw(plan: dict[str, np.ndarray], train: list[int]) -> None:
    """Train / val are the seed-1 draw over the positions of the official training list."""
    drawn, rest = seed1_draw(len(train))
    assert plan["train"].tolist() == [train[p] for p in drawn]
    assert plan["val"].tolist() == [train[p] for p in rest]


# ---- CIFAR ---------------------------------------------------------------------------------------


def test_cifar10_prepared_index_by_index(tmp_path):
    archive = build_cifar(tmp_path / "src", "cifar10", per_batch=20)
    dataset = prepare("cifar10", [archive.path], tmp_path)
    assert len(dataset) == 120 and dataset.num_classes == 10
    expected = np.concatenate([archive.train_images, archive.test_images])
    for i in range(len(dataset)):
        np.testing.assert_array_equal(dataset.image(i), expected[i])
    assert dataset.labels.tolist() == archive.train_labels + archive.test_labels
    assert dataset.metadata["class_names"] == archive.class_names
    assert dataset.metadata["augmentation"] == "pad_crop"
    assert dataset.metadata["image_size"] == 32 and dataset.metadata["input_upsample"] == 224
    assert dataset.metadata["sources"] == [
        {"file": "cifar-10-python.tar.gz", "md5": md5_of(archive.path)}
    ]
    sources = [row["source"] for row in dataset.read_examples()]
    assert sources[21] == "cifar-10-batches-py/data_batch_2#1"
    for scheme in ("paper", "clean"):
        splits = dataset.split_indices(scheme)
        check_draw(splits, list(range(100)))
        assert splits["test"].tolist() == list(range(100, 120))
        info = dataset.split_info(scheme)
        assert info["counts"] == {"train": 95, "val": 5, "test": 20}
        assert info["paper_counts"] == {"train": 47_500, "val": 2_500, "test": 10_000}
        assert info["seed"] == 1 and info["num_outputs"] == 10


def test_cifar100_fine_labels(tmp_path):
    archive = build_cifar(tmp_path / "src", "cifar100", per_batch=30)
    dataset = prepare("cifar100", [archive.path], tmp_path)
    assert len(dataset) == 60 and dataset.num_classes == 100
    assert dataset.labels.tolist() == archive.train_labels + archive.test_labels
    np.testing.assert_array_equal(dataset.image(31), archive.test_images[1])
    check_draw(dataset.split_indices("paper"), list(range(30)))


# ---- JPEG datasets -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_classes_txt", [True, False])
def test_dtd_partition1_and_57_way_head(tmp_path, with_classes_txt):
    archive = build_dtd(tmp_path / "src", with_classes_txt=with_classes_txt)
    dataset = prepare("dtd", archive.paths, tmp_path)
    assert dataset.metadata["class_names"] == archive.class_names
    assert dataset.labels.tolist() == archive.labels
    assert [row["source"] for row in dataset.read_examples()] == archive.sources
    check_images(dataset, archive.numbers)
    # 3 wide x 4 high -> Resize(256): width 256, height int(256 * 4 / 3) = 341
    assert dataset.image(0).shape == (341, 256, 3)
    assert dataset.metadata["augmentation"] == "resized_crop"
    assert dataset.metadata["image_size"] == 224 and dataset.metadata["input_upsample"] is None
    paper = dataset.split_indices("paper")
    assert paper["train"].tolist() == archive.train  # train1 + val1
    assert paper["val"].tolist() == paper["test"].tolist() == archive.test  # test1
    assert dataset.num_outputs("paper") == 57
    clean = dataset.split_indices("clean")
    check_draw(clean, archive.train)
    assert clean["test"].tolist() == archive.test
    assert dataset.num_outputs("clean") == 3


def test_dogs_mat_lists(tmp_path):
    archive = build_dogs(tmp_path / "src")
    dataset = prepare("dogs", archive.paths, tmp_path)
    assert dataset.metadata["class_names"] == archive.class_names
    assert dataset.labels.tolist() == archive.labels  # 0-based
    assert [row["source"] for row in dataset.read_examples()] == archive.sources
    check_images(dataset, archive.numbers)
    for scheme in ("paper", "clean"):
        splits = dataset.split_indices(scheme)
        check_draw(splits, archive.train)
        assert splits["test"].tolist() == archive.test
    # no published checksum: the archives' sha256 is recorded
    assert [set(s) for s in dataset.metadata["sources"]] == [{"file", "sha256"}] * 2


def test_cub_index_files(tmp_path):
    archive = build_cub(tmp_path / "src")
    dataset = prepare("cub", archive.paths, tmp_path)
    assert dataset.metadata["class_names"] == archive.class_names
    assert dataset.labels.tolist() == archive.labels
    assert [row["source"] for row in dataset.read_examples()] == archive.sources
    check_images(dataset, archive.numbers)
    assert archive.train == [0, 2, 5, 6, 7, 9, 10, 11]
    splits = dataset.split_indices("paper")
    check_draw(splits, archive.train)
    assert splits["test"].tolist() == archive.test == [1, 3, 4, 8]
    assert dataset.split_info("paper")["paper_counts"] == {
        "train": 5_694,
        "val": 300,
        "test": 5_794,
    }


def test_caltech_windows_duplicates_and_clean_split(tmp_path):
    sizes = [155, 3, 160, 2, 152]  # classes larger and smaller than the 150 window
    archive = build_caltech(tmp_path / "src", sizes, gray=5)
    dataset = prepare("caltech256", archive.paths, tmp_path)
    assert len(dataset) == 472  # the stray non-image file is not an example
    assert dataset.metadata["class_names"] == archive.class_names
    assert dataset.labels.tolist() == archive.labels
    assert [row["source"] for row in dataset.read_examples()] == archive.sources
    numbers = [identity_of(dataset.image(i)) for i in range(len(dataset))]
    assert numbers[:5] == archive.numbers[:5] and numbers[6:] == archive.numbers[6:]
    gray = dataset.image(5)  # a grayscale JPEG, converted to RGB
    assert gray.shape == (256, 256, 3)
    assert np.ptp(gray.reshape(-1, 3).mean(0)) == 0
    assert abs(float(gray.mean()) - colour_of(5)[0]) <= 2
    # class starts 0, 155, 158, 318, 320; each window is 150 long and spills into the next class
    paper = dataset.split_indices("paper")
    expected_train = [
        *range(0, 150),
        *range(155, 305),
        *range(158, 308),
        *range(318, 468),
        *range(320, 470),
    ]
    assert paper["train"].tolist() == expected_train
    assert len(expected_train) == 5 * 150 and len(set(expected_train)) == 150 + 153 + 152
    expected_test = [*range(150, 155), *range(308, 318), 470, 471]
    assert paper["test"].tolist() == paper["val"].tolist() == expected_test
    assert dataset.split_info("paper")["duplicates"] == 5 * 150 - 455
    clean = dataset.split_indices("clean")
    assert sorted([*clean["train"], *clean["val"], *clean["test"]]) == list(range(472))
    labels = np.asarray(archive.labels)
    assert np.bincount(labels[clean["test"]]).tolist() == [31, 1, 32, 0, 30]
    assert dataset.num_outputs("clean") == dataset.num_outputs("paper") == 5


# ---- verification and failures -------------------------------------------------------------------


def test_corrupted_archive_is_refused_with_no_output(tmp_path):
    archive = build_cifar(tmp_path / "src", "cifar10", per_batch=4)
    source = local_source("cifar10", [archive.path])
    good_md5 = md5_of(archive.path)
    data = bytearray(archive.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.path.write_bytes(bytes(data))
    out_parent = tmp_path / "prepared"
    with pytest.raises(ChecksumError) as error:
        prepare_dataset("cifar10", archive.path.parent, out_parent / "cifar10", source=source)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and good_md5 in message
    assert md5_of(archive.path) in message and "delete" in message
    assert not out_parent.exists() or list(out_parent.iterdir()) == []


def test_missing_archive_names_the_download_command(tmp_path):
    with pytest.raises(DataError, match="autolora data download --dataset cub"):
        prepare_dataset("cub", tmp_path, tmp_path / "out")


@pytest.fixture
def server():
    with serving() as start:
        yield start


PAYLOAD = bytes(range(256)) * 1000


def md5(data: bytes) -> Checksum:
    import hashlib

    return Checksum("md5", hashlib.md5(data).hexdigest())


def test_interrupted_download_resumes_with_range(tmp_path, server):
    url, seen = server(PAYLOAD)
    dest = tmp_path / "archive.tar"
    half = len(PAYLOAD) // 2
    (tmp_path / "archive.tar.part").write_bytes(PAYLOAD[:half])
    download(url + "archive.tar", dest, checksum=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert seen == [f"bytes={half}-"]
    assert not (tmp_path / "archive.tar.part").exists()


def test_server_without_range_support_restarts(tmp_path, server):
    url, seen = server(PAYLOAD, ranges=False)
    dest = tmp_path / "archive.tar"
    (tmp_path / "archive.tar.part").write_bytes(b"x" * 100)  # garbage: must not survive
    download(url + "archive.tar", dest, checksum=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and seen == ["bytes=100-"]


def test_downloaded_file_with_wrong_checksum_is_not_kept(tmp_path, server):
    url, _ = server(PAYLOAD)
    dest = tmp_path / "archive.tar"
    wrong = Checksum("md5", "0" * 32)
    with pytest.raises(ChecksumError, match="0{32}") as error:
        download(url + "archive.tar", dest, checksum=wrong, progress=False)
    assert md5(PAYLOAD).hexdigest in str(error.value) and url in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_no_network_says_where_to_put_the_file(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "sub" / "images.tar"
    with pytest.raises(DataError, match="put it at .*images.tar"):
        download(f"http://127.0.0.1:{port}/images.tar", dest, progress=False)
    assert not dest.exists()


# ---- the `autolora data` command ----------------------------------------------------------------


def test_cli_download_and_prepare_print_paper_counts(tmp_path, server, monkeypatch, capsys):
    archive = build_cub(tmp_path / "built")
    url, _ = server(archive.paths[0].read_bytes())
    monkeypatch.setitem(CATALOGUE, "cub", local_source("cub", archive.paths, url))
    downloads = tmp_path / "downloads"
    assert cli.main(["data", "download", "--dataset", "cub", "--dest", str(downloads)]) == 0
    out = tmp_path / "prepared" / "cub"
    args = ["data", "prepare", "--dataset", "cub", "--source", str(downloads), "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "train 7 (paper 5,694) / val 1 (paper 300) / test 4 (paper 5,794)" in printed
    assert cli.main(args) == 2  # never rewritten
    assert "already exists" in capsys.readouterr().err


def test_cli_unknown_dataset_is_a_user_error(tmp_path, capsys):
    assert (
        cli.main(
            ["data", "prepare", "--dataset", "mnist", "--source", ".", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "synthesize" in capsys.readouterr().err


def test_cli_synthesize(tmp_path):
    out = tmp_path / "synth"
    args = ["data", "synthesize", "--out", str(out), "--num-classes", "3", "--train", "20"]
    assert cli.main([*args, "--test", "6", "--image-size", "8", "--seed", "5"]) == 0
    dataset = PreparedDataset.open(out)
    assert len(dataset) == 26 and dataset.name == "synth"


def test_download_with_staging_keeps_finished_archives_when_a_later_one_fails(
    tmp_path, server, monkeypatch
):
    import dataclasses
    import socket

    from autolora.data.sources import ArchiveFile, download_dataset

    images_url, images_seen = server(PAYLOAD)
    lists_payload = b"lists" * 1000
    lists_url, _ = server(lists_payload)
    with socket.socket() as sock:  # a port nobody listens on: the network drops mid-way
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    dogs = CATALOGUE["dogs"]
    files = (
        ArchiveFile("images.tar", images_url + "images.tar", None),
        ArchiveFile("lists.tar", dead_url + "lists.tar", None),
    )
    monkeypatch.setitem(CATALOGUE, "dogs", dataclasses.replace(dogs, files=files))
    dest, staging = tmp_path / "downloads" / "dogs", tmp_path / "staging"
    with pytest.raises(DataError, match="lists.tar"):
        download_dataset("dogs", dest, staging_dir=staging, progress=False)
    assert not dest.exists()  # the workflow's output folder stays absent after a failure
    assert (staging / "images.tar").read_bytes() == PAYLOAD
    fixed = (files[0], ArchiveFile("lists.tar", lists_url + "lists.tar", None))
    monkeypatch.setitem(CATALOGUE, "dogs", dataclasses.replace(dogs, files=fixed))
    paths = download_dataset("dogs", dest, staging_dir=staging, progress=False)
    assert [p.name for p in paths] == ["images.tar", "lists.tar"]
    assert (dest / "images.tar").read_bytes() == PAYLOAD
    assert (dest / "lists.tar").read_bytes() == lists_payload
    assert len(images_seen) == 1  # fetched once: the retry reused the staged archive
    assert list(staging.iterdir()) == []


def test_archives_without_a_published_checksum_are_pinned_on_first_use(
    tmp_path, server, monkeypatch
):
    """Stanford Dogs publishes no checksum: the first download pins each archive's sha256 in the
    lock file, a later download of other bytes is refused, and so is a changed archive placed by
    hand for the preparation."""
    import hashlib

    from autolora.data.sources import download_dataset, verify_archives
    from autolora.pins import read_lock

    lists = b"lists" * 1000
    images_url, _ = server(PAYLOAD)
    lists_url, _ = server(lists)
    dogs = dataclasses.replace(
        CATALOGUE["dogs"],
        files=(
            ArchiveFile("images.tar", images_url + "images.tar", None),
            ArchiveFile("lists.tar", lists_url + "lists.tar", None),
        ),
    )
    monkeypatch.setitem(CATALOGUE, "dogs", dogs)
    lock = tmp_path / "weights.lock"
    first = tmp_path / "first"
    download_dataset("dogs", first, progress=False, lock_path=lock)
    pinned = hashlib.sha256(PAYLOAD).hexdigest()
    assert read_lock(lock) == {
        "dogs/images.tar": pinned,
        "dogs/lists.tar": hashlib.sha256(lists).hexdigest(),
    }

    other_url, _ = server(PAYLOAD[::-1])  # the host now serves other bytes under the same name
    changed = (ArchiveFile("images.tar", other_url + "images.tar", None), dogs.files[1])
    monkeypatch.setitem(CATALOGUE, "dogs", dataclasses.replace(dogs, files=changed))
    with pytest.raises(ChecksumError, match=f"expected {pinned} .*delete its line from"):
        download_dataset("dogs", tmp_path / "second", progress=False, lock_path=lock)

    verify_archives(dogs, first, lock)  # the pinned archives placed by hand: accepted
    (first / "images.tar").write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumError, match="dogs/images.tar"):
        verify_archives(dogs, first, lock)
