"""AutoLoRa (SPEC 4.3, Eq. 5): the natural objective is learned by a LoRa branch, the adversarial
objective by the feature extractor; λ1/λ2 come from the LoRa branch's training accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from autolora.methods.base import (
    Method,
    MethodSettings,
    StepResult,
    kl_term,
    mean_cross_entropy,
    robust_step_result,
    training_attack,
)
from autolora.models import classifier_parameters, fe_parameters, lora_parameters
from autolora.planning.vocabulary import AUTOLORA


class AutoLoRa(Method):
    """Loss = λ1·CE(h_LoRa(x), y) + (1 − λ1)·CE(h(x̃), y) + λ2·KL(h(x̃) ‖ h_LoRa(x))."""

    name = AUTOLORA
    uses_lambda_pass = True

    def __init__(self, settings: MethodSettings) -> None:
        super().__init__(settings)
        self.lambda1: float | None = None
        self.lambda2: float | None = None

    def model_options(self) -> dict:
        return {"lora_rank": self.settings.lora_rank, "lora_blocks": self.settings.lora_blocks}

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [*fe_parameters(model), *lora_parameters(model), *classifier_parameters(model)]

    def set_lambdas(self, lambda1: float, lambda2: float) -> None:
        """Loss weights for the coming epoch (from ``schedules.lambda_weights``)."""
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    def training_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> StepResult:
        if self.lambda1 is None or self.lambda2 is None:
            raise RuntimeError(
                "AutoLoRa.training_step before set_lambdas: measure the LoRa branch's training "
                "accuracy and call set_lambdas(*lambda_weights(accuracy)) before epoch 1"
            )
        x_adv = training_attack(model, x, y, self.settings, generator)
        model.train()
        # Order matters for the shared BN running statistics: clean batch first, then x̃.
        logits_lora = model(x, branch="lora")
        logits_adv = model(x_adv)
        ce_nat = mean_cross_entropy(logits_lora, y)
        ce_adv = mean_cross_entropy(logits_adv, y)
        kl = kl_term(logits_adv, logits_lora, self.settings.divisor_for(x.shape[0]))
        loss = self.lambda1 * ce_nat + (1.0 - self.lambda1) * ce_adv + self.lambda2 * kl
        result = robust_step_result(
            loss,
            y,
            logits_nat=logits_lora,
            logits_adv=logits_adv,
            ce_nat=ce_nat,
            ce_adv=ce_adv,
            kl=kl,
        )
        result.metrics.update(lambda1=self.lambda1, lambda2=self.lambda2)
        return result
