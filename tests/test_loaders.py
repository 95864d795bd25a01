"""SPEC §2 transforms and the deterministic loaders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T

from autolora.data.loaders import make_loader
from autolora.data.prepared import PreparedDataset, SplitPlan, write_prepared_dataset
from autolora.data.transforms import (
    TransformSpec,
    eval_transform,
    random_resized_crop_box,
    train_transform,
)

PAD_CROP = TransformSpec("pad_crop", image_size=32, pad=4)
RESIZED_CROP = TransformSpec("resized_crop", image_size=224, resize=256)


def uint8_image(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def prepared(tmp_path, *, sizes, augmentation, image_size, name="toy"):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    n = len(images)
    return PreparedDataset.open(
        write_prepared_dataset(
            tmp_path / name,
            name=name,
            images=images,
            labels=[i % 3 for i in range(n)],
            sources=[f"{i}" for i in range(n)],
            class_names=["a", "b", "c"],
            augmentation=augmentation,
            image_size=image_size,
            input_upsample=None,
            archives=[],
            splits={
                "paper": SplitPlan(
                    train=list(range(n)), val=[0], test=list(range(n)), num_outputs=3
                )
            },
        )
    )


@pytest.fixture
def cifar_like(tmp_path):
    return prepared(tmp_path, sizes=[(32, 32)] * 20, augmentation="pad_crop", image_size=32)


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_pad_crop_train_is_a_shifted_window_of_the_padded_image():
    image = uint8_image(3, 32, 32)
    padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
    padded[:, 4:36, 4:36] = image
    flips = 0
    for seed in range(20):
        out = train_transform(image, PAD_CROP, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 32, 32)
        windows = set()
        for top, left in itertools.product(range(9), range(9)):
            window = padded[:, top : top + 32, left : left + 32]
            windows |= {(top, left, False)} if torch.equal(out, window) else set()
            windows |= {(top, left, True)} if torch.equal(out, window.flip(-1)) else set()
        assert windows, f"seed {seed}: output is no crop of the padded image"
        flips += any(flip for _, _, flip in windows)
    assert 0 < flips < 20
    assert torch.equal(eval_transform(image, PAD_CROP), image)


@pytest.mark.parametrize("spec", [PAD_CROP, RESIZED_CROP], ids=["pad_crop", "resized_crop"])
def test_train_transform_equals_torchvision_with_the_same_seed(spec):
    if spec.augmentation == "pad_crop":
        image = uint8_image(3, 32, 32)
        reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    else:
        image = uint8_image(3, 300, 400)
        reference = T.Compose([T.Resize(256), T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    for seed in range(6):
        torch.manual_seed(seed)
        expected = reference(image)
        assert torch.equal(
            train_transform(image, spec, torch.Generator().manual_seed(seed)), expected
        )


def test_random_resized_crop_box_matches_torchvision_params():
    # 10 x 500 admits no crop of the drawn shapes, so it takes the centre-crop fallback
    for height, width in [(120, 500), (300, 200), (10, 500)]:
        image = torch.zeros(3, height, width)
        for seed in range(40):
            torch.manual_seed(seed)
            expected = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            generator = torch.Generator().manual_seed(seed)
            assert random_resized_crop_box(height, width, generator) == expected


def test_resized_crop_eval_is_resize_then_center_crop():
    image = uint8_image(3, 300, 400)
    out = eval_transform(image, RESIZED_CROP)
    # By hand: the shorter edge 300 -> 256, so 400 -> int(256 * 400 / 300) = 341; the 224 crop
    # starts at round((256 - 224) / 2) = 16 and round((341 - 224) / 2) = round(58.5) = 58.
    resized = T.functional.resize(image, [256, 341], antialias=True)
    assert torch.equal(out, resized[:, 16:240, 58:282])
    reference = T.Compose([T.Resize(256), T.CenterCrop(224)])
    for shape in [(3, 100, 120), (3, 500, 256), (3, 257, 999)]:
        image = uint8_image(*shape)
        assert torch.equal(eval_transform(image, RESIZED_CROP), reference(image))


def test_resized_crop_train_sizes(tmp_path):
    dataset = prepared(
        tmp_path,
        sizes=[(300, 400), (100, 80), (256, 256), (500, 200)],
        augmentation="resized_crop",
        image_size=224,
    )
    for train in (True, False):
        x, y = next(
            iter(
                make_loader(
                    dataset.split("paper", "train"), train=train, seed=0, epoch=0, batch_size=4
                )
            )
        )
        assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_eval_loader_serves_the_images_in_order(cifar_like):
    view = cifar_like.split("paper", "test")
    loader = make_loader(view, train=False, seed=0, epoch=0, batch_size=8)
    assert len(loader) == 3
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    expected = np.stack([view.image(i) for i in range(len(view))]).transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-7)
    assert y.tolist() == view.labels.tolist()


def test_train_loader_is_deterministic_and_varies_by_epoch(cifar_like):
    view = cifar_like.split("paper", "train")
    options = {"train": True, "seed": 3, "batch_size": 8}
    first = batches(make_loader(view, epoch=0, **options))
    assert [x.shape[0] for x, _ in first] == [8, 8, 4]
    assert all(x.min() >= 0 and x.max() <= 1 for x, _ in first)
    assert_same_batches(first, batches(make_loader(view, epoch=0, **options)))
    assert_same_batches(first, batches(make_loader(view, epoch=0, num_workers=2, **options)))
    other_epoch = batches(make_loader(view, epoch=1, **options))
    assert not torch.equal(first[0][0], other_epoch[0][0])
    other_seed = batches(make_loader(view, epoch=0, **{**options, "seed": 4}))
    assert not torch.equal(first[0][0], other_seed[0][0])
    # the order is a permutation of the split
    labels = torch.cat([y for _, y in first]).sort().values
    assert labels.tolist() == sorted(view.labels.tolist())


def test_streams_and_shuffle_options(cifar_like):
    view = cifar_like.split("paper", "train")
    train = make_loader(view, train=True, seed=0, epoch=0, batch_size=20, shuffle=False)
    lam = make_loader(
        view, train=True, seed=0, epoch=0, batch_size=20, shuffle=False, stream="lambda"
    )
    (x_train, y_train), (x_lambda, y_lambda) = next(iter(train)), next(iter(lam))
    assert torch.equal(y_train, y_lambda)  # same order (no shuffle) ...
    assert not torch.equal(x_train, x_lambda)  # ... but independent augmentation
    dropping = make_loader(view, train=True, seed=0, epoch=0, batch_size=8, drop_last=True)
    assert len(dropping) == 2 and all(x.shape[0] == 8 for x, _ in dropping)


def test_start_batch_resumes_inside_an_epoch(cifar_like):
    view = cifar_like.split("paper", "train")
    full = batches(make_loader(view, train=True, seed=1, epoch=2, batch_size=6))
    resumed = batches(make_loader(view, train=True, seed=1, epoch=2, batch_size=6, start_batch=2))
    assert_same_batches(full[2:], resumed)
