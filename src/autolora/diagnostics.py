"""Gradient similarity (SPEC 4.5, Eq. 3–4): the cosine between the gradients, with respect to the
feature extractor θ1, of a method's natural and adversarial objectives on one training batch.

The methods define the two objectives (``method.gradient_similarity`` delegates here); this module
takes the gradients without touching ``.grad`` and leaves the model as it found it (mode and BN
running statistics), so the diagnostic does not change training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from autolora.models import fe_parameters


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running mean/var, batch counters) and the train/eval mode on exit."""
    was_training = model.training
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)
        model.train(was_training)


def gradient_cosine(
    natural_loss: Tensor, adversarial_loss: Tensor, parameters: Sequence[nn.Parameter]
) -> float:
    """Cosine similarity of the flattened gradients of two losses w.r.t. ``parameters``.

    A parameter a loss does not reach counts as a zero gradient; if either gradient is zero the
    similarity is 0.
    """
    parameters = list(parameters)
    natural = torch.autograd.grad(natural_loss, parameters, retain_graph=True, allow_unused=True)
    adversarial = torch.autograd.grad(adversarial_loss, parameters, allow_unused=True)
    sums = torch.zeros(3, dtype=torch.float64, device=natural_loss.device)
    for parameter, g_nat, g_adv in zip(parameters, natural, adversarial, strict=True):
        g_nat = (torch.zeros_like(parameter) if g_nat is None else g_nat).double()
        g_adv = (torch.zeros_like(parameter) if g_adv is None else g_adv).double()
        sums += torch.stack([(g_nat * g_adv).sum(), (g_nat * g_nat).sum(), (g_adv * g_adv).sum()])
    dot, natural_sq, adversarial_sq = sums.tolist()
    norm = (natural_sq * adversarial_sq) ** 0.5
    return dot / norm if norm > 0 else 0.0


def gradient_similarity(model: nn.Module, objectives: Callable[[], tuple[Tensor, Tensor]]) -> float:
    """Cosine between ∇θ1 of the natural and the adversarial objective that ``objectives()``
    returns (computed in training mode, batch-level); θ1 = the FE parameters, classifier excluded."""
    parameters = [p for p in fe_parameters(model) if p.requires_grad]
    with preserved_model_state(model):
        model.train()
        natural_loss, adversarial_loss = objectives()
        return gradient_cosine(natural_loss, adversarial_loss, parameters)
