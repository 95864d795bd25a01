"""The reproduction report: protocol, tables, paper comparison, figures, missing cells, provenance.

Markdown is the source; the HTML is the same text through python-markdown. Links (figures, table
files, provenance indices) are relative to the report's folder.
"""

from __future__ import annotations

import html
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import markdown
import pandas as pd
import yaml

from autolora.files import atomic_write
from autolora.planning import layout
from autolora.reporting.compare import claims_markdown, comparison_markdown
from autolora.reporting.stats import STD_DESCRIPTION, TEST_DESCRIPTIONS
from autolora.reporting.tables import Table


@dataclass
class ReportInputs:
    protocol: str
    choices: dict
    overrides: dict
    seeds: Sequence[int]
    checkpoint: str
    test: str  # "student" | "welch"
    results_root: str
    tables: Sequence[Table]
    comparison: pd.DataFrame
    claims: pd.DataFrame
    figures: Sequence[Path] = ()
    table_files: dict[str, list[Path]] = field(default_factory=dict)  # table -> rendered files
    indices: Sequence[Path] = ()
    config_path: str = ""


def report_markdown(inputs: ReportInputs, out_dir: str | Path) -> str:
    out_dir = Path(out_dir)
    parts = [
        "# Reproduction report: AutoLoRa (ICLR 2024) and its baselines",
        _summary(inputs),
        _protocol_section(inputs),
        "## Tables",
        *(_table_section(t, inputs, out_dir) for t in inputs.tables),
        _comparison_section(inputs),
        _figures_section(inputs, out_dir),
        _missing_section(inputs),
        _provenance_section(inputs, out_dir),
    ]
    return "\n\n".join(p.rstrip() for p in parts if p) + "\n"


def _summary(inputs: ReportInputs) -> str:
    numbers = [n for t in inputs.tables for n in t.numbers if n.kind != "ratio"]
    complete = sum(n.complete for n in numbers)
    return (
        f"Configuration `{inputs.config_path}`, results under `{inputs.results_root}`. "
        f"{complete} of {len(numbers)} reported numbers are complete over all configured seeds; "
        f"status: {status_text(inputs.tables)}."
    )


def status_text(tables: Sequence[Table]) -> str:
    """The report's status: complete, or incomplete with what is missing and why (one sentence)."""
    cells = {c for t in tables for c in t.cells}
    missing = {c for t in tables for c in t.missing_cells}
    aa_cells = {c for t in tables for c in t.autoattack_cells}
    gaps = [
        f"AA not computed for {len(group)} of {len(aa_cells)} cells ({reason})"
        for reason, group in cells_without_aa(tables).items()
    ]
    if missing:
        gaps.append(
            f"no evaluation record yet for {len(missing)} of {len(cells)} cells "
            "(`snakemake` produces them)"
        )
    numbers = [n for t in tables for n in t.numbers if n.kind != "ratio"]
    if not gaps and any(not n.complete for n in numbers):
        gaps.append(f"{sum(not n.complete for n in numbers)} numbers are incomplete")
    return "**incomplete**: " + "; ".join(gaps) if gaps else "complete"


def cells_without_aa(tables: Sequence[Table]) -> dict[str, set[str]]:
    """The cells whose AA was not computed, over all tables, grouped by the reason."""
    groups: dict[str, set[str]] = {}
    for table in tables:
        for reason, cells in table.not_computed_by_reason().items():
            groups.setdefault(reason, set()).update(cells)
    return groups


