"""Vanilla robust fine-tuning (SPEC 4.1, Eq. 1): TRADES-style loss on the whole network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from autolora import diagnostics
from autolora.methods.base import (
    Method,
    StepResult,
    kl_term,
    mean_cross_entropy,
    robust_step_result,
    training_attack,
)
from autolora.models import classifier_parameters, fe_parameters
from autolora.planning.vocabulary import VANILLA


class VanillaRFT(Method):
    """Loss = CE(h(x), y) + β·KL(h(x̃) ‖ h(x)), x̃ = PGD on CE (random start)."""

    name = VANILLA

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [*fe_parameters(model), *classifier_parameters(model)]

    def _forwards(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """(clean logits, adversarial logits). The adversarial forward runs first, as in the
        released code (SPEC 4.1): the BN running statistics see x̃, then x."""
        x_adv = training_attack(model, x, y, self.settings, generator)
        model.train()
        logits_adv = model(x_adv)
        return model(x), logits_adv

    def training_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> StepResult:
        logits_nat, logits_adv = self._forwards(model, x, y, generator)
        ce_nat = mean_cross_entropy(logits_nat, y)
        kl = kl_term(logits_adv, logits_nat, self.settings.divisor_for(x.shape[0]))
        loss = ce_nat + self.settings.beta * kl
        return robust_step_result(
            loss,
            y,
            logits_nat=logits_nat,
            logits_adv=logits_adv,
            ce_nat=ce_nat,
            ce_adv=mean_cross_entropy(logits_adv, y),
            kl=kl,
        )

    def gradient_similarity(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> float:
        """Cosine of ∇θ1 CE(h(x), y) and ∇θ1 KL(h(x̃) ‖ h(x)) (SPEC 4.5)."""

        def objectives() -> tuple[Tensor, Tensor]:
            logits_nat, logits_adv = self._forwards(model, x, y, generator)
            divisor = self.settings.divisor_for(x.shape[0])
            return mean_cross_entropy(logits_nat, y), kl_term(logits_adv, logits_nat, divisor)

        return diagnostics.gradient_similarity(model, objectives)
