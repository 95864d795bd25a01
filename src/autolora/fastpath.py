"""Optional fast paths for training (issue 8): each is off by default and changes no result
beyond the tolerance its equivalence test states (docs/performance.md, ``tests/test_fastpath.py``).

- ``channels_last``: NHWC memory format for the model and each input batch (same arithmetic).
- ``bf16``: bfloat16 autocast around the training step (attack steps, forwards and loss); the
  parameters, gradients and optimiser stay fp32. Evaluation (PGD-10, AutoAttack) never uses it.
- ``compile``: ``torch.compile`` of the backbone.
- ``cudnn_benchmark``: cuDNN picks the fastest convolution algorithms (non-deterministic choice).

The data-side fast path (uint8 batches augmented on the device) is ``autolora.data.gpu_augment``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

import torch
from torch import nn

from autolora.errors import ConfigError

# Agreement of one training step with the plain fp32 eager step (same weights, batch, attack
# start), checked by tests/test_fastpath.py and by `autolora bench --check` on the device.
# fp32 fast paths (channels_last, compile, cudnn_benchmark) only reassociate fp32 sums:
FP32_LOSS_RTOL = 1e-4
FP32_GRAD_COSINE = 0.9999
# bf16 rounds every convolution input to 8 mantissa bits; the sign of the attack's input gradient
# then flips on some pixels, so x_adv moves. The yardstick is the randomness the method already
# has: the gradient of the plain step from another random start. bf16 passes when its gradient
# deviation (1 - cosine) is at most this factor times that of another start, or at most
# BF16_DEVIATION_FLOOR (cosine >= 0.95) for methods whose random start barely matters.
BF16_LOSS_RTOL = 2e-2
BF16_DEVIATION_FACTOR = 3.0
BF16_DEVIATION_FLOOR = 0.05


@dataclass(frozen=True)
class FastPaths:
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False

    @classmethod
    def from_runtime(cls, runtime: Mapping[str, object] | object) -> FastPaths:
        """The fast-path flags of a cell's ``runtime`` group (a mapping or ``RuntimeConfig``;
        other keys are ignored)."""
        values = {}
        for spec in fields(cls):
            if isinstance(runtime, Mapping):
                value = runtime.get(spec.name, False)
            else:
                value = getattr(runtime, spec.name, False)
            if not isinstance(value, bool):
                raise ConfigError(f"runtime.{spec.name} must be true or false, got {value!r}")
            values[spec.name] = value
        return cls(**values)

    @classmethod
    def all_on(cls) -> FastPaths:
        return cls(channels_last=True, bf16=True, compile=True, cudnn_benchmark=True)

    def label(self) -> str:
        enabled = [spec.name for spec in fields(self) if getattr(self, spec.name)]
        return "+".join(enabled) if enabled else "plain fp32 eager"


def configure_backends(paths: FastPaths) -> None:
    """Process-wide backend switches (cuDNN autotuning)."""
    torch.backends.cudnn.benchmark = paths.cudnn_benchmark


def prepare_model(model: nn.Module, paths: FastPaths) -> nn.Module:
    """Apply the model-side fast paths in place; returns the model for chaining."""
    if paths.channels_last:
        model.to(memory_format=torch.channels_last)
    if paths.compile:
        # Compiling the torchvision backbone keeps RobustNet's Python-level routing (branch,
        # BN mode) outside the graph, so every forward variant reuses the same compiled code.
        model.backbone.compile()
    return model


def prepare_batch(x: torch.Tensor, paths: FastPaths) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if paths.channels_last else x


@contextlib.contextmanager
def training_autocast(paths: FastPaths, device: torch.device) -> Iterator[None]:
    """bf16 autocast for the training step when enabled; a no-op otherwise."""
    if not paths.bf16:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


# ---- equivalence evidence ----------------------------------------------------------------------


def step_loss_and_gradients(
    method,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    paths: FastPaths,
    *,
    seed: int,
    generator_device: torch.device | str | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and fp32 gradients of one training step of ``method`` on a copy of ``model`` under
    ``paths`` (the attack's random start drawn from ``seed`` by a generator on
    ``generator_device``, default the batch's: a CPU generator draws the same start on any
    device); ``model`` is left untouched."""
    device = x.device
    step_model = prepare_model(copy.deepcopy(model), paths).train()
    generator = torch.Generator(device=generator_device or device).manual_seed(seed)
    with training_autocast(paths, device):
        result = method.training_step(step_model, prepare_batch(x, paths), y, generator=generator)
    result.loss.backward()
    gradients = {
        name: p.grad.detach().float().clone()
        for name, p in step_model.named_parameters()
        if p.grad is not None
    }
    return float(result.loss.detach()), gradients


def agreement(
    reference: tuple[float, Mapping[str, torch.Tensor]],
    candidate: tuple[float, Mapping[str, torch.Tensor]],
) -> dict[str, float]:
    """``loss_rel_error`` and ``grad_cosine`` (of all gradients flattened into one vector), plus
    the worst per-tensor cosine, between two ``step_loss_and_gradients`` results."""
    (loss_a, grads_a), (loss_b, grads_b) = reference, candidate
    if set(grads_a) != set(grads_b):
        raise ValueError("the two steps produced gradients for different parameters")
    names = sorted(grads_a)
    flat_a = torch.cat([grads_a[n].flatten().double() for n in names])
    flat_b = torch.cat([grads_b[n].flatten().double() for n in names])

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        norms = a.norm() * b.norm()
        return 1.0 if norms == 0 else float(a @ b / norms)

    worst = min(cosine(grads_a[n].flatten().double(), grads_b[n].flatten().double()) for n in names)
    return {
        "loss_rel_error": abs(loss_b - loss_a) / max(abs(loss_a), 1e-12),
        "grad_cosine": cosine(flat_a, flat_b),
        "worst_tensor_cosine": worst,
        "grad_rel_error": float((flat_b - flat_a).norm() / max(float(flat_a.norm()), 1e-30)),
    }


def tolerances(paths: FastPaths, random_start_deviation: float | None = None) -> dict[str, float]:
    """The stated tolerance of a fast path against plain fp32 eager. bf16 needs
    ``random_start_deviation``: 1 - cosine between plain-step gradients of two random starts."""
    if not paths.bf16:
        return {"loss_rel_error": FP32_LOSS_RTOL, "grad_cosine": FP32_GRAD_COSINE}
    if random_start_deviation is None:
        raise ValueError("the bf16 tolerance is relative to the random-start deviation; pass it")
    deviation = max(BF16_DEVIATION_FLOOR, BF16_DEVIATION_FACTOR * random_start_deviation)
    return {"loss_rel_error": BF16_LOSS_RTOL, "grad_cosine": 1.0 - deviation}


def within_tolerance(
    measured: Mapping[str, float], paths: FastPaths, random_start_deviation: float | None = None
) -> bool:
    limits = tolerances(paths, random_start_deviation)
    return (
        math.isfinite(measured["loss_rel_error"])
        and measured["loss_rel_error"] <= limits["loss_rel_error"]
        and measured["grad_cosine"] >= limits["grad_cosine"]
    )
