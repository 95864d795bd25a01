"""The three robust fine-tuning methods behind one interface (see docs/internals.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autolora.errors import ConfigError
from autolora.methods.autolora import AutoLoRa
from autolora.methods.base import Method, MethodSettings, StepResult, kl_term
from autolora.methods.twins import Twins
from autolora.methods.vanilla import VanillaRFT
from autolora.planning.vocabulary import AUTOLORA, TWINS, VANILLA

if TYPE_CHECKING:
    from autolora.planning.cells import CellConfig

# The classes of the methods the vocabulary names (a test checks that the two agree).
METHODS: dict[str, type[Method]] = {VANILLA: VanillaRFT, TWINS: Twins, AUTOLORA: AutoLoRa}


def build_method(name: str, settings: MethodSettings) -> Method:
    """The method called ``name`` (a name of ``autolora.planning.vocabulary.METHODS``) with
    ``settings``."""
    try:
        return METHODS[name](settings)
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}: set `method` to one of {', '.join(METHODS)}"
        ) from None


def method_settings(config: CellConfig) -> MethodSettings:
    """The method settings of a resolved cell: its attack, KL divisor and the hyper-parameters
    the cell sets (the others keep ``MethodSettings``'s defaults)."""
    optional = {
        key: getattr(config, key)
        for key in ("beta", "twins_gamma", "lora_rank", "lora_blocks", "twins_gamma_on")
        if getattr(config, key) is not None
    }
    return MethodSettings(
        eps=config.attack.eps,
        step=config.attack.step,
        attack_steps=config.attack.train_steps,
        kl_divisor=config.kl_divisor_value,
        **optional,
    )


__all__ = [
    "METHODS",
    "Method",
    "MethodSettings",
    "StepResult",
    "build_method",
    "kl_term",
    "method_settings",
]
