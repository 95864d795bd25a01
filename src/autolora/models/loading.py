"""Loading a torchvision-named ResNet state dict into a ``RobustNet`` backbone."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from autolora.errors import DataError
from autolora.models.dual_bn import DualBatchNorm2d
from autolora.models.lora import LoRaConv2d
from autolora.models.resnet import RobustNet

MAX_KEYS_IN_MESSAGE = 8


def _target_keys(model: RobustNet) -> dict[str, list[str]]:
    """Map each loadable torchvision key to the backbone keys that receive it.

    The classifier and the LoRa matrices are not loadable; a dual BN's ``<bn>.<name>`` feeds both
    ``<bn>.adaptive.<name>`` and ``<bn>.fixed.<name>``.
    """
    modules = dict(model.backbone.named_modules())
    targets: dict[str, list[str]] = {}
    for key in model.backbone.state_dict():
        module_name, _, leaf = key.rpartition(".")
        if module_name == "fc":
            continue
        if isinstance(modules[module_name], LoRaConv2d) and leaf in ("lora_A", "lora_B"):
            continue
        parent, _, copy_name = module_name.rpartition(".")
        if isinstance(modules.get(parent), DualBatchNorm2d):
            source = f"{parent}.{leaf}" if parent else leaf
        else:
            source = key
        targets.setdefault(source, []).append(key)
    return targets


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    more = len(keys) - MAX_KEYS_IN_MESSAGE
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_backbone_state(model: RobustNet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy a torchvision ResNet state dict into ``model.backbone`` (in place).

    ``fc.*`` entries are ignored (the head stays freshly initialised); LoRa matrices are left as
    they are; with dual BN each BN entry is copied into both copies. Any other missing or
    unexpected key, or a shape mismatch, raises ``DataError``.
    """
    targets = _target_keys(model)
    given = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing = sorted(set(targets) - set(given))
    unexpected = sorted(set(given) - set(targets))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        raise DataError(
            f"backbone weights do not match a torchvision {model.arch}: {'; '.join(parts)}. "
            "Pass a torchvision-named state dict of the same architecture (convert robustness "
            "checkpoints with `autolora weights convert`)."
        )
    own_state = model.backbone.state_dict()
    for key, value in given.items():
        for target in targets[key]:
            if own_state[target].shape != value.shape:
                raise DataError(
                    f"backbone weight {key!r} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(own_state[target].shape)}: the weights belong to another "
                    f"architecture than {model.arch}"
                )
    with torch.no_grad():
        for key, value in given.items():
            for target in targets[key]:
                own_state[target].copy_(value)
