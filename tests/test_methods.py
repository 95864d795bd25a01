"""The three methods' training steps (SPEC 4.1–4.3): the KL term, losses recomputed by hand,
gradient routing, BN statistics, and that a few steps learn a separable toy problem."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autolora import attacks
from autolora.errors import ConfigError
from autolora.methods import METHODS, MethodSettings, StepResult, build_method, kl_term
from autolora.models import (
    DualBatchNorm2d,
    LoRaConv2d,
    build_model,
    classifier_parameters,
    fe_parameters,
    lora_parameters,
)
from autolora.planning.cells import resolve_cell
from autolora.schedules import lambda_weights
from autolora.train import method_settings

NUM_CLASSES = 3
IMAGE_SIZE = 16
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def settings(**overrides) -> MethodSettings:
    values = {"eps": 8 / 255, "step": 2 / 255, "attack_steps": 2, "kl_divisor": None}
    values.update(overrides)
    return MethodSettings(**values)


def make_model(method, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", NUM_CLASSES, **method.model_options())


def make_batch(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        torch.randint(0, NUM_CLASSES, (batch,), generator=generator),
    )


def separable_batch(batch: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c images are bright in colour channel c, dim elsewhere, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(batch) % NUM_CLASSES
    x = 0.2 + 0.05 * torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    x[torch.arange(batch), y] += 0.6
    return x.clamp(0, 1), y


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hand_kl(adv_logits: torch.Tensor, target_logits: torch.Tensor, divisor: int) -> float:
    """Σ_i Σ_c p_ic (log p_ic − log q_ic) / divisor with p = softmax(target), q = softmax(adv)."""
    total = 0.0
    for adv_row, target_row in zip(adv_logits.tolist(), target_logits.tolist(), strict=True):
        log_z_adv = math.log(sum(math.exp(v) for v in adv_row))
        log_z_target = math.log(sum(math.exp(v) for v in target_row))
        for adv_value, target_value in zip(adv_row, target_row, strict=True):
            log_p = target_value - log_z_target
            log_q = adv_value - log_z_adv
            total += math.exp(log_p) * (log_p - log_q)
    return total / divisor


def hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over rows of log Σ_c exp(z_c) − z_y."""
    losses = [
        math.log(sum(math.exp(v) for v in row)) - row[label]
        for row, label in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    return sum(losses) / len(losses)


def attack_like_training(model, x, y, s: MethodSettings, generator, **forward_kwargs):
    extra = {"forward_kwargs": forward_kwargs} if forward_kwargs else {}
    return attacks.pgd(
        model,
        x,
        y,
        eps=s.eps,
        step=s.step,
        steps=s.attack_steps,
        random_start=True,
        generator=generator,
        **extra,
    )


def bn_buffers(model) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if "running" in name or "num_batches" in name
    }


def is_zero(parameter: torch.nn.Parameter) -> bool:
    return parameter.grad is None or bool(torch.all(parameter.grad == 0))


# KL term


def test_kl_term_equals_hand_computation():
    generator = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    target = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    assert kl_term(adv, target, 4).item() == pytest.approx(hand_kl(adv, target, 4), rel=1e-12)
    assert kl_term(adv, adv, 4).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_term_divisor_on_a_short_batch():
    generator = torch.Generator().manual_seed(1)
    adv = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    target = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    total = hand_kl(adv, target, 1)
    configured, actual = settings(kl_divisor=128), settings(kl_divisor=None)
    assert configured.divisor_for(3) == 128
    assert actual.divisor_for(3) == 3
    assert kl_term(adv, target, configured.divisor_for(3)).item() == pytest.approx(total / 128)
    assert kl_term(adv, target, actual.divisor_for(3)).item() == pytest.approx(total / 3)


def test_kl_term_target_is_not_detached():
    generator = torch.Generator().manual_seed(2)
    adv = torch.randn(2, 3, generator=generator, requires_grad=True)
    target = torch.randn(2, 3, generator=generator, requires_grad=True)
    kl_term(adv, target, 2).backward()
    assert adv.grad.abs().sum() > 0
    assert target.grad.abs().sum() > 0


def test_kl_term_rejects_zero_divisor():
    with pytest.raises(ValueError):
        kl_term(torch.zeros(1, 2), torch.zeros(1, 2), 0)


