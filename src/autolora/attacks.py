"""Attacks in [0, 1] pixel space (SPEC 3): L-inf PGD and an adapter over pyautoattack 0.2.0."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autolora.autoattack_variants import STANDARD, AutoAttackVariant, autoattack_variant
from autolora.errors import ConfigError
from autolora.models import RobustNet

AUTOATTACK_LOGGER = "auto-attack"
_INITIAL = re.compile(r"^initial accuracy: (?P<percent>[\d.]+)%$")
_PERTURBED = re.compile(
    r"^(?P<attack>[\w-]+) - \d+/\d+ - (?P<perturbed>\d+) out of \d+ successfully perturbed$"
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag afterwards."""
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in previous:
            module.training = training


def _uniform_noise(
    like: torch.Tensor, eps: float, generator: torch.Generator | None
) -> torch.Tensor:
    # Drawn on the generator's device, so a CPU generator gives the same start on any device.
    device = generator.device if generator is not None else like.device
    noise = torch.rand(like.shape, generator=generator, device=device, dtype=like.dtype)
    return (noise * 2 - 1).mul_(eps).to(like.device)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None = None,
    forward_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """L-inf PGD on cross-entropy: sign steps, projection onto the eps-ball around ``x`` and
    clamping to [0, 1] after every step; optional random start ``x + U(-eps, eps)`` (clamped).

    The model runs in eval mode (its previous modes are restored); only the input is
    differentiated, so no parameter ``.grad`` changes. Returns a detached tensor.
    """
    forward_kwargs = forward_kwargs or {}
    x = x.detach()
    lower, upper = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv = x.clone()
    if random_start:
        x_adv = (x_adv + _uniform_noise(x, eps, generator)).clamp(0, 1)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            # Summed loss: same sign as the mean, without underflow on large batches.
            loss = F.cross_entropy(model(x_adv, **forward_kwargs), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            # One clamp onto [lower, upper] = the eps-ball intersected with [0, 1] (lower <= upper
            # as x is in [0, 1]): the same as projecting, then clamping to the unit box.
            x_adv = torch.clamp(x_adv.detach().add_(grad.sign_(), alpha=step), lower, upper)
    return x_adv.detach()


class _FeatureExtractorForward(nn.Module):
    """x -> logits of the FE path (no LoRa branch, adaptive BN), as AutoAttack expects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, RobustNet):
            return self.model(x, branch="fe", bn="adaptive")
        return self.model(x)


@dataclass(frozen=True)
class AutoAttackResult:
    """Accuracies in percent; ``progression``: robust accuracy after each attack that ran;
    ``version`` and ``attacks``: the variant (``autolora.autoattack_variants``) and its attacks."""

    clean_accuracy: float
    robust_accuracy: float
    progression: list[dict[str, Any]]
    n: int
    version: str = STANDARD
    attacks: tuple[str, ...] = ()


class _Relay(logging.Handler):
    """Keeps AutoAttack's messages for parsing and passes them on to ``sink``."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(level=logging.DEBUG)
        self.sink = sink
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        self.sink(f"autoattack: {message}")


@contextlib.contextmanager
def _captured_autoattack_log(sink: Callable[[str], None]) -> Iterator[_Relay]:
    aa_logger = logging.getLogger(AUTOATTACK_LOGGER)
    relay = _Relay(sink)
    saved = (aa_logger.level, aa_logger.propagate)
    aa_logger.setLevel(logging.DEBUG)
    aa_logger.propagate = False  # relayed instead, so nothing is printed twice
    aa_logger.addHandler(relay)
    try:
        yield relay
    finally:
        aa_logger.removeHandler(relay)
        aa_logger.setLevel(saved[0])
        aa_logger.propagate = saved[1]


def _perturbed_counts(messages: list[str]) -> dict[str, int]:
    """Points newly broken by each attack, in the order the attacks ran."""
    counts: dict[str, int] = {}
    for message in messages:
        match = _PERTURBED.match(message)
        if match:
            attack = match["attack"]
            counts[attack] = counts.get(attack, 0) + int(match["perturbed"])
    return counts


def _check_initial_accuracy(messages: list[str], clean_percent: float) -> None:
    """AutoAttack logs its clean accuracy rounded to 0.01 %; ours must agree with it."""
    for message in messages:
        match = _INITIAL.match(message)
        if match and abs(float(match["percent"]) - clean_percent) > 0.0051:
            raise RuntimeError(
                f"AutoAttack log parsing is inconsistent: it reports {match['percent']}% clean "
                f"accuracy, the counts give {clean_percent:.4f}%"
            )


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


AUTOATTACK_TARGET_CLASSES = 9


def _check_enough_classes(
    model: nn.Module, probe: torch.Tensor, variant: AutoAttackVariant
) -> None:
    """AutoAttack's targeted attacks (APGD-T, FAB-T) use the 9 runner-up classes, so a head with
    fewer than 10 outputs makes pyautoattack fail deep inside with an IndexError."""
    with torch.no_grad(), eval_mode(model):
        num_outputs = int(_FeatureExtractorForward(model)(probe).shape[1])
    if num_outputs <= AUTOATTACK_TARGET_CLASSES:
        raise ConfigError(
            f"{variant.label} needs at least {AUTOATTACK_TARGET_CLASSES + 1} classes (its "
            f"targeted attacks use the {AUTOATTACK_TARGET_CLASSES} runner-up classes), but the "
            f"model has {num_outputs} outputs: use a dataset with more classes or set "
            "`evaluation.autoattack: false` in the config (`--no-autoattack` on the command line)"
        )


def _autoattack(forward: nn.Module, variant: AutoAttackVariant, **options: Any):
    """pyautoattack's AutoAttack running ``variant``: its ``standard`` version, or its ``custom``
    version with the variant's attacks set up as the standard version sets them."""
    from pyautoattack import AutoAttack

    if variant.is_standard:
        return AutoAttack(forward, version="standard", **options)
    attack = AutoAttack(forward, version="custom", attacks=list(variant.attacks), **options)
    # The values pyautoattack's standard version gives these attacks under L-inf (its
    # constructor's defaults differ: APGD-CE would run 5 restarts instead of 1).
    attack.apgd.n_restarts = 1
    attack.apgd_targeted.n_restarts = 1
    attack.apgd_targeted.n_target_classes = AUTOATTACK_TARGET_CLASSES
    return attack


def autoattack_evaluation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    device: str | torch.device,
    batch_size: int = 250,
    seed: int = 0,
    version: str = STANDARD,
    log: Callable[[str], None] | None = None,
) -> AutoAttackResult:
    """L-inf AutoAttack of the FE forward in eval mode: ``version`` ``standard`` (APGD-CE,
    APGD-T, FAB-T, Square; the paper's) or a reduced variant of ``autolora.autoattack_variants``.

    ``model`` must already be on ``device``. Clean and robust accuracy come from AutoAttack's own
    outputs; the progression is rebuilt exactly from its per-batch counts of perturbed points.
    AutoAttack's log (DEBUG on ``auto-attack``) goes to ``log``, or to this module's logger at
    INFO. The caller's random state is left untouched.
    """
    variant = autoattack_variant(version)
    device = torch.device(device)
    _check_enough_classes(model, x[:1], variant)
    sink = log if log is not None else logger.info
    forward = _FeatureExtractorForward(model)
    with (
        eval_mode(model),
        _captured_autoattack_log(sink) as relay,
        torch.random.fork_rng(devices=_rng_devices(device)),
    ):
        attack = _autoattack(forward, variant, device=device, eps=eps, norm="Linf", seed=seed)
        _, y_adv = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    n = int(y.shape[0])
    robust = int((y_adv.cpu() == y.cpu()).sum())
    perturbed = _perturbed_counts(relay.messages)
    clean = robust + sum(perturbed.values())
    _check_initial_accuracy(relay.messages, 100.0 * clean / n)
    progression = []
    remaining = clean
    for name, count in perturbed.items():
        remaining -= count
        progression.append({"attack": name, "robust_accuracy": 100.0 * remaining / n})
    return AutoAttackResult(
        clean_accuracy=100.0 * clean / n,
        robust_accuracy=100.0 * robust / n,
        progression=progression,
        n=n,
        version=variant.name,
        attacks=variant.attacks,
    )
