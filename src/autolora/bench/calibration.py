"""The config's ``cost`` section measured on this device, and the grid's GPU-hours projected with
it (``autolora.planning.costmodel``)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora.bench.timing import REFERENCE_ARCH, REFERENCE_METHOD, StepTiming
from autolora.errors import ConfigError


def _per_arch_throughput(
    entries: Iterable[tuple[str, float]],
) -> dict[str, float]:
    """images/s per arch from (arch, images/s) pairs: the mean seconds per image over the
    arch's cases (224 px and 32->224 cost about the same; the cost model has one figure)."""
    seconds: dict[str, list[float]] = {}
    for arch, images_per_s in entries:
        seconds.setdefault(arch, []).append(1.0 / images_per_s)
    return {arch: 1.0 / statistics.mean(values) for arch, values in seconds.items()}


def calibration(
    rows: Sequence[StepTiming], evaluation: Sequence[Mapping[str, Any]], fast_path: str
) -> dict[str, Any]:
    """The config's ``cost`` section measured on this device for one fast path.

    The cost model prices an image at ``backbone[arch] * method[m] / train_images_per_s``:
    ``train_images_per_s`` is vanilla RFT on the reference backbone (ResNet-18 when measured,
    else the first measured one), ``backbone`` the reference's vanilla throughput over each
    arch's, ``method`` vanilla's throughput over the method's (mean over the measured archs).
    """
    timed = [r for r in rows if r.fast_path == fast_path and r.method != "standard"]
    by_method: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in timed):
        by_method[method] = _per_arch_throughput(
            (r.arch, r.images_per_s) for r in timed if r.method == method
        )
    if REFERENCE_METHOD not in by_method:
        raise ConfigError(
            f"projecting a grid needs the reference method {REFERENCE_METHOD!r} among --methods "
            "(the cost model's throughputs are vanilla RFT's)"
        )
    vanilla = by_method[REFERENCE_METHOD]
    reference = REFERENCE_ARCH if REFERENCE_ARCH in vanilla else next(iter(vanilla))
    section: dict[str, Any] = {
        "train_images_per_s": vanilla[reference],
        "backbone": {arch: vanilla[reference] / value for arch, value in vanilla.items()},
        "method": {
            method: statistics.mean(vanilla[a] / value for a, value in per_arch.items())
            for method, per_arch in by_method.items()
        },
    }
    for key, field_name in (
        ("pgd10_images_per_s", "eval_images_per_s"),
        ("autoattack_images_per_s", "autoattack_images_per_s"),
    ):
        measured = _per_arch_throughput((e["arch"], e[key]) for e in evaluation if key in e)
        if reference in measured:
            section[field_name] = measured[reference]
    return section


def format_cost_section(section: Mapping[str, Any]) -> str:
    """YAML lines to paste into the config's ``cost`` section."""

    def number(value: float) -> str:
        return f"{value:.4g}"

    lines = ["cost:"]
    for key in ("train_images_per_s", "eval_images_per_s", "autoattack_images_per_s"):
        if key in section:
            lines.append(f"  {key}: {number(section[key])}")
    for key in ("backbone", "method"):
        table = ", ".join(f"{name}: {number(v)}" for name, v in section[key].items())
        lines.append(f"  {key}: {{{table}}}")
    return "\n".join(lines)


def project_grid(
    config_path: str | Path,
    rows: Sequence[StepTiming],
    evaluation: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """GPU-hours of the configured grid with the measured throughputs, per timed fast path.

    Reuses ``autolora.planning.costmodel.estimate`` with the config's ``cost`` section replaced by the
    measurement (``calibration``). Only cells whose backbone was benchmarked are projected;
    the others are counted in ``unprojected_cells``.
    """
    from autolora.planning.costmodel import estimate
    from autolora.planning.grid import expand_grid, load_config

    config = load_config(config_path)
    grid = expand_grid(config)
    n = (config.get("evaluation") or {}).get("n")
    autoattack_cells = grid.autoattack_cells(config)
    configured = estimate(grid.cells, config, n, autoattack_cells=autoattack_cells)
    lines = [
        f"projected GPU-hours of {config_path} ({len(grid.cells)} cells; the config's cost "
        f"section gives {configured.gpu_hours:.1f} h):"
    ]
    projections = []
    configured_cost = dict(config.get("cost") or {})
    for fast_path in dict.fromkeys(r.fast_path for r in rows):
        section = calibration(rows, evaluation, fast_path)
        cells = {k: s for k, s in grid.cells.items() if s["arch"] in section["backbone"]}
        unprojected = len(grid.cells) - len(cells)
        cost = {
            **configured_cost,
            **section,
            "method": {**(configured_cost.get("method") or {}), **section["method"]},
        }
        projected = estimate(cells, {**config, "cost": cost}, n, autoattack_cells=autoattack_cells)
        skipped = sorted({s["arch"] for s in grid.cells.values()} - set(section["backbone"]))
        projections.append(
            {
                "fast_path": fast_path,
                "cost": section,
                "cells": projected.cells,
                "unprojected_cells": unprojected,
                "unmeasured_archs": skipped,
                "train_gpu_hours": projected.train_gpu_hours,
                "evaluate_gpu_hours": projected.evaluate_gpu_hours,
                "gpu_hours": projected.gpu_hours,
                "longest_train_min": projected.longest_train_min,
            }
        )
        lines.append(
            f"  {fast_path}: {projected.gpu_hours:.1f} h (train {projected.train_gpu_hours:.1f}, "
            f"evaluate {projected.evaluate_gpu_hours:.1f}) for {projected.cells} cells; "
            f"longest cell {projected.longest_train_min / 60:.1f} h"
            + (
                f"; {unprojected} cells of unbenchmarked backbones "
                f"({', '.join(skipped)}) not projected"
                if skipped
                else ""
            )
        )
        lines.append(f"  calibration for {fast_path} (paste into {config_path}):")
        lines.extend("    " + line for line in format_cost_section(section).splitlines())
    lines.append(
        "  (steps on a resident batch: data loading not included; AutoAttack as measured, see "
        "docs/performance.md)"
    )
    return {
        "summary": "\n".join(lines),
        "configured_gpu_hours": configured.gpu_hours,
        "projections": projections,
    }
