"""`autolora aggregate`: tables, p-values, figures, paper comparison, report and provenance index.

Output folder layout::

    tables/<table>.{csv,md,tex}     display tables (mean ± std (n); "—" missing; † incomplete)
    tables/<table>_values.csv       one line per number: value, std, n, per-seed values
    comparison.{csv,md}, claims.csv paper vs ours, and the paper's qualitative claims
    figures/<kind>-<arch>-<dataset>.png
    provenance/<table>.json         sidecar index read by `autolora audit`
    missing.txt                     cells without an evaluation record and the command for each;
                                    cells without AA and the config key that explains it
    report.md, report.html          the reproduction report
    provenance/results.json         every file above with its sha256, written last; its sha256 is
                                    the folder's seal (`autolora audit --all --seal`)

Equal records give equal bytes: a re-aggregation of unchanged results gives the same seal.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autolora.planning import layout

NAME = "aggregate"
HELP = "build the paper's tables, p-values, figures, paper comparison, report and provenance index"
DEFAULT_PAPER_RESULTS = "config/paper_results.csv"
MAIN_TABLES = ("table1", "table2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config (e.g. config/config.yaml)")
    parser.add_argument(
        "--results", help="results root (default: the config's 'results', else results)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--welch",
        action="store_true",
        help="Table 8 with Welch's t-test instead of Student's equal-variance test",
    )
    parser.add_argument(
        "--paper",
        default=DEFAULT_PAPER_RESULTS,
        help=f"the paper's numbers (default {DEFAULT_PAPER_RESULTS})",
    )
    parser.add_argument(
        "--allow-fewer",
        action="store_true",
        help="replace existing tables in --out even with tables built from fewer evaluations",
    )


def table8_sources(config: Mapping[str, Any]) -> list[str]:
    tables = config.get("tables") or {}
    if "table8" not in tables:
        return []
    return list((tables.get("table8") or {}).get("tables", MAIN_TABLES))


def table3_parameter_counts(grid) -> dict[tuple[str, int], dict[str, Any]]:
    """{(arch, rank): autolora.models.parameter_counts(...)} for Table 3's ratio, counted on the
    built models under the cells' resolved ``lora_blocks`` (torch is imported only if the grid
    has a Table 3)."""
    from autolora.planning.cells import resolve_cell

    wanted: dict[tuple[str, int], str] = {}
    for cell_id in grid.cells_of("table3"):
        config = resolve_cell(grid.cells[cell_id])
        wanted[(config.arch, config.lora_rank)] = config.lora_blocks
    if not wanted:
        return {}
    from autolora.models import parameter_counts

    return {key: parameter_counts(*key, blocks) for key, blocks in sorted(wanted.items())}


def run(args: argparse.Namespace) -> int:
    from autolora.autoattack_variants import configured_variant
    from autolora.planning import grid as grid_module
    from autolora.planning.protocol import protocol_choices

    config = grid_module.load_config(args.config)
    grid = grid_module.expand_grid(config)
    results = args.results or config.get("results", "results")
    out = Path(args.out)
    outputs = aggregate(
        entries=grid.entries,
        results_root=results,
        out_dir=out,
        checkpoint=grid_module.reported_checkpoint(config),
        table8=table8_sources(config),
        welch=args.welch,
        paper_results=args.paper,
        protocol=config.get("protocol", "paper"),
        choices=protocol_choices(config.get("protocol", "paper")),
        overrides=dict(config.get("training") or {}),
        seeds=grid_module.seeds(config),
        config_path=str(args.config),
        parameter_counts=table3_parameter_counts(grid),
        autoattack_version=configured_variant(config).name,
        not_computed_reasons=grid.autoattack_skip_reasons(config),
        allow_fewer=args.allow_fewer,
    )
    missing, not_computed = outputs["missing"], outputs["not_computed"]
    print(
        f"aggregate: {len(outputs['tables'])} table(s), {outputs['numbers']} number(s), "
        f"{len(missing)} missing cell(s), {len(not_computed)} without AA; "
        f"report {out / layout.REPORT_MD}; seal {outputs['seal']}"
    )
    return 0


def check_not_fewer(tables, out_dir: Path, results_root: str | Path) -> None:
    """DataError when a table would replace one in ``out_dir`` that used more evaluations (an
    aggregation pointed at the wrong results folder must not overwrite complete tables)."""
    from autolora.errors import DataError
    from autolora.reporting.tables import evaluated_values_in

    for table in tables:
        existing = out_dir / layout.table_values(table.name)
        if not existing.is_file():
            continue
        before, now = evaluated_values_in(existing), table.evaluated_values
        if now < before:
            raise DataError(
                f"refusing to replace {existing.parent / table.name}.* ({before} evaluated "
                f"values) with a table of {now}: {results_root} lacks evaluation records the "
                "existing tables used (check --results); pass --allow-fewer to replace them"
            )


def cell_list_text(missing: Mapping[str, str], not_computed: Mapping[str, str]) -> str:
    """``missing.txt``: one line per cell, tab-separated, under a comment naming the columns:
    cells without an evaluation record and the command that produces each, then cells whose
    record has no AA and why (empty when nothing is missing)."""
    lines = []
    if missing:
        lines.append("# cells without an evaluation record\tthe command that produces it")
        lines += [f"{cell}\tsnakemake {target}" for cell, target in missing.items()]
    if not_computed:
        lines.append("# cells whose evaluation has no AA\twhy")
        lines += [f"{cell}\t{reason}" for cell, reason in not_computed.items()]
    return "".join(f"{line}\n" for line in lines)


def aggregate(
    *,
    entries,
    results_root: str | Path,
    out_dir: str | Path,
    checkpoint: str,
    table8: list[str],
    welch: bool,
    paper_results: str | Path,
    protocol: str,
    choices: dict,
    overrides: dict,
    seeds: list[int],
    config_path: str = "",
    root: str | Path = ".",
    parameter_counts: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    autoattack_version: str = "standard",
    not_computed_reasons: Mapping[str, str] | None = None,
    allow_fewer: bool = False,
) -> dict[str, Any]:
    """Everything `aggregate` writes, from table entries; returns what was written.
    ``parameter_counts``: Table 3's counts (``table3_parameter_counts``). Refuses (DataError,
    nothing written) to replace a table in ``out_dir`` with one built from fewer evaluations
    unless ``allow_fewer``."""
    from autolora.files import atomic_write
    from autolora.reporting.compare import (
        claims_frame,
        comparison_frame,
        comparison_markdown,
        load_paper_results,
    )
    from autolora.reporting.plots import draw_figures
    from autolora.reporting.provenance import (
        SEAL_PREFIX,
        build_index,
        build_results_index,
        write_index,
        write_results_index,
    )
    from autolora.reporting.report import ReportInputs, write_report
    from autolora.reporting.stats import ttest_kind
    from autolora.reporting.tables import build_tables

    out_dir = Path(out_dir)
    entries = list(entries)
    tables = build_tables(
        [e for e in entries if e.table not in ("table8", "figures")],
        results_root,
        checkpoint,
        table8_sources=table8,
        welch=welch,
        parameter_counts=parameter_counts,
        autoattack_version=autoattack_version,
        not_computed_reasons=not_computed_reasons,
    )
    if not allow_fewer:
        check_not_fewer(tables, out_dir, results_root)
    # declared outputs even when empty
    for folder in (layout.TABLES_DIR, layout.FIGURES_DIR, layout.PROVENANCE_DIR):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    table_files: dict[str, list[Path]] = {}
    for table in tables:
        files = {
            out_dir / layout.table_file(table.name, "csv"): table.to_csv(),
            out_dir / layout.table_file(table.name, "md"): table.to_markdown(),
            out_dir / layout.table_file(table.name, "tex"): table.to_latex(),
            out_dir / layout.table_values(table.name): table.values_csv(),
        }
        for path, text in files.items():
            with atomic_write(path) as handle:
                handle.write(text)
        table_files[table.name] = list(files)
    indices = [
        write_index(
            out_dir / layout.PROVENANCE_DIR,
            build_index(t, root=root, protocol=protocol, outputs=table_files[t.name]),
        )
        for t in tables
    ]
    paper = load_paper_results(paper_results)
    comparison, claims = comparison_frame(tables, paper), claims_frame(tables, paper)
    for path, text in {
        out_dir / layout.COMPARISON_CSV: comparison.to_csv(index=False),
        out_dir / layout.COMPARISON_MD: comparison_markdown(comparison),
        out_dir / layout.CLAIMS: claims.to_csv(index=False),
    }.items():
        with atomic_write(path) as handle:
            handle.write(text)
    figures = draw_figures(
        [e for e in entries if e.table == "figures"], results_root, out_dir / layout.FIGURES_DIR
    )
    inputs = ReportInputs(
        protocol=protocol,
        choices=choices,
        overrides=overrides,
        seeds=seeds,
        checkpoint=checkpoint,
        test=ttest_kind(welch),
        results_root=str(results_root),
        tables=tables,
        comparison=comparison,
        claims=claims,
        figures=sorted(figures),
        table_files=table_files,
        indices=indices,
        config_path=config_path,
    )
    report_files = write_report(inputs, out_dir)
    missing = {c: t.eval_target(c) for t in tables for c in t.missing_cells}
    missing = dict(sorted(missing.items()))
    not_computed = {
        cell: reason
        for t in tables
        for reason, cells in t.not_computed_by_reason().items()
        for cell in cells
    }
    not_computed = dict(sorted(not_computed.items()))
    with atomic_write(out_dir / layout.MISSING_CELLS) as handle:
        handle.write(cell_list_text(missing, not_computed))
    results_index = build_results_index(
        root=root,
        protocol=protocol,
        table_indices=indices,
        files={
            "table file": [p for files in table_files.values() for p in files],
            "comparison": [out_dir / layout.COMPARISON_CSV, out_dir / layout.COMPARISON_MD],
            "claims": [out_dir / layout.CLAIMS],
            "figure": sorted(figures),
            "report": list(report_files),
            "missing cells": [out_dir / layout.MISSING_CELLS],
        },
        inputs={"configuration": config_path or None, "paper results": paper_results},
    )
    seal = SEAL_PREFIX + write_results_index(out_dir / layout.PROVENANCE_DIR, results_index)
    return {
        "tables": tables,
        "numbers": sum(len(t.numbers) for t in tables),
        "missing": missing,
        "not_computed": not_computed,
        "figures": figures,
        "indices": indices,
        "seal": seal,
    }
