"""The SPEC §2 image transforms, driven by an explicit ``torch.Generator`` per sample.

``pad_crop`` (CIFAR): train RandomCrop(size, padding=pad, zero fill) + RandomHorizontalFlip;
eval: none. ``resized_crop`` (DTD, DOG, CUB, Caltech): train Resize(resize) ->
RandomResizedCrop(size) (scale (0.08, 1), ratio (3/4, 4/3)) -> RandomHorizontalFlip; eval
Resize(resize) -> CenterCrop(size). Each random draw mirrors torchvision's (same calls, same order),
so with a generator seeded like torch's global RNG the result equals ``torchvision.transforms.v2``
on a uint8 tensor (whose antialiased bilinear resize is the closest to PIL's, which the released
code used). Images stay uint8, as PIL's do, until ``to_float`` scales them to [0, 1].
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class TransformSpec:
    augmentation: str  # "pad_crop" | "resized_crop"
    image_size: int  # pad_crop: the crop (native) size; resized_crop: the crop size (224)
    resize: int | None = None  # resized_crop: shorter edge before cropping (256)
    pad: int | None = None  # pad_crop: zero padding on every side (4)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TransformSpec:
        return cls(
            augmentation=metadata["augmentation"],
            image_size=int(metadata["image_size"]),
            resize=metadata.get("resize"),
            pad=metadata.get("pad"),
        )


def sample_seed(seed: int, epoch: int, stream: str, position: int | str) -> int:
    """A 63-bit seed for one draw, from (training seed, epoch, stream name, split position)."""
    key = f"{seed}:{epoch}:{stream}:{position}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return torch.empty(1).uniform_(low, high, generator=generator).item()


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high, size=(1,), generator=generator).item())


def random_crop_box(
    height: int, width: int, size: int, generator: torch.Generator
) -> tuple[int, int]:
    """Top-left corner of a ``size``x``size`` crop, as ``RandomCrop.get_params``."""
    if height < size or width < size:
        raise ValueError(f"crop size {size} larger than the (padded) image {height}x{width}")
    if height == size and width == size:
        return 0, 0  # torchvision draws nothing in this case
    top = _randint(generator, height - size + 1)
    left = _randint(generator, width - size + 1)
    return top, left


def random_resized_crop_box(
    height: int, width: int, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as ``RandomResizedCrop.get_params`` with the default scale and ratio."""
    area = height * width
    log_ratio = torch.log(torch.tensor(RRC_RATIO))  # float32, as torchvision computes it
    for _ in range(10):
        target_area = area * _uniform(generator, *RRC_SCALE)
        drawn = torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)
        aspect = torch.exp(drawn).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(generator, height - h + 1)
            left = _randint(generator, width - w + 1)
            return top, left, h, w
    in_ratio = width / height  # fallback: a centre crop with the ratio clamped
    if in_ratio < min(RRC_RATIO):
        w, h = width, int(round(width / min(RRC_RATIO)))
    elif in_ratio > max(RRC_RATIO):
        h, w = height, int(round(height * max(RRC_RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize(size): shorter edge to ``size``, aspect kept, bilinear with antialias (uint8 CHW)."""
    return F.resize(image, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """CenterCrop(size) of a CHW image at least ``size`` on each side."""
    height, width = image.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def _maybe_flip(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return image.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else image


def train_transform(
    image: torch.Tensor, spec: TransformSpec, generator: torch.Generator
) -> torch.Tensor:
    """The training augmentation of a uint8 CHW image; returns uint8 CHW."""
    if spec.augmentation == "pad_crop":
        pad = spec.pad or 0
        padded = torch.nn.functional.pad(image, (pad, pad, pad, pad), value=0)
        top, left = random_crop_box(*padded.shape[-2:], spec.image_size, generator)
        image = padded[..., top : top + spec.image_size, left : left + spec.image_size]
    elif spec.augmentation == "resized_crop":
        resized = resize_shorter(image, spec.resize)
        top, left, h, w = random_resized_crop_box(*resized.shape[-2:], generator)
        image = F.resized_crop(
            resized,
            top,
            left,
            h,
            w,
            [spec.image_size, spec.image_size],
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        )
    else:
        raise ValueError(f"unknown augmentation {spec.augmentation!r}")
    return _maybe_flip(image, generator)


def eval_transform(image: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """The evaluation transform of a uint8 CHW image; returns uint8 CHW."""
    if spec.augmentation == "pad_crop":
        return image
    if spec.augmentation == "resized_crop":
        return center_crop(resize_shorter(image, spec.resize), spec.image_size)
    raise ValueError(f"unknown augmentation {spec.augmentation!r}")


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (as ``ToTensor``)."""
    return image.to(torch.float32).div_(255.0)