def config_text(value: object) -> str:
    """A setting as the config file spells it (YAML flow style: ``true``, ``{train_steps: 3}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("...").strip()


def _protocol_section(inputs: ReportInputs) -> str:
    lines = [
        "## Protocol",
        f"Protocol **{inputs.protocol}**; seeds {', '.join(map(str, inputs.seeds))}; reported "
        f"checkpoint `{inputs.checkpoint}`.",
        "",
        "| choice | value |",
        "|---|---|",
        *(f"| {k} | {config_text(v)} |" for k, v in sorted(inputs.choices.items())),
    ]
    if inputs.overrides:
        lines += ["", "Overrides applied to every cell (config `training`):", ""]
        lines += [f"- `{k}`: `{config_text(v)}`" for k, v in sorted(inputs.overrides.items())]
    lines += [
        "",
        f"Statistics: mean over seeds, {STD_DESCRIPTION}; the number of seeds is in parentheses. "
        f"Table 8: {TEST_DESCRIPTIONS[inputs.test]}.",
    ]
    return "\n".join(lines)


def _table_section(table: Table, inputs: ReportInputs, out_dir: Path) -> str:
    files = inputs.table_files.get(table.name, [])
    links = ", ".join(f"[{p.suffix.lstrip('.')}]({_rel(p, out_dir)})" for p in files)
    return f"### {table.name}\n\n{table.to_markdown()}" + (f"\nFiles: {links}\n" if links else "")


def _comparison_section(inputs: ReportInputs) -> str:
    lines = ["## Paper vs reproduction"]
    if inputs.comparison.empty or inputs.comparison["paper"].notna().sum() == 0:
        lines.append("No number of this grid is reported in the paper.")
    else:
        lines += [
            "Ours (mean ± std (n)), the paper's value and the difference ours − paper.",
            "",
            comparison_markdown(inputs.comparison),
        ]
    if not inputs.claims.empty:
        lines += ["### Qualitative claims", "", claims_markdown(inputs.claims)]
    return "\n".join(lines)


def _figures_section(inputs: ReportInputs, out_dir: Path) -> str:
    if not inputs.figures:
        return ""
    lines = [
        "## Figures",
        "Lines: mean over seeds per epoch; bands: ± one sample std (where ≥ 2 seeds).",
        "",
    ]
    lines += [f"![{p.stem}]({_rel(p, out_dir)})\n" for p in inputs.figures]
    return "\n".join(lines)


def _missing_section(inputs: ReportInputs) -> str:
    missing = {c: t.eval_target(c) for t in inputs.tables for c in t.missing_cells}
    without_aa = cells_without_aa(inputs.tables)
    lines = ["## Missing cells"]
    if not missing:
        lines.append("None: every configured cell has an evaluation record.")
    else:
        lines += [
            f"{len(missing)} cell(s) have no evaluation record; `snakemake` produces all of "
            "them, or one at a time:",
            "",
        ]
        lines += [f"- `{cell}`: `snakemake {target}`" for cell, target in sorted(missing.items())]
    if without_aa:
        lines += ["", "Evaluated without AA (each cell and why: `missing.txt`):", ""]
        lines += [f"- {len(group)} cells: {reason}" for reason, group in without_aa.items()]
    return "\n".join(lines)


def _provenance_section(inputs: ReportInputs, out_dir: Path) -> str:
    lines = [
        "## Provenance",
        "Every number maps to its evaluation records, checkpoints, run records, split manifests "
        "and weights, each with its sha256, in the index beside each table:",
        "",
    ]
    lines += [f"- [{p.name}]({_rel(p, out_dir)})" for p in inputs.indices]
    lines += [
        "",
        "Trace one number and re-verify every hash on its chain, or check all of them "
        "(from the folder the workflow ran in):",
        "",
        "```",
        *audit_examples(inputs.tables, out_dir),
        "```",
    ]
    return "\n".join(lines)


def example_number(tables: Sequence[Table]) -> tuple[str, str, str] | None:
    """(table, row, column) of a number these tables have: a complete mean, AA if there is one."""
    means = [(t.name, n) for t in tables for n in t.numbers if n.kind == "mean"]
    pool = [(t, n) for t, n in means if n.complete] or means
    preferred = [(t, n) for t, n in pool if n.metric == "AA"] or pool
    if not preferred:
        return None
    table, number = preferred[0]
    return table, number.row, number.column


def audit_examples(tables: Sequence[Table], out_dir: Path) -> list[str]:
    """The audit commands the report shows, naming this folder and a number it has."""
    index = shlex.quote(str(out_dir))
    example = example_number(tables)
    one = [f"autolora audit --index {index} {shlex.join(example)}"] if example else []
    return [*one, f"autolora audit --index {index} --all"]


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())).as_posix()


def report_html(markdown_text: str, title: str = "Reproduction report") -> str:
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>\n<style>body{{font-family:sans-serif;max-width:70em;"
        "margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "td{text-align:right}img{max-width:45em}</style></head>\n<body>\n"
        f"{body}\n</body></html>\n"
    )


def write_report(inputs: ReportInputs, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    text = report_markdown(inputs, out_dir)
    md_path, html_path = out_dir / layout.REPORT_MD, out_dir / layout.REPORT_HTML
    with atomic_write(md_path) as handle:
        handle.write(text)
    with atomic_write(html_path) as handle:
        handle.write(report_html(text))
    return md_path, html_path
