"""The three robust fine-tuning methods behind one interface (see docs/internals.md)."""

from __future__ import annotations

from autolora.errors import ConfigError
from autolora.methods.autolora import AutoLoRa
from autolora.methods.base import Method, MethodSettings, StepResult, kl_term
from autolora.methods.twins import Twins
from autolora.methods.vanilla import VanillaRFT
from autolora.planning.vocabulary import AUTOLORA, TWINS, VANILLA

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


__all__ = ["METHODS", "Method", "MethodSettings", "StepResult", "build_method", "kl_term"]