# Construction


def test_build_method_names_and_model_options():
    assert set(METHODS) == {"vanilla", "twins", "autolora"}
    assert build_method("vanilla", settings()).model_options() == {}
    assert build_method("twins", settings()).model_options() == {"dual_bn": True}
    assert build_method("autolora", settings(lora_rank=4)).model_options() == {
        "lora_rank": 4,
        "lora_blocks": "all",
    }
    last = settings(lora_rank=4, lora_blocks="last")
    assert build_method("autolora", last).model_options()["lora_blocks"] == "last"
    assert build_method("autolora", settings()).uses_lambda_pass
    assert not build_method("twins", settings()).uses_lambda_pass
    with pytest.raises(ConfigError, match="method"):
        build_method("trades", settings())


@pytest.mark.parametrize(
    "bad",
    [
        {"kl_divisor": 0},
        {"attack_steps": -1},
        {"lora_rank": 0},
        {"lora_blocks": "first"},
        {"twins_gamma_on": "both"},
    ],
)
def test_method_settings_reject_bad_values(bad):
    with pytest.raises(ConfigError):
        settings(**bad)


@pytest.mark.parametrize("name", ["vanilla", "twins", "autolora"])
def test_trainable_parameters_cover_the_model_once(name):
    method = build_method(name, settings())
    model = make_model(method)
    trainable = method.trainable_parameters(model)
    assert len({id(p) for p in trainable}) == len(trainable)
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters()}


def test_set_lambdas_only_for_autolora():
    with pytest.raises(TypeError):
        build_method("vanilla", settings()).set_lambdas(0.5, 3.0)


def test_autolora_refuses_a_step_before_set_lambdas():
    method = build_method("autolora", settings())
    model = make_model(method).train()
    x, y = make_batch(4)
    with pytest.raises(RuntimeError, match="set_lambdas"):
        method.training_step(model, x, y, generator=seeded())


# Vanilla


@pytest.mark.parametrize("kl_divisor", [None, 128])
def test_vanilla_loss_equals_hand_recomputation(kl_divisor):
    s = settings(kl_divisor=kl_divisor)
    method = build_method("vanilla", s)
    model = make_model(method).train()
    reference = copy.deepcopy(model)
    x, y = make_batch(6)
    result = method.training_step(model, x, y, generator=seeded())
    assert isinstance(result, StepResult)

    x_adv = attack_like_training(reference, x, y, s, seeded())
    assert reference.training
    with torch.no_grad():
        logits_nat, logits_adv = reference(x), reference(x_adv)
    divisor = kl_divisor or 6
    expected = hand_ce(logits_nat, y) + 6.0 * hand_kl(logits_adv, logits_nat, divisor)
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert result.metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.metrics["ce_nat"] == pytest.approx(hand_ce(logits_nat, y), rel=1e-5)
    assert result.metrics["ce_adv"] == pytest.approx(hand_ce(logits_adv, y), rel=1e-5)
    clean_acc = 100.0 * (logits_nat.argmax(1) == y).float().mean().item()
    assert result.metrics["clean_acc"] == pytest.approx(clean_acc)
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert result.loss.requires_grad
    # the loss is returned un-backpropagated
    assert all(p.grad is None for p in model.parameters())


def optimizer_step(method, model, x, y, generator) -> None:
    optimizer = torch.optim.SGD(method.trainable_parameters(model), lr=0.01, momentum=0.9)
    method.training_step(model, x, y, generator=generator).loss.backward()
    optimizer.step()


