"""Backbones: torchvision ResNet-18/50 and a tiny ResNet with the same module names, wrapped in
``RobustNet`` (optional nearest upsampling -> ImageNet normaliser -> ResNet) with the optional
LoRa branch (SPEC 4.3) and dual BN (SPEC 4.2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchvision.models import resnet as tv_resnet

from autolora.models.dual_bn import BN_MODES, DualBatchNorm2d
from autolora.models.lora import LoRaConv2d
from autolora.planning.vocabulary import ARCHS

BRANCHES = ("fe", "lora")
LORA_BLOCKS = ("last", "all")  # where the LoRa forward adds ΔBA (SPEC 4.3, protocol `lora_blocks`)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_WIDTHS = (8, 16, 32, 64)


class TinyResNet(tv_resnet.ResNet):
    """A small ResNet (one BasicBlock per stage, widths 8/16/32/64) for tests and the demo.

    Built with torchvision's own ``_make_layer`` and ``forward`` so module names and data flow are
    those of ``resnet18``; only the stem differs (3x3 stride-1 conv, for 32x32 inputs).
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = TINY_WIDTHS) -> None:
        nn.Module.__init__(self)  # torchvision's __init__ hard-codes the ImageNet widths
        block = tv_resnet.BasicBlock
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], 1)
        self.layer2 = self._make_layer(block, widths[1], 1, stride=2)
        self.layer3 = self._make_layer(block, widths[2], 1, stride=2)
        self.layer4 = self._make_layer(block, widths[3], 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)


def build_backbone(arch: str, num_classes: int) -> tv_resnet.ResNet:
    """A randomly initialised ResNet with a fresh ``nn.Linear(features, num_classes)`` head."""
    if arch == "tiny":
        return TinyResNet(num_classes)
    if arch == "resnet18":
        backbone = tv_resnet.resnet18(weights=None)
    elif arch == "resnet50":
        backbone = tv_resnet.resnet50(weights=None)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    backbone.fc = nn.Linear(backbone.fc.in_features, num_classes)
    return backbone


STAGES = ("layer1", "layer2", "layer3", "layer4")


def _residual_blocks(backbone: nn.Module) -> Iterator[nn.Module]:
    for stage in STAGES:
        yield from getattr(backbone, stage)


def lora_update_block_names(backbone: nn.Module, lora_blocks: str) -> list[str]:
    """The residual blocks whose LoRa convolutions add ΔBA in the LoRa forward, by module name:
    every block (``"all"``) or the last block of each stage (``"last"``, the released code)."""
    if lora_blocks not in LORA_BLOCKS:
        raise ValueError(f"lora_blocks must be one of {LORA_BLOCKS}, got {lora_blocks!r}")
    names = []
    for stage in STAGES:
        count = len(getattr(backbone, stage))
        first = count - 1 if lora_blocks == "last" else 0
        names += [f"{stage}.{index}" for index in range(first, count)]
    return names


def add_lora(backbone: nn.Module, rank: int) -> None:
    """Replace the convolutions inside residual blocks (not stem, not shortcut) by LoRa convs."""
    for block in _residual_blocks(backbone):
        for name in ("conv1", "conv2", "conv3"):
            conv = getattr(block, name, None)
            if isinstance(conv, nn.Conv2d):
                setattr(block, name, LoRaConv2d(conv, rank))


