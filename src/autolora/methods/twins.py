"""TWINS (SPEC 4.2, Eq. 2): dual BN; the first half of each batch is normalised by the fixed
(pre-trained statistics) BN, the second half by the adaptive BN."""

from __future__ import annotations

from dataclasses import dataclass

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
from autolora.planning.vocabulary import TWINS


@dataclass(frozen=True)
class HalfTerms:
    """CE on the clean rows and KL(adv ‖ clean) (divided by the full divisor) of one half."""

    ce: Tensor
    kl: Tensor


class Twins(Method):
    """Loss = γ·CE_F + CE_A + β·[γ·KL_F + KL_A] with ``twins_gamma_on="fixed"`` (released code),
    CE_F + γ·CE_A + β·[KL_F + γ·KL_A] with ``"adaptive"`` (the paper's Eq. 2);
    F = rows [0, B//2) (fixed BN), A = the rest."""

    name = TWINS

    def model_options(self) -> dict:
        return {"dual_bn": True}

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [*fe_parameters(model), *classifier_parameters(model)]

    def _forwards(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        # Adversarial examples on the full batch, eval mode, adaptive BN (SPEC 4.2).
        x_adv = training_attack(model, x, y, self.settings, generator, {"bn": "adaptive"})
        model.train()
        # The adversarial "mix" forward first, then the clean one, as in the released code
        # (SPEC 4.2): the adaptive BN's running statistics see x̃, then x.
        logits_adv = model(x_adv, bn="mix")
        return model(x, bn="mix"), logits_adv

    def _halves(
        self, logits_nat: Tensor, logits_adv: Tensor, y: Tensor
    ) -> tuple[HalfTerms, HalfTerms]:
        batch = y.shape[0]
        half = batch // 2  # odd batch: the fixed half rounds down, as in the model's "mix"
        divisor = self.settings.divisor_for(batch)

        def terms(rows: slice) -> HalfTerms:
            return HalfTerms(
                mean_cross_entropy(logits_nat[rows], y[rows]),
                kl_term(logits_adv[rows], logits_nat[rows], divisor),
            )

        return terms(slice(0, half)), terms(slice(half, batch))

    def half_weights(self) -> tuple[float, float]:
        """(weight of the fixed half, weight of the adaptive half): γ on the half
        ``twins_gamma_on`` names, 1 on the other (SPEC 4.2)."""
        gamma = self.settings.twins_gamma
        return (gamma, 1.0) if self.settings.twins_gamma_on == "fixed" else (1.0, gamma)

    def training_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> StepResult:
        logits_nat, logits_adv = self._forwards(model, x, y, generator)
        fixed, adaptive = self._halves(logits_nat, logits_adv, y)
        w_fixed, w_adaptive = self.half_weights()
        beta = self.settings.beta
        loss = w_fixed * fixed.ce + w_adaptive * adaptive.ce
        loss = loss + beta * (w_fixed * fixed.kl + w_adaptive * adaptive.kl)
        return robust_step_result(
            loss,
            y,
            logits_nat=logits_nat,
            logits_adv=logits_adv,
            ce_nat=mean_cross_entropy(logits_nat, y),
            ce_adv=mean_cross_entropy(logits_adv, y),
            kl=fixed.kl + adaptive.kl,
            terms={
                "ce_fixed": fixed.ce,
                "ce_adaptive": adaptive.ce,
                "kl_fixed": fixed.kl,
                "kl_adaptive": adaptive.kl,
            },
        )

    def gradient_similarity(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None
    ) -> float:
        """Cosine of ∇θ1 of the natural and the adversarial objective, γ on the same half as in the
        loss (SPEC 4.5): [γ·CE_F + CE_A] and [γ·KL_F + KL_A] under ``twins_gamma_on="fixed"``,
        [CE_F + γ·CE_A] and [KL_F + γ·KL_A] (the paper's Eq. 4) under ``"adaptive"``."""
        w_fixed, w_adaptive = self.half_weights()

        def objectives() -> tuple[Tensor, Tensor]:
            logits_nat, logits_adv = self._forwards(model, x, y, generator)
            fixed, adaptive = self._halves(logits_nat, logits_adv, y)
            return (
                w_fixed * fixed.ce + w_adaptive * adaptive.ce,
                w_fixed * fixed.kl + w_adaptive * adaptive.kl,
            )

        return diagnostics.gradient_similarity(model, objectives)
