"""Gradient similarity (SPEC 4.5): the cosine equals a manual computation through ``.grad``, lies
in [-1, 1], and the diagnostic leaves the model (mode, BN statistics, ``.grad``) untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from autolora import attacks
from autolora.diagnostics import gradient_cosine, preserved_model_state
from autolora.methods import MethodSettings, build_method
from autolora.models import build_model, fe_parameters

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def settings(**overrides) -> MethodSettings:
    values = {"eps": 8 / 255, "step": 2 / 255, "attack_steps": 2, "kl_divisor": 128}
    values.update(overrides)
    return MethodSettings(**values)


def make_batch(batch: int, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 3, 16, 16, generator=generator),
        torch.randint(0, NUM_CLASSES, (batch,), generator=generator),
    )


def manual_kl(adv_logits, target_logits, divisor):
    p = F.softmax(target_logits, dim=1)
    return (p * (p.log() - F.log_softmax(adv_logits, dim=1))).sum() / divisor


def cosine_through_grad(model, natural_loss, adversarial_loss) -> float:
    """The reference path: backward() into .grad, flatten, torch's cosine_similarity."""
    params = fe_parameters(model)

    def flat_grad(loss, retain):
        for p in model.parameters():
            p.grad = None
        loss.backward(retain_graph=retain)
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
        )

    g_nat = flat_grad(natural_loss, True)
    g_adv = flat_grad(adversarial_loss, False)
    return F.cosine_similarity(g_nat.double(), g_adv.double(), dim=0).item()


def pgd_like_training(model, x, y, s, seed):
    return attacks.pgd(
        model,
        x,
        y,
        eps=s.eps,
        step=s.step,
        steps=s.attack_steps,
        random_start=True,
        generator=torch.Generator().manual_seed(seed),
    )


def test_gradient_cosine_of_known_gradients():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    unused = torch.nn.Parameter(torch.tensor([5.0]))
    a, b = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 2.0, 2.0])
    cosine = gradient_cosine((w * a).sum(), (w * b).sum(), [w, unused])
    assert cosine == pytest.approx(2.0 / (2**0.5 * 8**0.5))
    assert gradient_cosine((w * a).sum(), (-w * a).sum(), [w]) == pytest.approx(-1.0)
    assert gradient_cosine((w * a).sum(), (unused * 2).sum(), [w, unused]) == pytest.approx(0.0)
    assert w.grad is None and unused.grad is None


def test_preserved_model_state_restores_buffers_and_mode():
    model = build_model("tiny", NUM_CLASSES).eval()
    before = {n: b.clone() for n, b in model.named_buffers()}
    with preserved_model_state(model):
        model.train()
        model(torch.rand(4, 3, 16, 16))
        assert not torch.equal(model.backbone.bn1.running_mean, before["backbone.bn1.running_mean"])
    assert not model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_vanilla_gradient_similarity_equals_manual_cosine_and_leaves_model_alone():
    s = settings()
    method = build_method("vanilla", s)
    torch.manual_seed(0)
    model = build_model("tiny", NUM_CLASSES).train()
    reference = copy.deepcopy(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = make_batch(6)
    similarity = method.gradient_similarity(model, x, y, generator=torch.Generator().manual_seed(5))
    assert -1.0 <= similarity <= 1.0

    x_adv = pgd_like_training(reference, x, y, s, seed=5)
    reference.train()
    logits_nat, logits_adv = reference(x), reference(x_adv)
    expected = cosine_through_grad(
        reference, F.cross_entropy(logits_nat, y), manual_kl(logits_adv, logits_nat, 128)
    )
    assert similarity == pytest.approx(expected, abs=1e-5)

    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


@pytest.mark.parametrize("gamma_on", ["fixed", "adaptive"])
def test_twins_gradient_similarity_equals_manual_cosine_with_halves(gamma_on):
    """γ sits on the half the loss puts it on (SPEC 4.5): the fixed half under `paper`, the
    adaptive half (the paper's Eq. 4) under `clean`."""
    gamma = 2.0
    s = settings(twins_gamma=gamma, twins_gamma_on=gamma_on)
    method = build_method("twins", s)
    torch.manual_seed(1)
    model = build_model("tiny", NUM_CLASSES, dual_bn=True).train()
    reference = copy.deepcopy(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = make_batch(7)
    similarity = method.gradient_similarity(model, x, y, generator=torch.Generator().manual_seed(9))
    assert -1.0 <= similarity <= 1.0

    x_adv = pgd_like_training(reference, x, y, s, seed=9)
    reference.train()
    fixed, adaptive = slice(0, 3), slice(3, 7)

    def manual_cosine(w_fixed: float, w_adaptive: float) -> float:
        nat_f, nat_a = reference(x[fixed], bn="fixed"), reference(x[adaptive])
        adv_f, adv_a = reference(x_adv[fixed], bn="fixed"), reference(x_adv[adaptive])
        ce_f, ce_a = F.cross_entropy(nat_f, y[fixed]), F.cross_entropy(nat_a, y[adaptive])
        kl_f, kl_a = manual_kl(adv_f, nat_f, 128), manual_kl(adv_a, nat_a, 128)
        return cosine_through_grad(
            reference, w_fixed * ce_f + w_adaptive * ce_a, w_fixed * kl_f + w_adaptive * kl_a
        )

    cosines = {"fixed": manual_cosine(gamma, 1.0), "adaptive": manual_cosine(1.0, gamma)}
    assert similarity == pytest.approx(cosines[gamma_on], abs=1e-5)
    other = "adaptive" if gamma_on == "fixed" else "fixed"
    assert abs(cosines[gamma_on] - cosines[other]) > 1e-3  # the placement is visible
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def test_gradient_similarity_is_not_defined_for_autolora():
    method = build_method("autolora", settings())
    model = build_model("tiny", NUM_CLASSES, **method.model_options())
    x, y = make_batch(4)
    with pytest.raises(NotImplementedError, match="vanilla and twins"):
        method.gradient_similarity(model, x, y, generator=torch.Generator().manual_seed(0))