def hand_step(method, model, x, y, x_adv, order, **forward_kwargs) -> None:
    """One step written out: train mode, the two forwards in ``order``, the loss, SGD."""
    optimizer = torch.optim.SGD(method.trainable_parameters(model), lr=0.01, momentum=0.9)
    model.train()
    if order == "adversarial first":
        logits_adv = model(x_adv, **forward_kwargs)
        logits_nat = model(x, **forward_kwargs)
    else:
        logits_nat = model(x, **forward_kwargs)
        logits_adv = model(x_adv, **forward_kwargs)
    divisor = method.settings.divisor_for(x.shape[0])
    loss = torch.nn.functional.cross_entropy(logits_nat, y) + method.settings.beta * kl_term(
        logits_adv, logits_nat, divisor
    )
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize(("name", "forward_kwargs"), [("vanilla", {}), ("twins", {"bn": "mix"})])
def test_baseline_step_forwards_the_adversarial_batch_first(name, forward_kwargs):
    """SPEC 4.1/4.2 (released code): h(x̃) runs before h(x), so the BN running statistics after
    a step are those of a step that forwards x̃ first, not those of one that forwards x first."""
    s = settings(kl_divisor=128)
    method = build_method(name, s)
    model = make_model(method).train()
    adversarial_first, clean_first = copy.deepcopy(model), copy.deepcopy(model)
    x, y = make_batch(6)
    optimizer_step(method, model, x, y, seeded())

    attack_kwargs = {"bn": "adaptive"} if name == "twins" else {}
    x_adv = attack_like_training(adversarial_first, x, y, s, seeded(), **attack_kwargs)
    hand_step(method, adversarial_first, x, y, x_adv, "adversarial first", **forward_kwargs)
    hand_step(method, clean_first, x, y, x_adv, "clean first", **forward_kwargs)

    means = [n for n in bn_buffers(model) if n.endswith("running_mean") and ".fixed." not in n]
    assert len(means) >= 10
    ours, reference, other = (
        bn_buffers(model),
        bn_buffers(adversarial_first),
        bn_buffers(clean_first),
    )
    for buffer in ours:
        torch.testing.assert_close(ours[buffer], reference[buffer], rtol=0, atol=0, msg=buffer)
    assert all(not torch.allclose(ours[n], other[n], rtol=1e-6, atol=0) for n in means)


# TWINS


@pytest.mark.parametrize(("batch", "kl_divisor"), [(6, None), (5, None), (5, 128)])
def test_twins_loss_equals_hand_recomputation_from_separate_forwards(batch, kl_divisor):
    gamma = 3.0
    s = settings(twins_gamma=gamma, kl_divisor=kl_divisor)
    method = build_method("twins", s)
    model = make_model(method).train()
    # make the two BN copies differ, as they do after training
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DualBatchNorm2d):
                module.fixed.weight.mul_(1.5)
                module.fixed.running_mean.add_(0.1)
    reference = copy.deepcopy(model)
    x, y = make_batch(batch)
    result = method.training_step(model, x, y, generator=seeded())

    x_adv = attack_like_training(reference, x, y, s, seeded(), bn="adaptive")
    half = batch // 2
    fixed_rows, adaptive_rows = slice(0, half), slice(half, batch)
    with torch.no_grad():
        nat_fixed = reference(x[fixed_rows], bn="fixed")
        nat_adaptive = reference(x[adaptive_rows])
        adv_fixed = reference(x_adv[fixed_rows], bn="fixed")
        adv_adaptive = reference(x_adv[adaptive_rows])
    divisor = kl_divisor or batch
    expected = (
        gamma * hand_ce(nat_fixed, y[fixed_rows])
        + hand_ce(nat_adaptive, y[adaptive_rows])
        + 6.0
        * (
            gamma * hand_kl(adv_fixed, nat_fixed, divisor)
            + hand_kl(adv_adaptive, nat_adaptive, divisor)
        )
    )
    assert result.loss.item() == pytest.approx(expected, rel=1e-4)
    assert result.metrics["kl_fixed"] == pytest.approx(
        hand_kl(adv_fixed, nat_fixed, divisor), rel=1e-4, abs=1e-7
    )


