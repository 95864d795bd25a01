"""Models: backbones, the LoRa branch (SPEC 4.3), dual BN (SPEC 4.2), weight loading (SPEC 1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from autolora.errors import DataError
from autolora.models import (
    DualBatchNorm2d,
    LoRaConv2d,
    build_model,
    classifier_parameters,
    count_lora_parameters,
    count_used_lora_parameters,
    fe_parameters,
    load_backbone_state,
    lora_parameters,
    parameter_counts,
    used_lora_parameters,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def images(batch: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labels(batch: int = 4, classes: int = 10) -> torch.Tensor:
    return torch.arange(batch) % classes


def randomise_bn_statistics(module: nn.Module, seed: int = 2) -> None:
    """Give every BN non-trivial running statistics and affine, so loading them matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                shape = bn.running_mean.shape
                bn.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                bn.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(shape, generator=generator) * 0.1)


def randomise_lora_b(model: nn.Module, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, LoRaConv2d):
                conv.lora_B.copy_(torch.randn(conv.lora_B.shape, generator=generator) * 0.01)


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


# Parameter counts and where LoRa sits


@pytest.mark.parametrize(("arch", "expected"), [("resnet18", 520_704), ("resnet50", 829_952)])
def test_lora_parameter_count_matches_the_paper(arch, expected):
    assert count_lora_parameters(build_model(arch, 10, lora_rank=8)) == expected


