"""`autolora plan`: the cells, jobs per rule and estimated GPU-hours of a workflow config."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping
from typing import Any

NAME = "plan"
HELP = "print the cells, the jobs per workflow rule and the estimated GPU-hours of a config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config (e.g. config/config.yaml)")


def planned_jobs(
    config: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """Jobs per Snakemake rule for a run from scratch (``autolora.planning.rules``)."""
    from autolora.planning import rules
    from autolora.planning.grid import weights_source
    from autolora.planning.vocabulary import SYNTHETIC

    datasets = {spec["dataset"] for spec in cells.values()}
    synthetic = {d for d in datasets if config["datasets"][d]["source"] == SYNTHETIC}
    weights = {(spec["arch"], spec["eps_pt"]) for spec in cells.values()}
    jobs: dict[str, int] = {}
    if datasets - synthetic:
        jobs[rules.DOWNLOAD_DATASET] = jobs[rules.PREPARE_DATASET] = len(datasets - synthetic)
    if synthetic:
        jobs[rules.SYNTHESIZE_DATASET] = len(synthetic)
    if weights_source(config) == "pretrain":
        jobs[rules.PRETRAIN_BACKBONE] = len(weights)
    else:
        jobs[rules.DOWNLOAD_WEIGHTS] = jobs[rules.CONVERT_WEIGHTS] = len(weights)
    jobs[rules.TRAIN] = jobs[rules.EVALUATE] = len(cells)
    jobs[rules.RESOLVE_CONFIG] = jobs[rules.AGGREGATE] = jobs[rules.ALL] = 1
    return jobs


def format_plan(config: Mapping[str, Any]) -> str:
    from autolora.autoattack_variants import configured_variant
    from autolora.planning.costmodel import estimate
    from autolora.planning.grid import expand_grid

    grid = expand_grid(config)
    per_table = Counter(entry.table for entry in grid.entries)
    n = (config.get("evaluation") or {}).get("n")
    aa_cells = grid.autoattack_cells(config)
    cost = estimate(grid.cells, config, n, autoattack_cells=aa_cells)
    jobs = planned_jobs(config, grid.cells)
    variant = configured_variant(config)
    lines = [
        f"protocol {config.get('protocol', 'paper')}: {len(grid.cells)} unique cells "
        f"({len(grid.datasets)} datasets, {len(grid.weights)} backbones)",
        "cells per table (coinciding cells are trained once):",
        *(f"  {table:<8} {len(grid.cells_of(table)):>5}" for table in per_table),
        "jobs per rule (from scratch):",
        *(f"  {rule:<20} {count:>5}" for rule, count in jobs.items()),
        f"  {'total':<20} {sum(jobs.values()):>5}",
        f"AutoAttack: {variant.label} on {len(aa_cells)} of {len(grid.cells)} cells "
        f"(evaluation.autoattack_version: {variant.name})",
        f"estimated GPU-hours: {cost.gpu_hours:.1f} "
        f"(train {cost.train_gpu_hours:.1f}, evaluate {cost.evaluate_gpu_hours:.1f}); "
        f"longest cell {cost.longest_train_min / 60:.1f} h",
        "the estimate uses the config's 'cost' throughputs; calibrate them with `autolora bench`",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from autolora.planning.grid import load_config

    print(format_plan(load_config(args.config)))
    return 0
