"""Protocols: named bundles of the choices where the paper's text and its released code differ.

SPEC §7. ``paper`` follows the released code (the default); ``clean`` follows the paper's text with
the test-set leakage removed. Every choice stays overridable per cell (``autolora.planning.cells``); the run
record names the protocol and every resolved choice.
"""

from __future__ import annotations

from typing import Any

from autolora.errors import ConfigError
from autolora.planning.vocabulary import AUTOLORA, TWINS

PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {
        "eps": 0.0314,  # released code; the text's 8/255 = 0.031372...
        "step": 0.00784,  # released code; the text's 2/255 = 0.007843...
        "split_scheme": "paper",  # test set as validation for DTD / Caltech-256, DTD 57-way head
        "selection": "best_test",  # reported checkpoint: best PGD-10 on the test set
        "kl_divisor": "configured",  # KL sums divided by the configured batch size
        "test_each_epoch": True,
        "lora_blocks": "last",  # the LoRa update acts in the last block of each stage only
        "twins_gamma_on": "fixed",  # TWINS' γ multiplies the fixed-BN half
    },
    "clean": {
        "eps": 8 / 255,
        "step": 2 / 255,
        "split_scheme": "clean",  # 5% seeded validation split for every dataset
        "selection": "best_val",
        "kl_divisor": "actual",
        "test_each_epoch": True,
        "lora_blocks": "all",  # the paper's text: every residual block
        "twins_gamma_on": "adaptive",  # the paper's Eq. 2: L(θ̄) + γ·L(θ)
    },
}

PROTOCOL_CHOICES = (
    "eps",
    "step",
    "split_scheme",
    "selection",
    "kl_divisor",
    "test_each_epoch",
    "lora_blocks",
    "twins_gamma_on",
)
# Choices only one method reads (SPEC §4.2, §4.3): for the other methods they resolve to None,
# and an override of them (e.g. one under the workflow's `training:`, applied to every cell)
# leaves those cells unchanged.
METHOD_PROTOCOL_CHOICES: dict[str, tuple[str, ...]] = {
    "lora_blocks": (AUTOLORA,),
    "twins_gamma_on": (TWINS,),
}


def protocol_choices(name: str) -> dict[str, Any]:
    """The resolved choices of protocol ``name`` (a fresh dict)."""
    if name not in PROTOCOLS:
        allowed = ", ".join(sorted(PROTOCOLS))
        raise ConfigError(f"unknown protocol {name!r} (key 'protocol'); allowed: {allowed}")
    return dict(PROTOCOLS[name])
