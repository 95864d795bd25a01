"""Deterministic batches of a prepared split with the SPEC §2 transforms.

All randomness is derived from (seed, epoch, stream, position): the shuffle order from
(seed, epoch, stream, "order"), each sample's augmentation from its position in the split. Batches
therefore do not depend on ``num_workers`` and an epoch can be replayed (or resumed at a batch)
exactly. Use distinct ``stream`` names for passes that must not share randomness (e.g. "train",
"lambda" for AutoLoRa's accuracy pass, "similarity").
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from autolora.data.prepared import SplitView
from autolora.data.transforms import (
    TransformSpec,
    eval_transform,
    sample_seed,
    to_float,
    train_transform,
)


class TransformedSplit(Dataset):
    """``split[position]`` -> (float CHW image in [0, 1], label) with its own seeded generator."""

    def __init__(self, view: SplitView, *, train: bool, seed: int, epoch: int, stream: str):
        self.view = view
        self.spec = TransformSpec.from_metadata(view.metadata)
        self.train = train
        self.seed = seed
        self.epoch = epoch
        self.stream = stream

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.view.image(position)).permute(2, 0, 1)
        if self.train:
            generator = torch.Generator().manual_seed(
                sample_seed(self.seed, self.epoch, self.stream, position)
            )
            image = train_transform(image, self.spec, generator)
        else:
            image = eval_transform(image, self.spec)
        return to_float(image.contiguous()), self.view.label(position)


def epoch_order(size: int, *, seed: int, epoch: int, stream: str, shuffle: bool) -> list[int]:
    """The positions of one epoch in the order they are served."""
    if not shuffle:
        return list(range(size))
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, stream, "order"))
    return torch.randperm(size, generator=generator).tolist()


class Loader:
    """Iterable of (x float [B, 3, H, W], y long [B]); ``len`` is the number of batches."""

    def __init__(self, dataset: TransformedSplit, order: list[int], **loader_options):
        self.dataset = dataset
        self.order = order
        self.batch_size = loader_options["batch_size"]
        self._loader = DataLoader(dataset, sampler=order, **loader_options)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)


def make_loader(
    view: SplitView,
    *,
    train: bool,
    seed: int,
    epoch: int,
    batch_size: int,
    stream: str = "train",
    shuffle: bool | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> Loader:
    """Batches of ``view``: training transforms when ``train`` (shuffled unless ``shuffle`` is
    False), evaluation transforms otherwise (in split order unless ``shuffle``). ``start_batch``
    skips the first batches of the epoch without loading them (resume inside an epoch)."""
    dataset = TransformedSplit(view, train=train, seed=seed, epoch=epoch, stream=stream)
    order = epoch_order(
        len(view),
        seed=seed,
        epoch=epoch,
        stream=stream,
        shuffle=train if shuffle is None else shuffle,
    )
    order = order[start_batch * batch_size :]
    return Loader(
        dataset,
        order,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
