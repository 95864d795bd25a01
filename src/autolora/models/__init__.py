"""Backbones with the LoRa branch and dual BN (SPEC 1, 4.2, 4.3)."""

from autolora.models.dual_bn import DualBatchNorm2d, FixedStatsBatchNorm2d
from autolora.models.loading import load_backbone_state
from autolora.models.lora import LoRaConv2d
from autolora.models.resnet import (
    LORA_BLOCKS,
    RobustNet,
    TinyResNet,
    build_model,
    classifier_parameters,
    count_lora_parameters,
    count_used_lora_parameters,
    fe_parameters,
    lora_parameters,
    parameter_counts,
    used_lora_parameters,
)

__all__ = [
    "LORA_BLOCKS",
    "DualBatchNorm2d",
    "FixedStatsBatchNorm2d",
    "LoRaConv2d",
    "RobustNet",
    "TinyResNet",
    "build_model",
    "classifier_parameters",
    "count_lora_parameters",
    "count_used_lora_parameters",
    "fe_parameters",
    "load_backbone_state",
    "lora_parameters",
    "parameter_counts",
    "used_lora_parameters",
]