# SPEC 4.3: the blocks that carry the update under `lora_blocks: last` (the released code)
LAST_BLOCKS = {
    "resnet18": ["layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    "resnet50": ["layer1.2", "layer2.3", "layer3.5", "layer4.2"],
    "tiny": ["layer1.0", "layer2.0", "layer3.0", "layer4.0"],  # one block per stage
}


def lora_by_hand(convs, rank: int) -> int:
    """Σ over (C_in, C_out, k) of A (r·k × C_in·k) + B (C_out·k × r·k) = r·k²·(C_in + C_out)."""
    return sum(rank * k * k * (c_in + c_out) for c_in, c_out, k in convs)


def basic_block_convs(c_in: int, width: int) -> list[tuple[int, int, int]]:
    return [(c_in, width, 3), (width, width, 3)]


TINY_CONVS = [
    conv
    for c_in, width in ((8, 8), (8, 16), (16, 32), (32, 64))
    for conv in basic_block_convs(c_in, width)
]
# stem 3x3 conv + BN, block convs + BNs, the three 1x1 shortcuts + BNs (widths 8/16/32/64)
TINY_FE = (
    3 * 8 * 9
    + 2 * 8
    + sum(c_in * c_out * k * k + 2 * c_out for c_in, c_out, k in TINY_CONVS)
    + sum(c_in * c_out + 2 * c_out for c_in, c_out in ((8, 16), (16, 32), (32, 64)))
)


@pytest.mark.parametrize(
    ("arch", "blocks", "fe", "created", "used_last"),
    [
        ("tiny", "last", TINY_FE, lora_by_hand(TINY_CONVS, 8), lora_by_hand(TINY_CONVS, 8)),
        ("resnet18", "last", 11_689_512 - 513_000, 520_704, 276_480),
        ("resnet50", "last", 25_557_032 - 2_049_000, 829_952, 215_040),
        ("resnet18", "all", 11_689_512 - 513_000, 520_704, 520_704),
        ("resnet50", "all", 25_557_032 - 2_049_000, 829_952, 829_952),
    ],
)
def test_parameter_counts_from_the_built_model(arch, blocks, fe, created, used_last):
    """Table 3's counts (SPEC 4.3): torchvision's ResNet-18/50 have 11,689,512 / 25,557,032
    parameters with the 1000-way head (512·1000 + 1000 / 2048·1000 + 1000 of them)."""
    counts = parameter_counts(arch, 8, blocks)
    assert counts["feature_extractor"] == fe
    assert counts["lora_created"] == created
    assert counts["lora_used"] == used_last
    expected_blocks = LAST_BLOCKS[arch] if blocks == "last" else None
    if expected_blocks is not None:
        assert counts["update_blocks"] == expected_blocks
    model = build_model(arch, 10, lora_rank=8, lora_blocks=blocks)
    assert count_lora_parameters(model) == created
    assert count_used_lora_parameters(model) == used_last
    assert parameter_counts(arch, 2, blocks)["lora_created"] * 4 == created


def test_lora_parameter_count_of_one_conv_by_hand():
    conv = LoRaConv2d(nn.Conv2d(16, 32, 3, bias=False), rank=4)
    # A: (4*3) x (16*3), B: (32*3) x (4*3)
    assert conv.lora_A.shape == (12, 48)
    assert conv.lora_B.shape == (96, 12)
    assert conv.lora_A.numel() + conv.lora_B.numel() == 12 * 48 + 96 * 12


@pytest.mark.parametrize(
    ("arch", "convs_per_block", "blocks"), [("resnet18", 2, 8), ("resnet50", 3, 16), ("tiny", 2, 4)]
)
def test_lora_only_on_convs_inside_residual_blocks(arch, convs_per_block, blocks):
    backbone = build_model(arch, 10, lora_rank=2).backbone
    lora_names = sorted(n for n, m in backbone.named_modules() if isinstance(m, LoRaConv2d))
    assert len(lora_names) == convs_per_block * blocks
    for name in lora_names:
        stage, _, conv = name.split(".")
        assert stage.startswith("layer") and conv in ("conv1", "conv2", "conv3")
    assert type(backbone.conv1) is nn.Conv2d
    downsample_convs = [m[0] for n, m in backbone.named_modules() if n.endswith("downsample")]
    assert downsample_convs and all(type(c) is nn.Conv2d for c in downsample_convs)
    assert type(backbone.fc) is nn.Linear


def test_no_lora_without_rank():
    model = build_model("tiny", 10)
    assert count_lora_parameters(model) == 0
    with pytest.raises(ValueError, match="lora_rank"):
        model(images(), branch="lora")


def test_lora_init_is_normal_a_and_zero_b():
    conv = LoRaConv2d(nn.Conv2d(64, 64, 3, bias=False), rank=8)
    assert torch.count_nonzero(conv.lora_B) == 0
    assert abs(conv.lora_A.mean().item()) < 0.05
    assert abs(conv.lora_A.std().item() - 1.0) < 0.05


def test_lora_delta_is_reshaped_low_rank_product_over_rank():
    conv = LoRaConv2d(nn.Conv2d(2, 3, 3, bias=False), rank=2)
    nn.init.normal_(conv.lora_B)
    expected = torch.einsum("ij,jk->ik", conv.lora_B, conv.lora_A).reshape(3, 2, 3, 3) / 2
    torch.testing.assert_close(conv.delta_weight(), expected)
    x = torch.rand(1, 2, 5, 5)
    conv.use_lora = True
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight + expected))


# Parameter groups


@pytest.mark.parametrize(
    "options", [{}, {"lora_rank": 4}, {"dual_bn": True}, {"lora_rank": 4, "dual_bn": True}]
)
def test_parameter_groups_are_disjoint_and_cover_the_model(options):
    model = build_model("tiny", 10, **options)
    fe, lora, head = (
        ids(fe_parameters(model)),
        ids(lora_parameters(model)),
        ids(classifier_parameters(model)),
    )
    assert not (fe & lora) and not (fe & head) and not (lora & head)
    assert fe | lora | head == ids(model.parameters())
    backbone = model.backbone
    assert head == ids(backbone.fc.parameters())
    assert id(backbone.conv1.weight) in fe
    assert id(backbone.layer2[0].downsample[0].weight) in fe
    if options.get("dual_bn"):
        assert ids(backbone.bn1.adaptive.parameters()) | ids(backbone.bn1.fixed.parameters()) <= fe
    else:
        assert ids(backbone.bn1.parameters()) <= fe
    assert (len(lora) > 0) == ("lora_rank" in options)


# The LoRa branch


