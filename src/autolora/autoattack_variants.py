"""The AutoAttack variants an evaluation can run, and how tables and records name them. Torch-free.

``standard`` is the paper's AutoAttack (SPEC §3). ``apgd-ce+apgd-t`` is a reduced variant for the
demo: the first two attacks of standard AutoAttack with standard's settings (APGD-CE with one
restart, APGD-T on the 9 runner-up classes, 100 iterations each), without FAB-T and Square. It
runs the same attacks on the same points as standard's first two stages, so its robust accuracy
is standard's after APGD-T: never lower than standard AA, and not comparable with the paper's AA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autolora.errors import ConfigError

CONFIG_KEY = "evaluation.autoattack_version"
STANDARD = "standard"
REDUCED = "apgd-ce+apgd-t"
ATTACK_LABELS = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


@dataclass(frozen=True)
class AutoAttackVariant:
    name: str  # the config value and the evaluation record's `autoattack.version`
    attacks: tuple[str, ...]  # pyautoattack's attack names, in the order they run
    label: str  # how table titles and footnotes name it
    # expected time relative to standard AutoAttack (autolora.planning.costmodel)
    relative_cost: float

    @property
    def is_standard(self) -> bool:
        return self.name == STANDARD

    def footnote(self) -> str:
        """What a table's AA means, in one sentence naming the config key that chose it."""
        attacks = [ATTACK_LABELS[a] for a in self.attacks]
        setting = f"`{CONFIG_KEY}` = {self.name}"
        if self.is_standard:
            listed = ", ".join(attacks[:-1]) + " and " + attacks[-1]
            return f"AA: standard AutoAttack, {listed} ({setting}), as in the paper."
        return (
            f"AA: reduced AutoAttack, {' + '.join(attacks)} only ({setting}): standard AA "
            f"stopped after {attacks[-1]}, an upper bound of standard AA, not comparable with the "
            "paper's."
        )


VARIANTS: dict[str, AutoAttackVariant] = {
    STANDARD: AutoAttackVariant(
        STANDARD, ("apgd-ce", "apgd-t", "fab-t", "square"), "standard AutoAttack", 1.0
    ),
    # Cost: FAB-T and Square take ~80 % of standard AA on the demo's cells (pyautoattack's own
    # per-attack times); 0.3 leaves room for models where more points survive APGD-T.
    REDUCED: AutoAttackVariant(
        REDUCED, ("apgd-ce", "apgd-t"), "reduced AutoAttack (APGD-CE + APGD-T)", 0.3
    ),
}


def autoattack_variant(name: str | None) -> AutoAttackVariant:
    """The variant called ``name`` (None: standard); a clear error for an unknown one."""
    name = STANDARD if name is None else name
    if name not in VARIANTS:
        raise ConfigError(
            f"unknown AutoAttack variant {name!r} (`{CONFIG_KEY}` or --autoattack-version); "
            f"allowed: {', '.join(VARIANTS)}"
        )
    return VARIANTS[name]


def configured_variant(config: Mapping[str, Any]) -> AutoAttackVariant:
    """The variant a workflow config asks for (``evaluation.autoattack_version``)."""
    return autoattack_variant((config.get("evaluation") or {}).get("autoattack_version"))


def record_variant(record: Mapping[str, Any]) -> str | None:
    """The variant an evaluation record's AA was computed with; None when it has no AA. Records
    written before variants existed ran standard AutoAttack only."""
    if (record.get("metrics") or {}).get("AA") is None:
        return None
    return (record.get("autoattack") or {}).get("version") or STANDARD
