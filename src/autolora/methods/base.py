"""What every robust fine-tuning method shares: settings, the step result, the KL term and the
interface the training loop calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autolora import attacks
from autolora.errors import ConfigError
from autolora.models import LORA_BLOCKS


@dataclass(frozen=True)
class MethodSettings:
    """Hyper-parameters of a training step. ``kl_divisor``: the configured batch size (released
    code: the KL sum is divided by it even on a short last batch) or None for the actual size.
    ``lora_blocks`` (AutoLoRa, SPEC 4.3): where the LoRa update acts, ``"last"`` block of each
    stage or ``"all"``; ``twins_gamma_on`` (TWINS, SPEC 4.2): the half γ multiplies, ``"fixed"``
    or ``"adaptive"``. Cells always set both from their protocol (``autolora.planning.cells``)."""

    eps: float
    step: float
    attack_steps: int
    beta: float = 6.0
    twins_gamma: float = 1.0
    lora_rank: int = 8
    kl_divisor: int | None = None
    lora_blocks: str = "all"
    twins_gamma_on: str = "fixed"

    def __post_init__(self) -> None:
        if not self.eps >= 0 or not self.step >= 0:
            raise ConfigError(f"attack eps and step must be >= 0, got {self.eps}, {self.step}")
        if self.attack_steps < 0:
            raise ConfigError(f"attack train_steps must be >= 0, got {self.attack_steps}")
        if not self.beta >= 0 or not self.twins_gamma >= 0:
            raise ConfigError(
                f"beta and twins_gamma must be >= 0, got {self.beta}, {self.twins_gamma}"
            )
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.kl_divisor is not None and self.kl_divisor < 1:
            raise ConfigError(
                f"kl_divisor must be a batch size >= 1 or None, got {self.kl_divisor}"
            )
        if self.lora_blocks not in LORA_BLOCKS:
            raise ConfigError(f"lora_blocks must be one of {LORA_BLOCKS}, got {self.lora_blocks!r}")
        if self.twins_gamma_on not in ("fixed", "adaptive"):
            raise ConfigError(
                f"twins_gamma_on must be 'fixed' or 'adaptive', got {self.twins_gamma_on!r}"
            )

    def divisor_for(self, batch_size: int) -> int:
        return self.kl_divisor if self.kl_divisor is not None else batch_size


@dataclass
class StepResult:
    """A training step's loss (not yet backpropagated) and its per-batch metrics (floats;
    accuracies in percent)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def kl_term(adv_logits: Tensor, target_logits: Tensor, divisor: int) -> Tensor:
    """``KLDivLoss(reduction="sum")(log_softmax(adv), softmax(target)) / divisor``, temperature 1;
    the target keeps its graph (not detached), as in the released code."""
    if divisor < 1:
        raise ValueError(f"kl_term: divisor must be >= 1, got {divisor}")
    log_probs = F.log_softmax(adv_logits, dim=1)
    target = F.softmax(target_logits, dim=1)
    return F.kl_div(log_probs, target, reduction="sum") / divisor


def mean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over the rows; an empty slice (half of a batch of one) contributes zero."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


def logits_accuracy_percent(logits: Tensor, labels: Tensor) -> Tensor:
    """The share of rows whose largest logit is the label, in percent, as a 0-d tensor (a training
    step's metric; no device synchronisation)."""
    return (logits.argmax(dim=1) == labels).float().mean() * 100.0


def metrics_to_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """Detach and convert in one device synchronisation."""
    names = list(values)
    numbers = torch.stack([values[n].detach().float().reshape(()) for n in names]).tolist()
    return dict(zip(names, numbers, strict=True))


def robust_step_result(
    loss: Tensor,
    y: Tensor,
    *,
    logits_nat: Tensor,
    logits_adv: Tensor,
    ce_nat: Tensor,
    ce_adv: Tensor,
    kl: Tensor,
    terms: dict[str, Tensor] | None = None,
) -> StepResult:
    """The step's loss with the metrics every method reports: the loss, the method's own ``terms``,
    CE on the clean and the adversarial logits, the KL term and both accuracies, in that order."""
    metrics = metrics_to_floats(
        {
            "loss": loss,
            **(terms or {}),
            "ce_nat": ce_nat,
            "ce_adv": ce_adv,
            "kl": kl,
            "clean_acc": logits_accuracy_percent(logits_nat, y),
            "adv_acc": logits_accuracy_percent(logits_adv, y),
        }
    )
    return StepResult(loss, metrics)


class AttackSettings(Protocol):
    """The training attack's budget: a method's ``MethodSettings`` or the pre-training's settings."""

    eps: float
    step: float
    attack_steps: int


def training_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: AttackSettings,
    generator: torch.Generator | None,
    forward_kwargs: dict | None = None,
) -> Tensor:
    """PGD on CE with a random start and the training number of steps (SPEC 3)."""
    extra = {} if forward_kwargs is None else {"forward_kwargs": forward_kwargs}
    x_adv = attacks.pgd(
        model,
        x,
        y,
        eps=settings.eps,
        step=settings.step,
        steps=settings.attack_steps,
        random_start=True,
        generator=generator,
        **extra,
    )
    return x_adv.detach()


class Method:
    """One robust fine-tuning method: which model it needs, which parameters it trains and the
    loss of one training step. The training loop knows nothing else about it."""

    name: str = ""
    uses_lambda_pass: bool = False

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings

    def model_options(self) -> dict:
        """Keyword arguments for ``autolora.models.build_model``."""
        return {}

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        raise NotImplementedError

    def training_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> StepResult:
        raise NotImplementedError

    def set_lambdas(self, lambda1: float, lambda2: float) -> None:
        raise TypeError(f"method {self.name!r} has no loss weights λ1/λ2 to set")

    def gradient_similarity(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> float:
        raise NotImplementedError(
            f"gradient similarity (SPEC 4.5) is defined for vanilla and twins, not {self.name!r}"
        )
