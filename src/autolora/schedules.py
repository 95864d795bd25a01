"""Learning-rate and loss-weight schedules: MultiStepLR (baselines), AutoLoRa's λ1/λ2 (Eq. 6–7)
and its automated LR scheduler (SPEC 4.4). Pure Python: no torch."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autolora.errors import ConfigError

DEFAULT_AUTOLR_CHECKPOINTS: tuple[int, ...] = tuple(range(0, 57, 4))


def lambda_weights(accuracy: float, alpha: float = 1.0, scale: float = 6.0) -> tuple[float, float]:
    """AutoLoRa's loss weights (λ1, λ2) = (1 − A^α, scale·A^α) from the LoRa branch's standard
    accuracy A, given as a fraction in [0, 1]."""
    if not 0.0 <= accuracy <= 1.0 or math.isnan(accuracy):
        raise ValueError(
            f"lambda_weights: accuracy must be a fraction in [0, 1], got {accuracy!r} "
            "(divide a percentage by 100)"
        )
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha!r}: set `alpha` to a positive number")
    power = accuracy**alpha
    return 1.0 - power, scale * power


def multistep_lr(
    base_lr: float,
    iteration: int,
    iterations_per_epoch: int,
    milestones: Sequence[int] = (30, 50),
    factor: float = 0.1,
) -> float:
    """LR for the 0-based training ``iteration`` under MultiStepLR stepped once per iteration with
    milestones at ``epoch · iterations_per_epoch`` (the released code's baseline schedule)."""
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    boundaries = sorted(m * iterations_per_epoch for m in milestones)
    passed = bisect.bisect_right(boundaries, iteration)
    return base_lr * factor**passed


@dataclass(frozen=True)
class AutoLRDecision:
    """What the training loop does after an epoch, in this order: save the weights as the
    best-validation checkpoint if ``is_best`` (strictly better than every earlier epoch); then, if
    ``reload_best``, load that checkpoint (model, LoRa, BN buffers; the optimizer's momentum is
    kept); stop if ``stop``, else train the next epoch at ``lr``. ``reason`` says why, in words."""

    lr: float
    is_best: bool
    reload_best: bool
    stop: bool
    reason: str


class AutoLR:
    """Automated LR scheduler (SPEC 4.4), fed one validation robust accuracy per finished epoch.

    After the epoch count e with e − 1 = W[k] (k ≥ 1), over the window a = W[k−1], b = W[k]:
    condition 1: #{j in [a, b): acc[j+1] > acc[j]} < rho·(b − a);
    condition 2 (never at the first checkpoint, k = 1): the best accuracy did not improve since
    the previous checkpoint. Whether the LR was halved there does not matter: the released code
    tests an LR equality that is always true after the first checkpoint.
    Either condition halves the LR (×decay) and asks for the best-validation weights to be reloaded.
    Training stops once the LR is below ``min_lr`` or after ``max_epochs`` epochs.
    """

    def __init__(
        self,
        initial_lr: float = 0.01,
        checkpoints: Sequence[int] = DEFAULT_AUTOLR_CHECKPOINTS,
        rho: float = 0.75,
        min_lr: float = 1e-5,
        decay: float = 0.5,
        max_epochs: int = 60,
    ) -> None:
        checkpoints = tuple(int(c) for c in checkpoints)
        if len(checkpoints) < 2 or any(b <= a for a, b in itertools.pairwise(checkpoints)):
            raise ConfigError(
                f"autolr.checkpoints must be at least two strictly increasing epochs, got "
                f"{list(checkpoints)}: e.g. [0, 4, 8, ..., 56]"
            )
        if checkpoints[0] < 0:
            raise ConfigError(f"autolr.checkpoints must be >= 0, got {list(checkpoints)}")
        if not initial_lr > 0 or not min_lr >= 0 or not 0 < decay < 1 or not 0 < rho <= 1:
            raise ConfigError(
                "autolr: need initial_lr > 0, min_lr >= 0, 0 < decay < 1 and 0 < rho <= 1; got "
                f"initial_lr={initial_lr}, min_lr={min_lr}, decay={decay}, rho={rho}"
            )
        if max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {max_epochs}")
        self.initial_lr = float(initial_lr)
        self.checkpoints = checkpoints
        self.rho = float(rho)
        self.min_lr = float(min_lr)
        self.decay = float(decay)
        self.max_epochs = int(max_epochs)
        self.lr = self.initial_lr
        self.accuracies: list[float] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.next_checkpoint = 1  # index k into checkpoints of the next check
        self.best_at_last_check: float | None = None

    @property
    def epochs_seen(self) -> int:
        return len(self.accuracies)

    def update(self, val_robust_accuracy: float) -> AutoLRDecision:
        """Record the validation robust accuracy of the epoch just finished; return the decision."""
        accuracy = float(val_robust_accuracy)
        if math.isnan(accuracy):
            raise ValueError("AutoLR.update: validation robust accuracy is NaN")
        self.accuracies.append(accuracy)
        epoch = self.epochs_seen
        is_best = self.best is None or accuracy > self.best
        if is_best:
            self.best, self.best_epoch = accuracy, epoch
        reasons = [
            f"epoch {epoch}: val robust accuracy {accuracy:g}"
            + (" is a new best" if is_best else f" (best {self.best:g} at epoch {self.best_epoch})")
        ]

        reload_best = False
        k = self.next_checkpoint
        if k < len(self.checkpoints) and epoch - 1 == self.checkpoints[k]:
            reload_best, why = self._check(self.checkpoints[k - 1], self.checkpoints[k], k)
            reasons.append(why)
            self.next_checkpoint += 1

        stop = False
        if self.lr < self.min_lr:
            stop = True
            reasons.append(f"stop: lr {self.lr:g} is below the minimum {self.min_lr:g}")
        elif epoch >= self.max_epochs:
            stop = True
            reasons.append(f"stop: reached the maximum of {self.max_epochs} epochs")
        return AutoLRDecision(self.lr, is_best, reload_best, stop, "; ".join(reasons))

    def _check(self, a: int, b: int, k: int) -> tuple[bool, str]:
        acc = self.accuracies
        increases = sum(1 for j in range(a, b) if acc[j + 1] > acc[j])
        cond1 = increases < self.rho * (b - a)
        cond2 = (
            k > 1
            and self.best_at_last_check is not None
            and self.best is not None
            and self.best <= self.best_at_last_check
        )
        window = f"checkpoint window [{a}, {b}]"
        if cond1 or cond2:
            old_lr = self.lr
            self.lr *= self.decay
            causes = []
            if cond1:
                causes.append(
                    f"accuracy rose in only {increases} of {b - a} epochs "
                    f"(fewer than {self.rho:g} of them)"
                )
            if cond2:
                causes.append("the best accuracy did not improve since the previous checkpoint")
            why = (
                f"{window}: {' and '.join(causes)}, so lr {old_lr:g} -> {self.lr:g} and reload "
                f"the best-validation weights (epoch {self.best_epoch})"
            )
        else:
            why = f"{window}: accuracy rose in {increases} of {b - a} epochs, keep lr {self.lr:g}"
        self.best_at_last_check = self.best
        return cond1 or cond2, why

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (settings included) for resuming."""
        return {
            "settings": {
                "initial_lr": self.initial_lr,
                "checkpoints": list(self.checkpoints),
                "rho": self.rho,
                "min_lr": self.min_lr,
                "decay": self.decay,
                "max_epochs": self.max_epochs,
            },
            "lr": self.lr,
            "accuracies": list(self.accuracies),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "next_checkpoint": self.next_checkpoint,
            "best_at_last_check": self.best_at_last_check,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot from :meth:`state_dict`; its settings must equal this scheduler's.
        A snapshot written before condition 2 lost its LR test still carries the unused key
        ``decayed_at_last_check``; it is ignored."""
        saved = dict(state["settings"])
        saved["checkpoints"] = tuple(saved["checkpoints"])
        current = self.state_dict()["settings"]
        current["checkpoints"] = tuple(current["checkpoints"])
        if saved != current:
            raise ConfigError(
                f"resume state of the automated LR scheduler was made with settings {saved}, "
                f"but the configuration now gives {current}: restore the `autolr` settings or "
                "delete the run's state/ folder to start over"
            )
        self.lr = float(state["lr"])
        self.accuracies = [float(a) for a in state["accuracies"]]
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.next_checkpoint = int(state["next_checkpoint"])
        self.best_at_last_check = state["best_at_last_check"]