@pytest.mark.parametrize(("protocol", "gamma_on"), [("paper", "fixed"), ("clean", "adaptive")])
def test_twins_gamma_weights_the_half_the_protocol_names(protocol, gamma_on):
    """SPEC 4.2: with CUB's γ = 3, `paper` (released code) multiplies the fixed-BN half by γ,
    `clean` (the paper's Eq. 2) the adaptive half."""
    config = resolve_cell(
        {
            "protocol": protocol,
            "arch": "tiny",
            "dataset": "cub",
            "method": "twins",
            "overrides": {"attack": {"train_steps": 2}},
        }
    )
    assert (config.twins_gamma, config.twins_gamma_on) == (3.0, gamma_on)
    method = build_method("twins", method_settings(config))
    model = make_model(method).train()
    with torch.no_grad():  # the halves' terms differ, so the placement of γ shows in the loss
        for module in model.modules():
            if isinstance(module, DualBatchNorm2d):
                module.fixed.weight.mul_(1.5)
                module.fixed.running_mean.add_(0.1)
    x, y = make_batch(6)
    result = method.training_step(model, x, y, generator=seeded())
    m = result.metrics
    weighted = {
        "fixed": 3 * m["ce_fixed"] + m["ce_adaptive"] + 6 * (3 * m["kl_fixed"] + m["kl_adaptive"]),
        "adaptive": m["ce_fixed"]
        + 3 * m["ce_adaptive"]
        + 6 * (m["kl_fixed"] + 3 * m["kl_adaptive"]),
    }
    other = "adaptive" if gamma_on == "fixed" else "fixed"
    assert result.loss.item() == pytest.approx(weighted[gamma_on], rel=1e-5)
    assert result.loss.item() != pytest.approx(weighted[other], rel=1e-3)


def test_twins_steps_keep_fixed_bn_statistics_and_move_adaptive_ones():
    method = build_method("twins", settings())
    model = make_model(method).train()
    before = bn_buffers(model)
    fixed_weights = {name: p.clone() for name, p in model.named_parameters() if ".fixed." in name}
    optimizer = torch.optim.SGD(method.trainable_parameters(model), lr=0.05, momentum=0.9)
    generator = seeded()
    for step in range(3):
        x, y = make_batch(6, seed=10 + step)
        optimizer.zero_grad()
        method.training_step(model, x, y, generator=generator).loss.backward()
        optimizer.step()
    after = bn_buffers(model)
    fixed = [n for n in before if ".fixed." in n]
    adaptive = [n for n in before if ".adaptive." in n and "running" in n]
    assert fixed and adaptive
    for name in fixed:
        assert torch.equal(before[name], after[name]), name
    for name in adaptive:
        assert not torch.equal(before[name], after[name]), name
    # the fixed copies' affine parameters are trained
    assert any(
        not torch.equal(p, fixed_weights[n])
        for n, p in model.named_parameters()
        if n in fixed_weights
    )


# AutoLoRa


def autolora_backward(lambda1: float, lambda2: float):
    method = build_method("autolora", settings())
    model = make_model(method).train()
    method.set_lambdas(lambda1, lambda2)
    x, y = make_batch(6)
    result = method.training_step(model, x, y, generator=seeded())
    result.loss.backward()
    return model, result


def test_autolora_natural_term_reaches_lora_and_classifier_only():
    model, _ = autolora_backward(1.0, 0.0)
    assert all(is_zero(p) for p in fe_parameters(model))
    bn_affine = [p for n, p in model.named_parameters() if "bn" in n or "downsample.1" in n]
    assert bn_affine and all(is_zero(p) for p in bn_affine)
    lora_b = [p for n, p in model.named_parameters() if n.endswith("lora_B")]
    assert any(not is_zero(p) for p in lora_b)
    assert all(not is_zero(p) for p in classifier_parameters(model))


def test_autolora_adversarial_term_reaches_fe_and_classifier_only():
    model, _ = autolora_backward(0.0, 0.0)
    assert all(is_zero(p) for p in lora_parameters(model))
    assert sum(float(p.grad.abs().sum()) for p in fe_parameters(model)) > 0
    assert all(not is_zero(p) for p in classifier_parameters(model))


def test_autolora_kl_term_reaches_lora_through_the_undetached_soft_label():
    # λ1 = 1 removes CE_adv; λ2 > 0 adds the KL. Compare LoRa gradients with the λ2 = 0 run.
    model_kl, _ = autolora_backward(1.0, 6.0)
    model_ce, _ = autolora_backward(1.0, 0.0)
    kl_grads = torch.cat([p.grad.flatten() for p in lora_parameters(model_kl)])
    ce_grads = torch.cat([p.grad.flatten() for p in lora_parameters(model_ce)])
    assert not torch.allclose(kl_grads, ce_grads)
    # and the KL puts gradient on theta1 through the adversarial forward
    assert sum(float(p.grad.abs().sum()) for p in fe_parameters(model_kl)) > 0


