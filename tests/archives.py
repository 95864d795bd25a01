"""Build miniature dataset archives in the exact formats of the real ones (SPEC §2), in a folder.

Every image of the JPEG datasets is a solid colour that encodes a unique number (``colour_of``), so
a test can tell from the prepared pixels alone which archive file ended up at which example
(``identity_of``). Each builder returns the archive paths and the ground truth the test checks
against, written down from how the archive was built, not from the code under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def colour_of(number: int) -> tuple[int, int, int]:
    """A solid RGB colour encoding ``number`` (0..4095): channels 16 apart survive JPEG."""
    return (16 * (number % 16) + 8, 16 * ((number // 16) % 16) + 8, 16 * (number // 256) + 8)


def identity_of(image: np.ndarray) -> int:
    """The number a prepared image's colour encodes."""
    r, g, b = (int(round((float(image[..., c].mean()) - 8) / 16)) for c in range(3))
    return r + 16 * g + 256 * b


def jpeg_bytes(number: int, size: tuple[int, int] = (3, 3), gray: bool = False) -> bytes:
    """A JPEG of ``size`` (width, height); grayscale images use the red channel's level."""
    colour = colour_of(number)
    image = Image.new("L", size, colour[0]) if gray else Image.new("RGB", size, colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---- CIFAR ---------------------------------------------------------------------------------------


@dataclass
class CifarArchive:
    path: Path
    train_images: np.ndarray  # N x 32 x 32 x 3, in batch order
    train_labels: list[int]
    test_images: np.ndarray
    test_labels: list[int]
    class_names: list[str]


def _pickle_py2(obj: dict) -> bytes:
    # The real batches are Python 2 pickles (protocol 2) whose keys load as bytes and whose arrays
    # name numpy's pre-2.0 module path.
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_batch(images: np.ndarray, labels: list[int], label_key: bytes, title: bytes) -> bytes:
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane
    return _pickle_py2(
        {
            b"batch_label": title,
            label_key: labels,
            b"data": planar,
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
        }
    )


def build_cifar(folder: Path, kind: str, *, per_batch: int = 20, seed: int = 0) -> CifarArchive:
    """``cifar-10-python.tar.gz`` (5 train batches + test batch) or ``cifar-100-python.tar.gz``."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if kind == "cifar10" else 100
    train_batches = 5 if kind == "cifar10" else 1
    n_train, n_test = per_batch * train_batches, per_batch
    train_images = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    test_images = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    train_labels = [int(v) for v in rng.integers(0, num_classes, n_train)]
    test_labels = [int(v) for v in rng.integers(0, num_classes, n_test)]
    names = [f"name{k}" for k in range(num_classes)]
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "cifar10":
        path = folder / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for b in range(5):
                rows = slice(b * per_batch, (b + 1) * per_batch)
                add_bytes(
                    tar,
                    f"cifar-10-batches-py/data_batch_{b + 1}",
                    _cifar_batch(
                        train_images[rows],
                        train_labels[rows],
                        b"labels",
                        f"training batch {b + 1} of 5".encode(),
                    ),
                )
            add_bytes(
                tar,
                "cifar-10-batches-py/test_batch",
                _cifar_batch(test_images, test_labels, b"labels", b"testing batch 1 of 1"),
            )
            meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch}
            add_bytes(tar, "cifar-10-batches-py/batches.meta", _pickle_py2(meta))
            add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    else:
        path = folder / "cifar-100-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for part, images, labels in (
                ("train", train_images, train_labels),
                ("test", test_images, test_labels),
            ):
                batch = _cifar_batch(images, labels, b"fine_labels", part.encode())
                loaded = pickle.loads(batch, encoding="bytes")
                loaded[b"coarse_labels"] = [label // 5 for label in labels]
                add_bytes(tar, f"cifar-100-python/{part}", _pickle_py2(loaded))
            meta = {
                b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
            }
            add_bytes(tar, "cifar-100-python/meta", _pickle_py2(meta))
    return CifarArchive(path, train_images, train_labels, test_images, test_labels, names)


# ---- JPEG datasets ----------------------------------------------------------------------------


@dataclass
class ImageArchive:
    """Archive paths and, per example in the order the preparer must use: source path, label,
    number (colour identity)."""

    paths: list[Path]
    sources: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    train: list[int] = field(default_factory=list)  # example indices of the official train set
    test: list[int] = field(default_factory=list)


DTD_CLASSES = ["banded", "zigzagged", "cracked"]  # classes.txt order; sorted differs


def build_dtd(folder: Path, *, with_classes_txt: bool = True) -> ImageArchive:
    """``dtd-r1.0.1.tar.gz``: dtd/images/<class>/<class>_NNNN.jpg, dtd/labels/{train,val,test}1.txt
    (plus partition 2 files that must be ignored). Per class: 2 train, 1 val, 1 test images."""
    classes = DTD_CLASSES if with_classes_txt else sorted(DTD_CLASSES)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    number_of: dict[str, int] = {}
    for c, name in enumerate(DTD_CLASSES):
        files = [f"{name}/{name}_{k:04d}.jpg" for k in range(1, 5)]
        for k, file in enumerate(files):
            number_of[file] = 10 * c + k
        lists["train"] += files[:2]
        lists["val"] += files[2:3]
        lists["test"] += files[3:]
    archive = ImageArchive(paths=[folder / "dtd-r1.0.1.tar.gz"], class_names=list(classes))
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive.paths[0], "w:gz") as tar:
        for file, number in sorted(number_of.items()):
            add_bytes(tar, f"dtd/images/{file}", jpeg_bytes(number, size=(3, 4)))
        for split, files in lists.items():
            add_bytes(tar, f"dtd/labels/{split}1.txt", "".join(f + "\n" for f in files).encode())
            add_bytes(
                tar, f"dtd/labels/{split}2.txt", "".join(f + "\n" for f in files[::-1]).encode()
            )
        if with_classes_txt:
            add_bytes(tar, "dtd/labels/classes.txt", "".join(c + "\n" for c in classes).encode())
        add_bytes(tar, "dtd/imdb/imdb.mat", b"not used")
    for split in ("train", "val", "test"):
        for file in lists[split]:
            index = len(archive.sources)
            (archive.test if split == "test" else archive.train).append(index)
            archive.sources.append(f"dtd/images/{file}")
            archive.labels.append(classes.index(file.split("/")[0]))
            archive.numbers.append(number_of[file])
    return archive


DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _mat_list(files: list[str], labels: list[int]) -> dict:
    """The variables of Stanford Dogs' train_list.mat / test_list.mat (cell arrays, 1-based)."""
    file_list = np.empty((len(files), 1), dtype=object)
    annotations = np.empty((len(files), 1), dtype=object)
    for i, file in enumerate(files):
        file_list[i, 0] = np.array([file])
        annotations[i, 0] = np.array([file.removesuffix(".jpg")])
    return {
        "file_list": file_list,
        "annotation_list": annotations,
        "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1),
    }


def build_dogs(folder: Path) -> ImageArchive:
    """``images.tar`` (Images/<wnid>-<name>/<wnid>_<n>.jpg) and ``lists.tar`` (.mat lists).
    Per class: 3 train, 2 test images."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    archive = ImageArchive(paths=[folder / "images.tar", folder / "lists.tar"])
    archive.class_names = list(DOG_FOLDERS)
    train_files, train_labels, test_files, test_labels = [], [], [], []
    number_of: dict[str, int] = {}
    for c, name in enumerate(DOG_FOLDERS):
        wnid = name.split("-")[0]
        files = [f"{name}/{wnid}_{1000 + 7 * k}.jpg" for k in range(5)]
        for k, file in enumerate(files):
            number_of[file] = 100 + 10 * c + k
        train_files += files[:3]
        train_labels += [c + 1] * 3
        test_files += files[3:]
        test_labels += [c + 1] * 2
    with tarfile.open(archive.paths[0], "w") as tar:
        for file, number in sorted(number_of.items()):
            add_bytes(tar, f"Images/{file}", jpeg_bytes(number))
    with tarfile.open(archive.paths[1], "w") as tar:
        for mat_name, mat in (
            ("train_list.mat", _mat_list(train_files, train_labels)),
            ("test_list.mat", _mat_list(test_files, test_labels)),
            ("file_list.mat", _mat_list(train_files + test_files, train_labels + test_labels)),
        ):
            buffer = io.BytesIO()
            savemat(buffer, mat)
            add_bytes(tar, mat_name, buffer.getvalue())
    for files, labels, split in (
        (train_files, train_labels, archive.train),
        (test_files, test_labels, archive.test),
    ):
        for file, label in zip(files, labels, strict=True):
            split.append(len(archive.sources))
            archive.sources.append(f"Images/{file}")
            archive.labels.append(label - 1)
            archive.numbers.append(number_of[file])
    return archive


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def build_cub(folder: Path) -> ImageArchive:
    """``CUB_200_2011.tgz``: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt
    (ids and labels 1-based) and images/<class>/<file>.jpg. 4 images per class, is_train 1,0,1,0
    for the first class, 0,1,1,1 for the others."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = ImageArchive(paths=[folder / "CUB_200_2011.tgz"], class_names=list(CUB_CLASSES))
    images_txt, labels_txt, split_txt = [], [], []
    flags_by_class = [(1, 0, 1, 0), (0, 1, 1, 1), (0, 1, 1, 1)]
    with tarfile.open(archive.paths[0], "w:gz") as tar:
        image_id = 0
        for c, name in enumerate(CUB_CLASSES):
            bird = name.split(".")[1]
            for k, is_train in enumerate(flags_by_class[c]):
                image_id += 1
                file = f"{name}/{bird}_{k:04d}_{900 + image_id}.jpg"
                add_bytes(tar, f"CUB_200_2011/images/{file}", jpeg_bytes(200 + image_id))
                images_txt.append(f"{image_id} {file}")
                labels_txt.append(f"{image_id} {c + 1}")
                split_txt.append(f"{image_id} {is_train}")
                index = len(archive.sources)
                (archive.train if is_train else archive.test).append(index)
                archive.sources.append(f"CUB_200_2011/images/{file}")
                archive.labels.append(c)
                archive.numbers.append(200 + image_id)
        for name, lines in (
            ("images.txt", images_txt),
            ("image_class_labels.txt", labels_txt),
            ("train_test_split.txt", split_txt),
            ("classes.txt", [f"{c + 1} {n}" for c, n in enumerate(CUB_CLASSES)]),
            ("bounding_boxes.txt", [f"{i + 1} 0 0 3 3" for i in range(len(images_txt))]),
        ):
            add_bytes(tar, f"CUB_200_2011/{name}", "".join(line + "\n" for line in lines).encode())
        add_bytes(tar, "attributes.txt", b"1 has_bill_shape::curved\n")
    return archive


def build_caltech(folder: Path, sizes: list[int], *, gray: int | None = None) -> ImageArchive:
    """``256_ObjectCategories.tar``: folders ``001.<name>`` ... with ``NNN_MMMM.jpg`` files
    (written in shuffled order, so only sorting gives the expected order), a stray non-image file,
    and example ``gray`` stored as a grayscale JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = ImageArchive(paths=[folder / "256_ObjectCategories.tar"])
    members: list[tuple[str, bytes]] = []
    for c, size in enumerate(sizes):
        name = f"{c + 1:03d}.class{c}" if c < len(sizes) - 1 else f"{c + 1:03d}.clutter"
        archive.class_names.append(name)
        for k in range(size):
            number = len(archive.sources)
            file = f"{name}/{c + 1:03d}_{k + 1:04d}.jpg"
            members.append((file, jpeg_bytes(number, gray=number == gray)))
            archive.sources.append(f"256_ObjectCategories/{file}")
            archive.labels.append(c)
            archive.numbers.append(number)
    members.append((f"{archive.class_names[0]}/RENAME2", b"stray file"))
    order = np.random.default_rng(0).permutation(len(members))
    with tarfile.open(archive.paths[0], "w") as tar:
        for i in order:
            add_bytes(tar, f"256_ObjectCategories/{members[i][0]}", members[i][1])
    return archive


# ---- a local download server --------------------------------------------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` at any path; honours ``Range: bytes=N-`` when ``ranges`` is on and
    records every request's Range header in ``seen``."""

    payload = b""
    ranges = True
    seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        requested = self.headers.get("Range")
        type(self).seen.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested and self.ranges else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            total = len(self.payload)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving() -> Iterator[Callable[..., tuple[str, list]]]:
    """Yield ``start(payload, ranges=True) -> (base URL, seen Range headers)``; servers stop on
    exit."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(payload: bytes, *, ranges: bool = True) -> tuple[str, list]:
        handler = type(
            "Handler", (RangeHandler,), {"payload": payload, "ranges": ranges, "seen": []}
        )
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/", handler.seen

    try:
        yield start
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
