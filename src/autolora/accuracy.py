"""Accuracy of a model on batches, in percent: clean, PGD (SPEC 3) and the LoRa branch's (SPEC 4.3).

The one accuracy evaluator of the package: the training loop's per-epoch validation and test
numbers and its AutoLoRa λ pass, ``autolora evaluate``, the bench's short runs and the
pre-training of the demo backbone all count correct predictions here. Every evaluation runs in
eval mode (each submodule's own mode is restored afterwards) and counts on the device (one
synchronisation at the end, not one per batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from autolora.attacks import eval_mode, pgd
from autolora.errors import DataError


def batches_on(
    loader: Iterable, device: torch.device, memory_format: torch.memory_format | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches on ``device``; uint8 images become floats in [0, 1]."""
    for x, y in loader:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = x.to(device, non_blocking=True)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        yield x, torch.as_tensor(y).to(device, non_blocking=True)


def tensor_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive ``batch_size`` slices of in-memory images ``x`` and labels ``y``."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


EMPTY_SPLIT = "accuracy of an empty split requested: the split has no examples"


def _percent(correct: Tensor | int, total: int, what: str) -> float:
    if total == 0:
        raise DataError(what)
    return 100.0 * int(correct) / total


def clean_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    empty: str = EMPTY_SPLIT,
    **forward_kwargs,
) -> tuple[float, int]:
    """(standard accuracy in percent, n) of ``model(x, **forward_kwargs)``, eval mode; ``empty``
    is the DataError's message when there is no example."""
    correct: Tensor | int = 0
    total = 0
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            correct = correct + (model(x, **forward_kwargs).argmax(dim=1) == y).sum()
            total += int(y.shape[0])
    return _percent(correct, total, empty), total


def lora_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, int]:
    """(standard accuracy of the LoRa branch in percent, n), eval mode (SPEC 4.3)."""
    return clean_accuracy(
        model, batches, empty="LoRa accuracy of an empty training split requested", branch="lora"
    )


def clean_and_pgd_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    step: float,
    steps: int,
) -> tuple[float, float, int]:
    """(SA, PGD robust accuracy, n): eval mode, PGD without random start (SPEC 3)."""
    correct_clean: Tensor | int = 0
    correct_adv: Tensor | int = 0
    total = 0
    with eval_mode(model):
        for x, y in batches:
            with torch.no_grad():
                correct_clean = correct_clean + (model(x).argmax(dim=1) == y).sum()
            x_adv = pgd(model, x, y, eps=eps, step=step, steps=steps, random_start=False)
            with torch.no_grad():
                correct_adv = correct_adv + (model(x_adv).argmax(dim=1) == y).sum()
            total += int(y.shape[0])
    return (
        _percent(correct_clean, total, EMPTY_SPLIT),
        _percent(correct_adv, total, EMPTY_SPLIT),
        total,
    )
