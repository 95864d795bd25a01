"""Attacks (SPEC 3): L-inf PGD and the AutoAttack adapter over pyautoattack 0.2.0."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from torch import nn

from autolora.attacks import autoattack_evaluation, pgd
from autolora.autoattack_variants import REDUCED, STANDARD
from autolora.models import LoRaConv2d, build_model

EPS, STEP = 8 / 255, 2 / 255
NUM_CLASSES = 4


def quadrant_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images whose class is the bright quadrant: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    x = torch.rand(n, 3, 16, 16, generator=generator) * 0.5
    for c in range(NUM_CLASSES):
        row, col = divmod(c, 2)
        x[y == c, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 0.5
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny RobustNet fitted to the quadrant data (train accuracy 100 %)."""
    torch.manual_seed(0)
    x, y = quadrant_data()
    model = build_model("tiny", NUM_CLASSES).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
    return model, x[:16], y[:16]


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained[0])


def eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y).item()


# PGD


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_eps_ball_and_the_unit_box(model, trained, random_start):
    _, x, y = trained
    x_adv = pgd(model, x, y, eps=EPS, step=STEP, steps=10, random_start=random_start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


def test_pgd_raises_the_loss_of_a_trained_model_beyond_random_noise(model, trained):
    _, x, y = trained
    x_adv = pgd(model, x, y, eps=EPS, step=STEP, steps=10, random_start=True)
    noise = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    clean, noisy, adversarial = (
        eval_loss(model, x, y),
        eval_loss(model, noise, y),
        eval_loss(model, x_adv, y),
    )
    assert adversarial > 10 * max(clean, noisy)


def test_one_pgd_step_is_a_clipped_sign_step_of_the_input_gradient(model, trained):
    _, x, y = trained
    model.eval()
    x_in = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_in), y).backward()
    step = 3 * EPS  # larger than eps: the projection must cut it back
    expected = (x + step * x_in.grad.sign()).clamp(x - EPS, x + EPS).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    x_adv = pgd(model, x, y, eps=EPS, step=step, steps=1, random_start=False)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=0)


def test_pgd_matches_a_step_by_step_reading_of_spec_3(model, trained):
    """Random start x + U(-eps, eps) clamped; then per step: sign step, project onto the eps-ball,
    clamp to [0, 1]; eval mode throughout. Images touching 0 and 1 exercise both clamps."""
    _, x, y = trained
    x = x.clone()
    x[0], x[1] = 0.0, 1.0
    eps, step, steps = 0.0314, 0.00784, 5
    generator = torch.Generator().manual_seed(11)
    x_adv = pgd(
        model.train(), x, y, eps=eps, step=step, steps=steps, random_start=True, generator=generator
    )
    assert model.training

    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(11)) * 2 - 1
    expected = (x + noise * eps).clamp(0, 1)
    reference = copy.deepcopy(model).eval()
    for _ in range(steps):
        expected.requires_grad_(True)
        loss = F.cross_entropy(reference(expected), y)
        (grad,) = torch.autograd.grad(loss, expected)
        expected = expected.detach() + step * grad.sign()
        expected = torch.min(torch.max(expected, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)
    assert not torch.equal(x_adv, x)


def test_pgd_restores_every_module_mode_and_leaves_parameters_and_statistics_alone(model, trained):
    _, x, y = trained
    model.train()
    model.backbone.layer2.eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    model.backbone.fc.weight.grad = torch.ones_like(model.backbone.fc.weight)

    pgd(model, x, y, eps=EPS, step=STEP, steps=3, random_start=True)

    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # eval mode inside: BN statistics untouched
    assert torch.equal(model.backbone.fc.weight.grad, torch.ones_like(model.backbone.fc.weight))
    assert all(
        p.grad is None for n, p in model.named_parameters() if not n.startswith("backbone.fc")
    )


def test_pgd_random_start_is_reproducible_with_a_seeded_generator(model, trained):
    _, x, y = trained

    def attack(seed):
        generator = torch.Generator().manual_seed(seed)
        return pgd(model, x, y, eps=EPS, step=STEP, steps=2, random_start=True, generator=generator)

    torch.testing.assert_close(attack(0), attack(0), rtol=0, atol=0)
    assert not torch.equal(attack(0), attack(1))
    deterministic = pgd(model, x, y, eps=EPS, step=STEP, steps=2, random_start=False)
    torch.testing.assert_close(
        deterministic, pgd(model, x, y, eps=EPS, step=STEP, steps=2, random_start=False)
    )


def test_pgd_random_start_draws_uniform_noise_in_the_ball(model, trained):
    _, x, y = trained
    x_mid = torch.full_like(x, 0.5)  # away from the box edges, so nothing is clamped
    generator = torch.Generator().manual_seed(3)
    start = pgd(
        model, x_mid, y, eps=EPS, step=STEP, steps=0, random_start=True, generator=generator
    )
    offset = (start - x_mid) / EPS
    assert offset.abs().max() <= 1 + 1e-5
    assert abs(offset.mean().item()) < 0.05 and abs(offset.var().item() - 1 / 3) < 0.02


def test_pgd_passes_forward_options_to_the_model():
    model = build_model("tiny", NUM_CLASSES, lora_rank=2).eval()
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, LoRaConv2d):
                conv.lora_B.normal_(std=0.5)
    x, y = quadrant_data(8)
    fe = pgd(model, x, y, eps=EPS, step=STEP, steps=1, random_start=False)
    lora = pgd(
        model,
        x,
        y,
        eps=EPS,
        step=STEP,
        steps=1,
        random_start=False,
        forward_kwargs={"branch": "lora"},
    )
    assert not torch.equal(fe, lora)


# AutoAttack


