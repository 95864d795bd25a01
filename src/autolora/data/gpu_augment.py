"""The training augmentation on the device: uint8 images cross the bus, crop/flip/resize run where
the model runs, with the random parameters the CPU path draws.

The CPU path (``autolora.data.loaders``) decodes, augments and converts every image to float32 in
the loader workers, so the host sends 4 bytes per pixel of the 224x224 crop and the GPU waits for
the slowest worker. Here the loader only draws each sample's parameters (the same calls, in the
same order, from the same per-sample generator as ``train_transform``) and packs the stored uint8
images; ``DeviceAugmenter`` then applies them to the whole batch on the device:

- ``pad_crop`` (CIFAR): zero padding, crop and flip are index arithmetic, so the result is
  bit-identical to ``train_transform``.
- ``resized_crop``: Resize(256) (a no-op for prepared real datasets, stored at Resize(256)),
  crop, bilinear antialiased resize to 224, flip. The CPU path resizes uint8 with torch's
  fixed-point kernel; the device resizes in float32 and rounds (what torchvision does for uint8
  on CUDA), so pixels differ by at most one level of 255 (``tests/test_fastpath.py``).

Integration: ``make_device_loader`` replaces ``make_loader(train=True)`` and ``device_batches``
replaces ``batches_on``; both keep the (seed, epoch, stream, position) randomness, so the batches
do not depend on ``num_workers`` and a resumed epoch is replayed exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from autolora.data.loaders import epoch_order
from autolora.data.prepared import SplitView
from autolora.data.transforms import (
    TransformSpec,
    random_crop_box,
    random_resized_crop_box,
    sample_seed,
)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of Resize(size) (shorter edge to ``size``), as torchvision."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def draw_params(
    spec: TransformSpec, height: int, width: int, generator: torch.Generator
) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box (top, left, h, w) and flip of one sample: the draws of ``train_transform``
    in its order, without touching a pixel. pad_crop boxes are in padded coordinates,
    resized_crop boxes in the coordinates of the image after Resize(``spec.resize``)."""
    if spec.augmentation == "pad_crop":
        pad = spec.pad or 0
        top, left = random_crop_box(height + 2 * pad, width + 2 * pad, spec.image_size, generator)
        box = (top, left, spec.image_size, spec.image_size)
    elif spec.augmentation == "resized_crop":
        box = random_resized_crop_box(*resized_shape(height, width, spec.resize), generator)
    else:
        raise ValueError(f"unknown augmentation {spec.augmentation!r}")
    flip = torch.rand(1, generator=generator).item() < 0.5
    return box, flip


@dataclass(frozen=True)
class CropParams:
    """Per-sample parameters of a batch: ``boxes`` int64 [B, 4] (top, left, h, w), ``flips``
    bool [B]. They index images, so they stay on the host."""

    boxes: Tensor
    flips: Tensor

    @classmethod
    def stack(cls, params: Sequence[tuple[tuple[int, int, int, int], bool]]) -> CropParams:
        boxes = torch.tensor([box for box, _ in params], dtype=torch.int64).reshape(-1, 4)
        flips = torch.tensor([flip for _, flip in params], dtype=torch.bool)
        return cls(boxes, flips)


@dataclass(frozen=True)
class PackedImages:
    """uint8 CHW images of possibly different sizes, concatenated into one flat buffer so that a
    batch crosses the bus in one copy. ``shapes``: int64 [B, 3]."""

    data: Tensor
    shapes: Tensor

    @classmethod
    def pack(cls, images: Sequence[Tensor]) -> PackedImages:
        data = torch.cat([image.reshape(-1) for image in images])
        shapes = torch.tensor([tuple(image.shape) for image in images], dtype=torch.int64)
        return cls(data, shapes.reshape(-1, 3))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedImages:
        return PackedImages(self.data.to(device, non_blocking=non_blocking), self.shapes)

    def pin_memory(self) -> PackedImages:
        return PackedImages(self.data.pin_memory(), self.shapes)

    def unpack(self) -> Tensor | list[Tensor]:
        """A [B, C, H, W] view when every image has the same shape, else a list of CHW views."""
        shapes = [tuple(s) for s in self.shapes.tolist()]
        if shapes and all(shape == shapes[0] for shape in shapes):
            return self.data.view(len(shapes), *shapes[0])
        sizes = [c * h * w for c, h, w in shapes]
        return [
            piece.view(shape) for piece, shape in zip(self.data.split(sizes), shapes, strict=True)
        ]