def test_lora_branch_equals_fe_at_init_and_differs_after_one_step():
    model = build_model("tiny", 10, lora_rank=4).eval()
    x, y = images(), labels()
    fe_before = model(x)
    torch.testing.assert_close(model(x, branch="lora"), fe_before, rtol=0, atol=0)
    a_before = [p.detach().clone() for p in model.parameters()]

    optimizer = torch.optim.SGD(lora_parameters(model), lr=0.5)
    F.cross_entropy(model(x, branch="lora"), y).backward()
    optimizer.step()

    assert any(
        not torch.equal(c.lora_B, torch.zeros_like(c.lora_B))
        for c in model.modules()
        if isinstance(c, LoRaConv2d)
    )
    assert not torch.allclose(model(x, branch="lora"), fe_before)
    torch.testing.assert_close(model(x), fe_before, rtol=0, atol=0)  # theta1 untouched
    fe_ids = ids(fe_parameters(model)) | ids(classifier_parameters(model))
    for before, p in zip(a_before, model.parameters(), strict=True):
        if id(p) in fe_ids:
            assert torch.equal(before, p)

    # a second step moves A too, now that B is non-zero
    a = [c.lora_A.detach().clone() for c in model.modules() if isinstance(c, LoRaConv2d)]
    optimizer.zero_grad()
    F.cross_entropy(model(x, branch="lora"), y).backward()
    optimizer.step()
    moved = [
        not torch.equal(old, c.lora_A)
        for old, c in zip(a, (m for m in model.modules() if isinstance(m, LoRaConv2d)), strict=True)
    ]
    assert any(moved)


@pytest.mark.parametrize("arch", ["tiny", "resnet18", "resnet50"])
def test_gradient_routing_of_the_two_forwards(arch):
    model = build_model(arch, 5, lora_rank=2).train()
    randomise_lora_b(model)  # so that A receives gradient too
    x, y = images(2, 32), labels(2, 5)

    F.cross_entropy(model(x, branch="lora"), y).backward()
    assert all(p.grad is None for p in fe_parameters(model)), (
        "LoRa forward reached theta1 / BN affine"
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(model))
    assert all(p.grad is not None for p in classifier_parameters(model))

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in lora_parameters(model)), (
        "FE forward reached the LoRa matrices"
    )
    assert all(p.grad is not None for p in fe_parameters(model))
    assert all(p.grad is not None for p in classifier_parameters(model))


def test_both_forwards_update_the_shared_bn_running_statistics():
    model = build_model("tiny", 10, lora_rank=4).train()
    randomise_lora_b(model)
    stem_bn, block_bn = model.backbone.bn1, model.backbone.layer1[0].bn2
    momentum = stem_bn.momentum
    x_clean, x_adv = images(seed=4), images(seed=5)

    for branch, x in (("lora", x_clean), ("fe", x_adv)):
        stem_before = stem_bn.running_mean.clone()
        block_before = block_bn.running_mean.clone()
        tracked_before = int(stem_bn.num_batches_tracked)
        model(x, branch=branch)
        stem_out = F.conv2d((x - MEAN) / STD, model.backbone.conv1.weight, padding=1)
        expected = (1 - momentum) * stem_before + momentum * stem_out.mean(dim=(0, 2, 3))
        torch.testing.assert_close(stem_bn.running_mean, expected.detach())
        assert not torch.equal(block_bn.running_mean, block_before)
        assert int(stem_bn.num_batches_tracked) == tracked_before + 1


