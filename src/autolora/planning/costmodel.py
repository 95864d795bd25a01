"""Runtime estimates of train and evaluate jobs, for SLURM time limits and the plan's GPU-hours.

A training epoch costs (training images × method factor + evaluated images × evaluation factor) ×
backbone factor ÷ the calibrated throughput of the config's ``cost`` section (images per second of
vanilla RFT on ResNet-18 at 224×224, PGD-10 included; ``autolora bench`` measures it). CIFAR images
are upsampled to 224 inside the model, so every dataset costs the same per image. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from autolora.autoattack_variants import configured_variant
from autolora.errors import ConfigError, reject_unknown
from autolora.planning.cells import CellConfig, resolve_cell
from autolora.planning.vocabulary import DATASETS, SYNTHETIC

VALIDATION_FRACTION = 0.05  # synthetic datasets: the 5% seeded split


@dataclass(frozen=True)
class CostModel:
    train_images_per_s: float = 150.0  # vanilla RFT, ResNet-18, 224², one GPU, attack included
    eval_images_per_s: float = 600.0  # PGD-10 evaluation (no update), ResNet-18
    # standard AutoAttack, ResNet-18; a reduced variant takes its relative_cost of this time
    autoattack_images_per_s: float = 12.0
    backbone: dict[str, float] = field(
        default_factory=lambda: {"resnet18": 1.0, "resnet50": 2.6, "tiny": 1.0}
    )
    method: dict[str, float] = field(
        default_factory=lambda: {"vanilla": 1.0, "twins": 1.4, "autolora": 1.3}
    )
    margin: float = 1.5  # time limit = expected time × margin
    overhead_min: float = 5.0  # start-up, data loading, checkpoint writes
    min_runtime_min: int = 10
    max_runtime_min: int = 2880  # longer cells continue across retries (they resume)
    mem_mb: dict[str, int] = field(
        default_factory=lambda: {"resnet18": 32_000, "resnet50": 48_000, "tiny": 2_000}
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CostModel:
        """The defaults above, updated by the config's ``cost`` section."""
        section = dict(config.get("cost") or {})
        known = set(cls.__dataclass_fields__)
        reject_unknown(section, sorted(known), "cost.")
        defaults = cls()
        for key in ("backbone", "method", "mem_mb"):
            if key in section:
                section[key] = {**getattr(defaults, key), **section[key]}
        return cls(**section)

    def factor(self, group: str, name: str) -> float:
        table = getattr(self, group)
        if name not in table:
            raise ConfigError(f"'cost.{group}' has no entry for {name!r}; add one")
        return float(table[name])


def dataset_sizes(config: Mapping[str, Any], dataset: str) -> tuple[int, int, int]:
    """(train, validation, test) sizes of a configured dataset."""
    settings = (config.get("datasets") or {}).get(dataset) or {}
    if settings.get("source") == SYNTHETIC:
        train, test = int(settings["train"]), int(settings["test"])
        validation = max(1, round(train * VALIDATION_FRACTION))
        return train - validation, validation, test
    if dataset not in DATASETS:
        raise ConfigError(f"no size known for dataset {dataset!r}; declare it in 'datasets'")
    # the paper's counts (SPEC §2); the `clean` split differs by a few percent, inside the margin
    counts = DATASETS[dataset].paper_counts
    return counts["train"], counts["val"], counts["test"]


def _resolved(spec: Mapping[str, Any] | CellConfig) -> CellConfig:
    return spec if isinstance(spec, CellConfig) else resolve_cell(spec)


def train_minutes(
    spec: Mapping[str, Any] | CellConfig, config: Mapping[str, Any], model: CostModel
) -> float:
    """Expected minutes of one training run (no margin, no overhead)."""
    cell = _resolved(spec)
    train, validation, test = dataset_sizes(config, cell.dataset)
    evaluated = validation + (test if cell.test_each_epoch else 0)
    per_epoch_s = model.factor("backbone", cell.arch) * (
        train * model.factor("method", cell.method) / model.train_images_per_s
        + evaluated / model.eval_images_per_s
    )
    return cell.epochs * per_epoch_s / 60.0


def evaluate_minutes(
    spec: Mapping[str, Any] | CellConfig,
    config: Mapping[str, Any],
    model: CostModel,
    n: int | None = None,
    *,
    autoattack: bool = True,
) -> float:
    """Expected minutes of SA + PGD-10 (+ AutoAttack when ``autoattack`` and the cell enables it,
    in the config's ``evaluation.autoattack_version``) on ``n`` test images (None: all)."""
    cell = _resolved(spec)
    test = dataset_sizes(config, cell.dataset)[2]
    images = min(test, n) if n else test
    per_image_s = 2.0 / model.eval_images_per_s  # SA pass + PGD-10 pass
    if autoattack and cell.autoattack.enabled:
        variant = configured_variant(config)
        per_image_s += variant.relative_cost / model.autoattack_images_per_s
    return model.factor("backbone", cell.arch) * images * per_image_s / 60.0


def time_limit_min(expected_min: float, model: CostModel) -> int:
    """A SLURM time limit for a job expected to take ``expected_min`` minutes."""
    limit = math.ceil(expected_min * model.margin + model.overhead_min)
    return int(min(model.max_runtime_min, max(model.min_runtime_min, limit)))


@dataclass(frozen=True)
class Estimate:
    cells: int
    train_gpu_hours: float
    evaluate_gpu_hours: float
    longest_train_min: float

    @property
    def gpu_hours(self) -> float:
        return self.train_gpu_hours + self.evaluate_gpu_hours


def estimate(
    cells: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    n: int | None = None,
    *,
    autoattack_cells: Collection[str] | None = None,
) -> Estimate:
    """Expected GPU-hours of training and evaluating every cell once; AutoAttack is counted for
    the cells in ``autoattack_cells`` (None: every cell)."""
    model = CostModel.from_config(config)
    resolved = {key: resolve_cell(spec) for key, spec in cells.items()}
    train = [train_minutes(cell, config, model) for cell in resolved.values()]
    evaluate = [
        evaluate_minutes(
            cell,
            config,
            model,
            n,
            autoattack=autoattack_cells is None or key in autoattack_cells,
        )
        for key, cell in resolved.items()
    ]
    return Estimate(
        cells=len(resolved),
        train_gpu_hours=sum(train) / 60.0,
        evaluate_gpu_hours=sum(evaluate) / 60.0,
        longest_train_min=max(train, default=0.0),
    )