def _resize_uint8_levels(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear antialiased resize of a uint8 [..., C, H, W] in float32, rounded to uint8 levels
    (kept as float32): torchvision's uint8 resize on CUDA."""
    resized = F.interpolate(
        image.float().reshape(-1, *image.shape[-3:]),
        size=size,
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return resized.round_().clamp_(0, 255)


class DeviceAugmenter:
    """``apply(images, params)`` -> float32 [B, 3, S, S] in [0, 1] on the images' device."""

    def __init__(self, spec: TransformSpec) -> None:
        if spec.augmentation not in ("pad_crop", "resized_crop"):
            raise ValueError(f"unknown augmentation {spec.augmentation!r}")
        self.spec = spec

    def apply(self, images: Tensor | Sequence[Tensor] | PackedImages, params: CropParams) -> Tensor:
        if isinstance(images, PackedImages):
            images = images.unpack()
        if self.spec.augmentation == "pad_crop":
            if not isinstance(images, Tensor):
                images = torch.stack(list(images))
            return self._pad_crop(images, params).float().div_(255.0)
        if isinstance(images, Tensor):
            images = list(images.unbind(0))
        return self._resized_crop(images, params).div_(255.0)

    def _pad_crop(self, images: Tensor, params: CropParams) -> Tensor:
        """Zero padding + crop + flip of a uint8 [B, C, H, W] batch by gathering pixels."""
        pad, size = self.spec.pad or 0, self.spec.image_size
        padded = F.pad(images, (pad, pad, pad, pad), value=0)
        device = images.device
        offsets = torch.arange(size, device=device)
        boxes = params.boxes.to(device)
        rows = boxes[:, 0, None] + offsets  # [B, S]
        cols = boxes[:, 1, None] + offsets  # [B, S]
        cols = torch.where(params.flips.to(device)[:, None], cols.flip(1), cols)
        batch = torch.arange(images.shape[0], device=device)[:, None, None]
        pixels = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # BSSC
        return pixels.permute(0, 3, 1, 2).contiguous()

    def _resized_crop(self, images: Sequence[Tensor], params: CropParams) -> Tensor:
        """Resize(resize) -> crop -> resize to S -> flip, one image at a time (sizes differ)."""
        size = (self.spec.image_size, self.spec.image_size)
        out = []
        for image, (top, left, h, w), flip in zip(
            images, params.boxes.tolist(), params.flips.tolist(), strict=True
        ):
            height, width = image.shape[-2:]
            target = resized_shape(height, width, self.spec.resize)
            if target != (height, width):
                image = _resize_uint8_levels(image, target)[0]
            crop = _resize_uint8_levels(image[:, top : top + h, left : left + w], size)[0]
            out.append(crop.flip(-1) if flip else crop)
        return torch.stack(out)


# ---- the loader variant ------------------------------------------------------------------------


class UInt8TrainSplit(Dataset):
    """``split[position]`` -> (stored uint8 CHW image, label, crop box, flip) with the
    per-sample generator of ``autolora.data.loaders.TransformedSplit``."""

    def __init__(self, view: SplitView, *, seed: int, epoch: int, stream: str) -> None:
        self.view = view
        self.spec = TransformSpec.from_metadata(view.metadata)
        self.seed, self.epoch, self.stream = seed, epoch, stream

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, position: int) -> tuple[Tensor, int, tuple[int, int, int, int], bool]:
        image = torch.from_numpy(self.view.image(position)).permute(2, 0, 1).contiguous()
        generator = torch.Generator().manual_seed(
            sample_seed(self.seed, self.epoch, self.stream, position)
        )
        box, flip = draw_params(self.spec, *image.shape[-2:], generator)
        return image, self.view.label(position), box, flip


@dataclass(frozen=True)
class DeviceBatch:
    """A batch as the loader yields it: packed uint8 images, labels, augmentation parameters."""

    images: PackedImages
    labels: Tensor
    params: CropParams

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DeviceBatch:
        return DeviceBatch(
            self.images.to(device, non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.params,
        )

    def pin_memory(self) -> DeviceBatch:  # called by DataLoader(pin_memory=True)
        return DeviceBatch(self.images.pin_memory(), self.labels.pin_memory(), self.params)


def collate_device_batch(samples: Sequence[tuple]) -> DeviceBatch:
    images, labels, boxes, flips = zip(*samples, strict=True)
    return DeviceBatch(
        PackedImages.pack(images),
        torch.tensor(labels, dtype=torch.int64),
        CropParams.stack(list(zip(boxes, flips, strict=True))),
    )


def make_device_loader(
    view: SplitView,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    stream: str = "train",
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Training batches of ``view`` as ``DeviceBatch``es, in the order and with the random
    parameters of ``make_loader(view, train=True, ...)`` with the same arguments."""
    dataset = UInt8TrainSplit(view, seed=seed, epoch=epoch, stream=stream)
    order = epoch_order(len(view), seed=seed, epoch=epoch, stream=stream, shuffle=shuffle)
    return DataLoader(
        dataset,
        sampler=order[start_batch * batch_size :],
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_device_batch,
    )


def device_batches(
    loader: Iterable[DeviceBatch],
    augmenter: DeviceAugmenter,
    device: torch.device,
    memory_format: torch.memory_format | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x float [B, 3, S, S] in [0, 1], y)`` on ``device``: the drop-in for ``batches_on``."""
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        x = augmenter.apply(batch.images, batch.params)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        yield x, batch.labels