def set_lora_b(model: nn.Module, blocks: list[str], seed: int = 3) -> None:
    """Random B in the LoRa convs of ``blocks``, zero B everywhere else."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, conv in model.backbone.named_modules():
            if isinstance(conv, LoRaConv2d):
                chosen = name.rpartition(".")[0] in blocks
                noise = torch.randn(conv.lora_B.shape, generator=generator) * 0.05
                conv.lora_B.copy_(noise if chosen else torch.zeros_like(noise))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_lora_forward_ignores_the_non_last_blocks_under_last_only(arch):
    """Only the non-last blocks' B non-zero: under `last` the LoRa forward is the FE forward
    exactly (those matrices never act); under `all` it differs."""
    x = images(2, 32)
    torch.manual_seed(0)
    last = build_model(arch, 5, lora_rank=2, lora_blocks="last")
    randomise_bn_statistics(last)
    every = build_model(arch, 5, lora_rank=2, lora_blocks="all")
    every.load_state_dict(last.state_dict())
    backbone = last.backbone
    non_last = [
        f"{stage}.{i}"
        for stage in ("layer1", "layer2", "layer3", "layer4")
        for i in range(len(getattr(backbone, stage)) - 1)
    ]
    assert non_last and not set(non_last) & set(LAST_BLOCKS[arch])
    assert last.lora_update_blocks() == LAST_BLOCKS[arch]
    for model in (last, every):
        set_lora_b(model, non_last)
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(last(x, branch="lora"), last(x), rtol=0, atol=0)
        assert not torch.allclose(every(x, branch="lora"), every(x))
        # and the last blocks' matrices do act under `last`
        set_lora_b(last, LAST_BLOCKS[arch])
        assert not torch.allclose(last(x, branch="lora"), last(x))


def test_used_lora_parameters_are_those_of_the_update_blocks():
    model = build_model("resnet18", 5, lora_rank=2, lora_blocks="last")
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    used = [names[id(p)] for p in used_lora_parameters(model)]
    assert sorted({n.rsplit(".", 2)[0] for n in used}) == LAST_BLOCKS["resnet18"]
    assert len(used) == 4 * 2 * 2  # 4 blocks × 2 convs × (A, B)
    assert set(ids(used_lora_parameters(model))) <= ids(lora_parameters(model))
    with pytest.raises(ValueError, match="lora_blocks"):
        build_model("tiny", 5, lora_rank=2, lora_blocks="first")


def test_lora_branch_uses_batch_statistics_in_train_mode_and_running_ones_in_eval():
    model = build_model("tiny", 10, lora_rank=4)
    randomise_bn_statistics(model)
    x = images()
    reference = copy.deepcopy(model)
    model.train()
    reference.train()
    torch.testing.assert_close(model(x, branch="lora"), reference(x))
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(x, branch="lora"), reference(x))


def test_routing_follows_a_deep_copy_and_replaced_parameters():
    """The cached LoRa convs / theta1 slots belong to the model they were found in."""
    model = build_model("tiny", 10, lora_rank=2, dual_bn=True).train()
    x, y = images(), labels()
    model(x, branch="lora", bn="mix")  # fills the cache
    twin = copy.deepcopy(model)
    randomise_lora_b(twin)
    assert not torch.allclose(twin.eval()(x, branch="lora"), model.eval()(x, branch="lora"))
    twin.train()
    F.cross_entropy(twin(x, branch="lora", bn="mix"), y).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in fe_parameters(twin))
    assert all(p.grad is not None for p in lora_parameters(twin))

    # load_state_dict(assign=True) swaps the parameter objects: the new ones must be used
    state = {k: v.clone() for k, v in twin.state_dict().items()}
    state["backbone.conv1.weight"].mul_(-1)
    reference = copy.deepcopy(twin)
    reference.load_state_dict(state)
    twin.load_state_dict(state, assign=True)
    twin.eval(), reference.eval()
    torch.testing.assert_close(twin(x, branch="lora"), reference(x, branch="lora"))
    assert not torch.allclose(twin(x, branch="lora"), model(x, branch="lora"))
    twin.zero_grad(set_to_none=True)
    F.cross_entropy(twin(x, branch="lora"), y).backward()
    assert all(p.grad is None for p in fe_parameters(twin))


def test_routing_is_reset_after_a_failing_call():
    model = build_model("tiny", 10, lora_rank=2, dual_bn=True)
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 5, 32, 32), branch="lora", bn="mix")
    assert all(not m.use_lora for m in model.modules() if isinstance(m, LoRaConv2d))
    assert all(m.mode == "adaptive" for m in model.modules() if isinstance(m, DualBatchNorm2d))


def test_invalid_forward_modes_are_rejected():
    model = build_model("tiny", 10)
    with pytest.raises(ValueError, match="dual_bn"):
        model(images(), bn="mix")
    with pytest.raises(ValueError, match="branch"):
        model(images(), branch="twins")
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg16", 10)


# Dual BN


def test_dual_bn_replaces_every_batchnorm():
    model = build_model("resnet18", 10, dual_bn=True)
    plain = build_model("resnet18", 10)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    assert len(duals) == n_bn == 20
    assert isinstance(model.backbone.bn1, DualBatchNorm2d)
    assert isinstance(model.backbone.layer2[0].downsample[1], DualBatchNorm2d)


def test_fixed_bn_statistics_are_bit_identical_after_mix_training_while_adaptive_moved():
    model = build_model("tiny", 10, dual_bn=True)
    randomise_bn_statistics(model)
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    fixed_before = [copy.deepcopy(d.fixed.state_dict()) for d in duals]
    adaptive_before = [d.adaptive.running_mean.clone() for d in duals]
    optimizer = torch.optim.SGD(fe_parameters(model) + classifier_parameters(model), lr=0.1)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(images(6, seed=10 + step), bn="mix"), labels(6)).backward()
        optimizer.step()
    for dual, fixed, adaptive in zip(duals, fixed_before, adaptive_before, strict=True):
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(dual.fixed.state_dict()[key], fixed[key]), key
        assert not torch.equal(dual.fixed.weight, fixed["weight"])  # own trainable affine
        assert not torch.equal(dual.adaptive.running_mean, adaptive)


def test_fixed_bn_normalises_with_stored_statistics_in_train_mode():
    model = build_model("tiny", 10, dual_bn=True)
    randomise_bn_statistics(model)
    x = images(3)
    train_out = model.train()(x, bn="fixed")
    eval_out = model.eval()(x, bn="fixed")
    torch.testing.assert_close(train_out, eval_out)


def test_fixed_bn_copies_eps_momentum_statistics_and_affine_of_its_source():
    source = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)
    randomise_bn_statistics(source)
    source.num_batches_tracked.fill_(7)
    dual = DualBatchNorm2d(source)
    assert dual.adaptive is source
    assert (dual.fixed.eps, dual.fixed.momentum) == (1e-3, 0.3)
    for key, value in source.state_dict().items():
        assert torch.equal(dual.fixed.state_dict()[key], value), key
    assert dual.fixed.weight is not source.weight  # its own affine, trained on its own
    x = torch.randn(3, 4, 2, 2)
    dual.train()
    dual.mode = "fixed"
    by_hand = (x - source.running_mean.view(1, 4, 1, 1)) / torch.sqrt(
        source.running_var.view(1, 4, 1, 1) + 1e-3
    ) * source.weight.view(1, 4, 1, 1) + source.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(dual(x), by_hand)
    assert int(dual.fixed.num_batches_tracked) == 7


@pytest.mark.parametrize("batch", [5, 4])
def test_mix_splits_the_batch_fixed_first_half_rounded_down(batch):
    model = build_model("tiny", 10, dual_bn=True)
    randomise_bn_statistics(model, seed=7)
    with torch.no_grad():  # make the two copies differ
        for dual in model.modules():
            if isinstance(dual, DualBatchNorm2d):
                dual.adaptive.running_mean.add_(0.3)
                dual.adaptive.weight.mul_(1.5)
    x = images(batch)
    half = batch // 2

    model.eval()
    mixed = model(x, bn="mix")
    expected = torch.cat([model(x[:half], bn="fixed"), model(x[half:], bn="adaptive")])
    torch.testing.assert_close(mixed, expected)
    assert not torch.allclose(mixed[:half], model(x[:half], bn="adaptive"))

    # train mode: the adaptive half's batch statistics come from its own rows only
    mixed_model, split_model = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    mixed = mixed_model(x, bn="mix")
    expected = torch.cat([split_model(x[:half], bn="fixed"), split_model(x[half:], bn="adaptive")])
    torch.testing.assert_close(mixed, expected)
    for key, value in mixed_model.state_dict().items():
        torch.testing.assert_close(value, split_model.state_dict()[key], msg=key)


def test_default_forward_of_a_dual_bn_model_is_adaptive():
    model = build_model("tiny", 10, dual_bn=True).eval()
    with torch.no_grad():
        model.backbone.bn1.fixed.weight.mul_(2)
    x = images()
    torch.testing.assert_close(model(x), model(x, bn="adaptive"))
    assert not torch.allclose(model(x), model(x, bn="fixed"))


# Input pipeline


def test_input_upsample_is_nearest_times_seven_then_imagenet_normalisation():
    model = build_model("tiny", 10, input_upsample=224).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = images(2, 32)
    model(x)
    upsampled = x.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3)
    assert seen[0].shape == (2, 3, 224, 224)
    torch.testing.assert_close(seen[0], (upsampled - MEAN) / STD, rtol=0, atol=0)


def test_normaliser_is_not_in_the_state_dict():
    keys = list(build_model("tiny", 10).state_dict())
    assert all(key.startswith("backbone.") for key in keys)


# Loading torchvision weights


def torchvision_resnet18() -> nn.Module:
    reference = torchvision.models.resnet18(weights=None)
    randomise_bn_statistics(reference)
    return reference.eval()


@pytest.mark.parametrize("options", [{}, {"dual_bn": True, "lora_rank": 8}])
def test_loading_torchvision_weights_reproduces_torchvision_outputs(options):
    reference = torchvision_resnet18()
    model = build_model("resnet18", 1000, **options).eval()
    head_before = model.backbone.fc.weight.detach().clone()
    lora_before = [p.detach().clone() for p in lora_parameters(model)]

    load_backbone_state(model, reference.state_dict())
    assert torch.equal(model.backbone.fc.weight, head_before)  # fc.* ignored: head stays fresh
    assert all(torch.equal(a, p) for a, p in zip(lora_before, lora_parameters(model), strict=True))

    model.backbone.fc.load_state_dict(reference.fc.state_dict())
    x = images(2, 64)
    with torch.no_grad():
        expected = reference((x - MEAN) / STD)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        if options:
            torch.testing.assert_close(model(x, bn="fixed"), expected, rtol=0, atol=0)
            torch.testing.assert_close(model(x, branch="lora"), expected, rtol=0, atol=0)
    if options:
        source = reference.state_dict()
        for key in (
            "bn1.running_var",
            "layer3.1.bn2.num_batches_tracked",
            "layer4.0.downsample.1.weight",
        ):
            stem, leaf = key.rsplit(".", 1)
            own = model.backbone.state_dict()
            assert torch.equal(own[f"{stem}.adaptive.{leaf}"], source[key])
            assert torch.equal(own[f"{stem}.fixed.{leaf}"], source[key])


def test_loading_rejects_missing_and_unexpected_keys():
    state = torchvision_resnet18().state_dict()
    model = build_model("resnet18", 10)
    incomplete = {k: v for k, v in state.items() if k != "layer1.0.bn1.running_var"}
    with pytest.raises(DataError, match=r"missing keys: layer1\.0\.bn1\.running_var"):
        load_backbone_state(model, incomplete)
    prefixed = {f"module.model.{k}": v for k, v in state.items()}
    with pytest.raises(DataError, match=r"unexpected keys: module\.model\."):
        load_backbone_state(model, prefixed)
    with pytest.raises(DataError, match="layer1.1"):
        load_backbone_state(build_model("tiny", 10), state)


def test_loading_rejects_a_shape_mismatch():
    state = torchvision_resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(DataError, match=r"layer1\.0\.conv1\.weight"):
        load_backbone_state(build_model("resnet18", 10), state)


def test_tiny_backbone_round_trips_through_load_backbone_state():
    source = build_model("tiny", 7)
    randomise_bn_statistics(source)
    state = {k.removeprefix("backbone."): v for k, v in source.state_dict().items()}
    target = build_model("tiny", 7, dual_bn=True, lora_rank=2)
    load_backbone_state(target, state)
    target.backbone.fc.load_state_dict(source.backbone.fc.state_dict())
    x = images()
    torch.testing.assert_close(target.eval()(x, bn="fixed"), source.eval()(x))
