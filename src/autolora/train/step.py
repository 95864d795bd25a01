"""One training step of a method, the seeds of a run's random streams and the run's process-wide
torch settings.

:class:`TrainingStep` is the one place where a method's loss is computed under the fast paths'
autocast, backpropagated and applied: the epoch loop (``autolora.train.loop``) and the bench's
timed steps and short runs (``autolora.bench``) both drive it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from autolora.fastpath import FastPaths, configure_backends, training_autocast
from autolora.methods import StepResult
from autolora.planning.cells import CellConfig


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed for the stream named by ``parts`` (e.g. ``"train", epoch``)."""
    text = json.dumps([seed, *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def runtime_settings(config: CellConfig) -> Iterator[None]:
    """Determinism and cuDNN flags for the run; restored afterwards (they are process-wide)."""
    runtime = config.runtime
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a CUDA op without a deterministic kernel (e.g. the backward of the nearest
    # upsampling that PGD differentiates through) warns instead of stopping the run.
    torch.use_deterministic_algorithms(runtime.deterministic, warn_only=True)
    configure_backends(FastPaths.from_runtime(config.runtime))
    if runtime.deterministic:
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = runtime.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


class StepMethod(Protocol):
    """What :class:`TrainingStep` needs of a method (``autolora.methods.Method`` has it)."""

    def training_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator
    ) -> StepResult: ...


class TrainingStep:
    """``method``'s step on ``model`` with ``optimizer`` under ``paths``: :meth:`loss` (gradients
    zeroed, the method's loss under the training autocast, not yet backpropagated), then
    :meth:`update` (backward and the optimizer's step); calling it does both."""

    def __init__(
        self,
        method: StepMethod,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        paths: FastPaths,
        device: torch.device,
    ) -> None:
        self.method, self.model, self.optimizer = method, model, optimizer
        self.paths, self.device = paths, device

    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        with training_autocast(self.paths, self.device):
            return self.method.training_step(self.model, x, y, generator=generator)

    def update(self, loss: Tensor) -> None:
        loss.backward()
        self.optimizer.step()

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> StepResult:
        result = self.loss(x, y, generator=generator)
        self.update(result.loss)
        return result