def test_autolora_loss_equals_hand_recomputation():
    lambda1, lambda2 = lambda_weights(0.4)
    s = settings(kl_divisor=128)
    method = build_method("autolora", s)
    model = make_model(method).train()
    with torch.no_grad():  # a non-zero LoRa update, so the two branches differ
        for p in lora_parameters(model):
            p.normal_(0, 0.05)
    reference = copy.deepcopy(model)
    method.set_lambdas(lambda1, lambda2)
    x, y = make_batch(5)
    result = method.training_step(model, x, y, generator=seeded())

    x_adv = attack_like_training(reference, x, y, s, seeded())
    with torch.no_grad():
        logits_lora = reference(x, branch="lora")
        logits_adv = reference(x_adv)
    expected = (
        lambda1 * hand_ce(logits_lora, y)
        + (1 - lambda1) * hand_ce(logits_adv, y)
        + lambda2 * hand_kl(logits_adv, logits_lora, 128)
    )
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert result.metrics["lambda1"] == pytest.approx(0.6)
    assert result.metrics["lambda2"] == pytest.approx(2.4)


def test_autolora_updates_bn_running_stats_twice_clean_then_adversarial():
    method = build_method("autolora", settings())
    model = make_model(method).train()
    method.set_lambdas(0.5, 3.0)
    stem_bn = model.backbone.bn1
    mean_before = stem_bn.running_mean.clone()
    var_before = stem_bn.running_var.clone()
    count_before = int(stem_bn.num_batches_tracked)
    backbone_inputs, stem_bn_inputs = [], []
    hooks = [
        model.backbone.register_forward_pre_hook(
            lambda m, args: backbone_inputs.append(args[0].detach().clone()) if m.training else None
        ),
        stem_bn.register_forward_pre_hook(
            lambda m, args: stem_bn_inputs.append(args[0].detach().clone()) if m.training else None
        ),
    ]
    x, y = make_batch(6)
    method.training_step(model, x, y, generator=seeded())
    for hook in hooks:
        hook.remove()

    assert len(stem_bn_inputs) == 2
    assert int(stem_bn.num_batches_tracked) == count_before + 2
    # first train-mode forward is the clean batch, the second the adversarial one
    assert torch.allclose(backbone_inputs[0], (x - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-6)
    x_adv_normalised = backbone_inputs[1]
    assert not torch.allclose(x_adv_normalised, backbone_inputs[0])
    # running statistics = two momentum updates, by hand
    momentum = stem_bn.momentum
    mean, var = mean_before, var_before
    for features in stem_bn_inputs:
        batch_mean = features.mean(dim=(0, 2, 3))
        batch_var = features.var(dim=(0, 2, 3), unbiased=True)
        mean = (1 - momentum) * mean + momentum * batch_mean
        var = (1 - momentum) * var + momentum * batch_var
    assert torch.allclose(stem_bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(stem_bn.running_var, var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("lora_blocks", ["last", "all"])
def test_autolora_loss_reaches_the_lora_matrices_of_the_blocks_lora_blocks_names(arch, lora_blocks):
    """SPEC 4.3: under `last` the AutoLoRa loss puts gradient on the LoRa matrices of the last
    block of each stage and on no other; under `all` on every block's."""
    method = build_method("autolora", settings(attack_steps=1, lora_blocks=lora_blocks))
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES, **method.model_options()).train()
    with torch.no_grad():  # non-zero B, so that A receives gradient too
        for module in model.modules():
            if isinstance(module, LoRaConv2d):
                module.lora_B.normal_(0, 0.01)
    method.set_lambdas(0.5, 3.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    optimizer = torch.optim.SGD(
        method.trainable_parameters(model), lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    x, y = make_batch(2, seed=4)
    x = torch.nn.functional.interpolate(x, size=32)
    method.training_step(model, x, y, generator=seeded()).loss.backward()
    optimizer.step()
    reached = set()
    for name, module in model.backbone.named_modules():
        if isinstance(module, LoRaConv2d):
            got = [not is_zero(p) for p in (module.lora_A, module.lora_B)]
            assert len(set(got)) == 1, name  # A and B of a conv: both or neither
            if got[0]:
                reached.add(name.rpartition(".")[0])
    blocks = model.backbone
    last = {f"layer{i}.{len(getattr(blocks, f'layer{i}')) - 1}" for i in range(1, 5)}
    every = {n.rpartition(".")[0] for n, m in blocks.named_modules() if isinstance(m, LoRaConv2d)}
    assert reached == (last if lora_blocks == "last" else every)
    assert len(every) > len(last)
    # an SGD step with weight decay leaves the matrices without a gradient exactly as they were
    for name, p in model.named_parameters():
        if "lora_" in name:
            block = name.rsplit(".", 2)[0].removeprefix("backbone.")
            assert torch.equal(p, before[name]) == (block not in reached), name


# Learning


@pytest.mark.parametrize("name", ["vanilla", "twins", "autolora"])
def test_a_few_steps_reduce_the_loss_on_a_separable_problem(name):
    method = build_method(name, settings(eps=2 / 255, step=1 / 255, attack_steps=1))
    model = make_model(method).train()
    if method.uses_lambda_pass:
        method.set_lambdas(*lambda_weights(0.5))
    # small LR: the toy's fixed BN (TWINS) holds untrained statistics, a large LR diverges
    optimizer = torch.optim.SGD(method.trainable_parameters(model), lr=0.005, momentum=0.9)
    x, y = separable_batch(12)
    generator = seeded()
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        result = method.training_step(model, x, y, generator=generator)
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


# Exact gradient routing (SPEC 4.3) and the host synchronisations of a step (issue 8)


def test_autolora_gradients_equal_the_spec_routing_term_by_term():
    """θ1 ← (1−λ1)·CE_adv + λ2·KL, LoRa ← λ1·CE_nat + λ2·KL, classifier ← all three: each group's
    gradient of the full loss equals the gradient of its own terms taken separately."""
    lambda1, lambda2 = 0.3, 4.2
    s = settings(kl_divisor=16)
    method = build_method("autolora", s)
    model = make_model(method).train()
    with torch.no_grad():  # the two branches differ, so every term has a gradient of its own
        for p in lora_parameters(model):
            p.normal_(0, 0.05)
    reference = copy.deepcopy(model)
    method.set_lambdas(lambda1, lambda2)
    x, y = make_batch(6)
    method.training_step(model, x, y, generator=seeded()).loss.backward()

    x_adv = attack_like_training(reference, x, y, s, seeded())
    logits_lora, logits_adv = reference(x, branch="lora"), reference(x_adv)
    ce_nat = torch.nn.functional.cross_entropy(logits_lora, y)
    ce_adv = torch.nn.functional.cross_entropy(logits_adv, y)
    kl = (
        torch.nn.functional.kl_div(
            torch.log_softmax(logits_adv, 1), torch.softmax(logits_lora, 1), reduction="sum"
        )
        / 16
    )
    groups = {
        "theta1": (fe_parameters, (1 - lambda1) * ce_adv + lambda2 * kl),
        "lora": (lora_parameters, lambda1 * ce_nat + lambda2 * kl),
        "classifier": (
            classifier_parameters,
            lambda1 * ce_nat + (1 - lambda1) * ce_adv + lambda2 * kl,
        ),
    }
    for group, (parameters_of, objective) in groups.items():
        expected = torch.autograd.grad(
            objective, parameters_of(reference), retain_graph=True, allow_unused=True
        )
        for p, g in zip(parameters_of(model), expected, strict=True):
            g = torch.zeros_like(p) if g is None else g
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7, msg=group)
    assert any(p.grad.abs().sum() > 0 for p in lora_parameters(model))


SYNCING_TENSOR_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu")


@pytest.mark.parametrize("name", ["vanilla", "twins", "autolora"])
def test_a_training_step_reads_values_back_from_the_device_once(name, monkeypatch):
    """Every way a tensor's value reaches Python would stall a GPU; one (the metrics) is allowed."""
    method = build_method(name, settings(kl_divisor=128))
    model = make_model(method).train()
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)
    x, y = make_batch(6)
    calls = []
    for attribute in SYNCING_TENSOR_METHODS:
        original = getattr(torch.Tensor, attribute)

        def counted(self, *args, _original=original, _name=attribute, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, attribute, counted)
    result = method.training_step(model, x, y, generator=seeded())
    monkeypatch.undo()
    assert calls == ["tolist"]
    assert all(isinstance(v, float) for v in result.metrics.values())