def linear_problem():
    """A fixed linear classifier on 3x8x8 images; 4 of 20 labels are wrong on purpose."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 192, generator=generator) * 0.1)
        model[1].bias.copy_(torch.randn(10, generator=generator) * 0.1)
    x = torch.rand(20, 3, 8, 8, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return model, x, y


LINEAR_EPS = 0.02
# Pinned from pyautoattack 0.2.0 itself (the reference run below) on linear_problem().
PINNED_CLEAN = 80.0
PINNED_ROBUST = 30.0
PINNED_PROGRESSION = [40.0, 30.0, 30.0, 30.0]


def test_autoattack_adapter_matches_the_reference_on_a_fixed_model():
    model, x, y = linear_problem()

    messages = []
    result = autoattack_evaluation(
        model, x, y, eps=LINEAR_EPS, device="cpu", seed=0, log=messages.append
    )

    reference = AutoAttack(
        model.eval(), device="cpu", eps=LINEAR_EPS, norm="Linf", seed=0, version="standard"
    )
    x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        reference_robust = 100 * (model(x_adv).argmax(1) == y).float().mean().item()
        reference_clean = 100 * (model(x).argmax(1) == y).float().mean().item()

    assert result.n == 20
    assert result.clean_accuracy == pytest.approx(reference_clean) == PINNED_CLEAN
    assert result.robust_accuracy == pytest.approx(reference_robust) == PINNED_ROBUST
    assert [p["attack"] for p in result.progression] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [p["robust_accuracy"] for p in result.progression] == PINNED_PROGRESSION
    assert any("robust accuracy after APGD-T" in m for m in messages)


def test_reduced_autoattack_is_standard_autoattack_stopped_after_apgd_t():
    model, x, y = linear_problem()
    messages = []
    reduced = autoattack_evaluation(
        model, x, y, eps=LINEAR_EPS, device="cpu", seed=0, version=REDUCED, log=messages.append
    )
    standard = autoattack_evaluation(model, x, y, eps=LINEAR_EPS, device="cpu", seed=0)

    assert (reduced.version, reduced.attacks) == (REDUCED, ("apgd-ce", "apgd-t"))
    assert (standard.version, standard.attacks) == (
        STANDARD,
        ("apgd-ce", "apgd-t", "fab-t", "square"),
    )
    # The same attacks with standard's settings on the same points: standard's first two stages.
    assert reduced.progression == standard.progression[:2]
    assert reduced.robust_accuracy == standard.progression[1]["robust_accuracy"]
    assert reduced.clean_accuracy == standard.clean_accuracy == PINNED_CLEAN
    assert any("custom version including apgd-ce, apgd-t" in m for m in messages)
    assert not any(attack in m for m in messages for attack in ("FAB-T", "SQUARE"))


def test_reduced_autoattack_runs_apgd_ce_with_standards_single_restart(monkeypatch):
    """pyautoattack's custom version would run APGD-CE with 5 restarts; standard runs 1."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    runs = []

    def counted(cls):
        original = cls.perturb

        def perturb(self, x, y=None, **kwargs):
            runs.append((cls.__name__, self.n_restarts, getattr(self, "n_target_classes", None)))
            return original(self, x, y, **kwargs)

        monkeypatch.setattr(cls, "perturb", perturb)

    counted(APGDAttack)
    counted(APGDAttack_targeted)
    model, x, y = linear_problem()
    for version in (STANDARD, REDUCED):
        runs.clear()
        autoattack_evaluation(model, x, y, eps=LINEAR_EPS, device="cpu", version=version)
        assert set(runs) == {("APGDAttack", 1, None), ("APGDAttack_targeted", 1, 9)}, version


def test_unknown_autoattack_variant_is_a_config_error():
    from autolora.errors import ConfigError

    model, x, y = linear_problem()
    with pytest.raises(ConfigError, match="autoattack_version.*standard, apgd-ce\\+apgd-t"):
        autoattack_evaluation(model, x, y, eps=LINEAR_EPS, device="cpu", version="plus")


def test_autoattack_adapter_attacks_the_fe_forward_in_eval_mode_and_restores_state(caplog):
    model = build_model("tiny", 10, lora_rank=2, dual_bn=True)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, LoRaConv2d):
                conv.lora_B.normal_(std=1.0)  # a LoRa branch that would answer differently
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # all clean-correct, so the attacks have work to do
        assert not torch.equal(model(x, branch="lora").argmax(1), y)  # LoRa would score < 100 %
    model.train()
    rng_before = torch.get_rng_state()
    aa_logger = logging.getLogger("auto-attack")
    aa_level, aa_propagate = aa_logger.level, aa_logger.propagate

    with caplog.at_level(logging.INFO, logger="autolora.attacks"):
        result = autoattack_evaluation(model, x, y, eps=8 / 255, device="cpu", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)

    reference_model = copy.deepcopy(model).eval()
    reference = AutoAttack(
        _PlainForward(reference_model),
        device="cpu",
        eps=8 / 255,
        norm="Linf",
        seed=0,
        version="standard",
    )
    _, y_adv = reference.run_standard_evaluation(x, y, batch_size=250)
    assert result.clean_accuracy == 100.0
    assert result.robust_accuracy == pytest.approx(100 * (y_adv == y).float().mean().item())
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert (aa_logger.level, aa_logger.propagate) == (aa_level, aa_propagate)
    assert any(
        r.getMessage().startswith("autoattack: initial accuracy: 100.00%") for r in caplog.records
    )


class _PlainForward(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def test_autoattack_with_fewer_than_ten_classes_is_a_clear_config_error():
    from autolora.errors import ConfigError
    from autolora.models import build_model

    model = build_model("tiny", 4)
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="at least 10 classes.*evaluation.autoattack"):
        autoattack_evaluation(model, x, y, eps=8 / 255, device="cpu")