def add_dual_bn(module: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a ``DualBatchNorm2d`` built from it."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DualBatchNorm2d(child))
        else:
            add_dual_bn(child)


class RobustNet(nn.Module):
    """x in [0, 1] -> optional nearest upsampling -> ImageNet normaliser -> ``backbone``.

    ``forward(x, branch="fe", bn="adaptive")``:
    - ``branch="fe"``: the ordinary network (theta1 and the classifier).
    - ``branch="lora"``: every backbone weight except the classifier is replaced by a detached copy
      (convs, BN affine, both BN copies) and the LoRa convs of the blocks ``lora_blocks`` names
      add their update (``"all"``: every residual block; ``"last"``: the last block of each stage,
      the other blocks' LoRa matrices never act), so the loss reaches theta1 and BN affine not at
      all, the acting LoRa A/B and the classifier fully. BN keeps its current mode (train mode:
      batch statistics, running statistics updated).
    - ``bn``: ``"adaptive"`` | ``"fixed"`` | ``"mix"`` for dual-BN models (see ``DualBatchNorm2d``).

    The normaliser constants are non-persistent buffers: they follow ``.to(device)`` but are not in
    the state dict, whose keys are ``backbone.<torchvision key>``. The backbone's module structure
    is fixed once built (``build_model``): the LoRa convs and dual BNs are looked up once.
    """

    def __init__(
        self,
        backbone: tv_resnet.ResNet,
        *,
        arch: str,
        lora_rank: int | None = None,
        lora_blocks: str = "all",
        dual_bn: bool = False,
        input_upsample: int | None = None,
    ) -> None:
        super().__init__()
        if lora_blocks not in LORA_BLOCKS:
            raise ValueError(f"lora_blocks must be one of {LORA_BLOCKS}, got {lora_blocks!r}")
        self.arch = arch
        self.lora_rank = lora_rank
        self.lora_blocks = lora_blocks
        self.dual_bn = dual_bn
        self.input_upsample = input_upsample
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        self._routes: _Routes | None = None

    def forward(self, x: torch.Tensor, *, branch: str = "fe", bn: str = "adaptive") -> torch.Tensor:
        self._check_mode(branch, bn)
        if self.input_upsample is not None:
            x = F.interpolate(x, size=(self.input_upsample, self.input_upsample), mode="nearest")
        x = (x - self.mean) / self.std
        if branch == "fe" and bn == "adaptive":
            # The default path (every attack step takes it): `_routing` leaves the modules set
            # to it after each routed call, so there is nothing to set.
            return self.backbone(x)
        with self._routing(branch, bn):
            if branch == "lora":
                return functional_call(self.backbone, self._routes_now().detached_fe(), (x,))
            return self.backbone(x)

    def _check_mode(self, branch: str, bn: str) -> None:
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        if branch == "lora" and self.lora_rank is None:
            raise ValueError("branch='lora' needs a model built with lora_rank")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        if bn != "adaptive" and not self.dual_bn:
            raise ValueError(f"bn={bn!r} needs a model built with dual_bn=True")

    @contextlib.contextmanager
    def _routing(self, branch: str, bn: str) -> Iterator[None]:
        """Tell the LoRa convs and dual BNs of this model which path to take, for one call."""
        routes = self._routes_now()
        for conv in routes.acting_lora_convs:
            conv.use_lora = branch == "lora"
        for norm in routes.dual_bns:
            norm.mode = bn
        try:
            yield
        finally:
            for conv in routes.acting_lora_convs:
                conv.use_lora = False
            for norm in routes.dual_bns:
                norm.mode = "adaptive"

    def _routes_now(self) -> _Routes:
        # Walking ~150 modules on each of the ~12 forwards of a training step costs milliseconds
        # of host time (issue 8), so the walk is cached; it is redone if the backbone is replaced.
        if self._routes is None or self._routes.backbone is not self.backbone:
            self._routes = _Routes(self.backbone, self.lora_blocks)
        return self._routes

    def lora_update_blocks(self) -> list[str]:
        """The residual blocks whose LoRa convolutions act in the LoRa forward (empty without
        LoRa), e.g. ``["layer1.1", "layer2.1", "layer3.1", "layer4.1"]`` (ResNet-18, "last")."""
        if self.lora_rank is None:
            return []
        return lora_update_block_names(self.backbone, self.lora_blocks)

    def extra_repr(self) -> str:
        lora = f", lora_blocks={self.lora_blocks}" if self.lora_rank is not None else ""
        return (
            f"arch={self.arch}, lora_rank={self.lora_rank}{lora}, dual_bn={self.dual_bn}, "
            f"input_upsample={self.input_upsample}"
        )


def build_model(
    arch: str,
    num_classes: int,
    *,
    lora_rank: int | None = None,
    lora_blocks: str = "all",
    dual_bn: bool = False,
    input_upsample: int | None = None,
) -> RobustNet:
    """A ``RobustNet`` over a randomly initialised backbone (load weights with
    ``load_backbone_state``); ``input_upsample`` is the side length the input is resized to.
    With ``lora_rank`` every residual-block convolution gets LoRa matrices; ``lora_blocks`` says
    in which blocks they act in the LoRa forward ("all" or "last" of each stage)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = build_backbone(arch, num_classes)
    if lora_rank is not None:
        add_lora(backbone, lora_rank)
    if dual_bn:
        add_dual_bn(backbone)
    return RobustNet(
        backbone,
        arch=arch,
        lora_rank=lora_rank,
        lora_blocks=lora_blocks,
        dual_bn=dual_bn,
        input_upsample=input_upsample,
    )


class _Routes:
    """The acting LoRa convs, dual BNs and theta1 parameter slots of a backbone, found once.

    Slots are (module, parameter name) pairs, read at call time, so a parameter object replaced
    later (e.g. ``load_state_dict(assign=True)``) is still the one used.
    """

    def __init__(self, backbone: nn.Module, lora_blocks: str) -> None:
        self.backbone = backbone
        self.acting_lora_convs = _acting_lora_convs(backbone, lora_blocks)
        self.dual_bns = [m for m in backbone.modules() if isinstance(m, DualBatchNorm2d)]
        modules = dict(backbone.named_modules())
        self.fe_slots = []
        for name, _ in _fe_named_parameters(backbone):
            module_name, _, leaf = name.rpartition(".")
            self.fe_slots.append((name, modules[module_name], leaf))

    def detached_fe(self) -> dict[str, torch.Tensor]:
        """theta1 (convs and BN affine of the backbone, classifier and LoRa excluded), detached."""
        return {name: module._parameters[leaf].detach() for name, module, leaf in self.fe_slots}


def _acting_lora_convs(backbone: nn.Module, lora_blocks: str) -> list[LoRaConv2d]:
    blocks = [
        backbone.get_submodule(name) for name in lora_update_block_names(backbone, lora_blocks)
    ]
    return [m for block in blocks for m in block.modules() if isinstance(m, LoRaConv2d)]


def _lora_parameter_ids(backbone: nn.Module) -> set[int]:
    return {
        id(p) for m in backbone.modules() if isinstance(m, LoRaConv2d) for p in (m.lora_A, m.lora_B)
    }


def _fe_named_parameters(backbone: nn.Module) -> list[tuple[str, nn.Parameter]]:
    excluded = _lora_parameter_ids(backbone) | {id(p) for p in backbone.fc.parameters()}
    return [(name, p) for name, p in backbone.named_parameters() if id(p) not in excluded]


def fe_parameters(model: RobustNet) -> list[nn.Parameter]:
    """theta1: every backbone parameter except the classifier and the LoRa matrices (stem and
    shortcut convs and the affine of every BN copy included)."""
    return [p for _, p in _fe_named_parameters(model.backbone)]


def lora_parameters(model: RobustNet) -> list[nn.Parameter]:
    """The LoRa matrices A and B of every LoRa convolution (empty without LoRa)."""
    lora_ids = _lora_parameter_ids(model.backbone)
    return [p for p in model.backbone.parameters() if id(p) in lora_ids]


def classifier_parameters(model: RobustNet) -> list[nn.Parameter]:
    """theta2: the linear head ``backbone.fc``."""
    return list(model.backbone.fc.parameters())


def used_lora_parameters(model: RobustNet) -> list[nn.Parameter]:
    """The LoRa matrices that act in the LoRa forward (all of them under ``lora_blocks="all"``);
    the others never get a gradient and never change an output."""
    if model.lora_rank is None:
        return []
    return [
        p
        for conv in _acting_lora_convs(model.backbone, model.lora_blocks)
        for p in (conv.lora_A, conv.lora_B)
    ]


def count_lora_parameters(model: RobustNet) -> int:
    """LoRa parameters created (every residual-block convolution's A and B)."""
    return sum(p.numel() for p in lora_parameters(model))


def count_used_lora_parameters(model: RobustNet) -> int:
    """LoRa parameters that act in the LoRa forward (see ``used_lora_parameters``)."""
    return sum(p.numel() for p in used_lora_parameters(model))


def parameter_counts(arch: str, lora_rank: int, lora_blocks: str) -> dict[str, Any]:
    """Table 3's parameter counts, from the built models (SPEC 4.3): the feature extractor of
    ``arch`` without LoRa (θ1, classifier excluded), the LoRa parameters created at ``lora_rank``
    (what the paper's ratio counts) and those the LoRa forward uses under ``lora_blocks``.
    Built on the meta device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        plain = build_model(arch, 2)
        with_lora = build_model(arch, 2, lora_rank=lora_rank, lora_blocks=lora_blocks)
    total_difference = sum(p.numel() for p in with_lora.parameters()) - sum(
        p.numel() for p in plain.parameters()
    )
    created = count_lora_parameters(with_lora)
    if total_difference != created:  # LoRa must be the only thing the branch adds
        raise RuntimeError(f"{arch}: LoRa adds {total_difference} parameters, counted {created}")
    return {
        "arch": arch,
        "lora_rank": lora_rank,
        "lora_blocks": lora_blocks,
        "feature_extractor": sum(p.numel() for p in fe_parameters(plain)),
        "lora_created": created,
        "lora_used": count_used_lora_parameters(with_lora),
        "update_blocks": with_lora.lora_update_blocks(),
    }
