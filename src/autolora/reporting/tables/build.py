"""Every table of a grid, in paper order (``build_tables``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from autolora.autoattack_variants import (
    STANDARD,
    autoattack_variant,
)
from autolora.planning.grid import TableEntry
from autolora.planning.vocabulary import (
    ARCH_LABELS,
)
from autolora.reporting.stats import (
    STD_DESCRIPTION,
    TEST_DESCRIPTIONS,
    ttest_kind,
)
from autolora.reporting.tables.layouts import group, layout_p_values, layout_table
from autolora.reporting.tables.numbers import ParameterCounts
from autolora.reporting.tables.render import Table
from autolora.reporting.tables.store import EvaluationStore

TABLE_TITLES = {
    "table1": "Table 1: SA / PGD-10 / AA (%) per dataset and method",
    "table2": "Table 2: SA / PGD-10 / AA (%) per dataset and method",
    "table3": (
        "Table 3: AutoLoRa with LoRa rank r; parameter ratio = LoRa / FE parameters (%): "
        "created (param_ratio) and, under lora_blocks last, used (param_ratio_used)"
    ),
    "table4": "Table 4: pre-training ε_pt (/255) of the backbone",
    "table5": "Table 5: TWINS without / with the automated LR scheduler",
    "table6": "Table 6: AutoLoRa with exponent α of the λ schedule",
    "table8": "Table 8: p-values of two-sample t-tests, AutoLoRa vs each baseline",
}
TABLE_ORDER = ("table1", "table2", "table3", "table4", "table5", "table6", "table8")


def build_tables(
    entries: Iterable[TableEntry],
    results_root: str | Path,
    checkpoint: str,
    *,
    table8_sources: Sequence[str] = (),
    welch: bool = False,
    parameter_counts: ParameterCounts | None = None,
    autoattack_version: str = STANDARD,
    not_computed_reasons: Mapping[str, str] | None = None,
) -> list[Table]:
    """Every table present in ``entries`` (plus Table 8 over ``table8_sources``), in paper order.

    ``parameter_counts``: {(arch, rank): ``autolora.models.parameter_counts(...)``} for Table 3's
    ratio (not computed without them). ``autoattack_version``: the AutoAttack variant every AA
    number must come from (named in the titles and footnotes); ``not_computed_reasons``: cell id
    -> the config keys that leave it without AA (``autolora.planning.grid.Grid.autoattack_skip_reasons``),
    for the footnotes.
    """
    variant = autoattack_variant(autoattack_version)
    reasons = dict(not_computed_reasons or {})
    store = EvaluationStore(results_root, checkpoint, variant.name)
    by_table = group(entries, lambda e: e.table)
    conventions = [
        f"Values in %, mean ± std (n) over seeds; {STD_DESCRIPTION}.",
        f"Evaluated checkpoint: {checkpoint}.",
    ]
    tables = []
    for name in TABLE_ORDER:
        if name == "table8":
            sources = {s: by_table[s] for s in table8_sources if s in by_table}
            if not table8_sources:
                continue
            numbers = layout_p_values(name, sources, store, welch)
            notes = [
                f"Test: {TEST_DESCRIPTIONS[ttest_kind(welch)]}, AutoLoRa's per-seed values "
                "against the baseline's, per metric.",
                f"Evaluated checkpoint: {checkpoint}.",
            ]
            absent = [s for s in table8_sources if s not in by_table]
            if absent:
                notes.append(f"Source tables not in the grid: {', '.join(absent)}.")
        elif name in by_table:
            numbers = layout_table(name, by_table[name], store, parameter_counts)
            notes = list(conventions)
        else:
            continue
        used = (
            by_table.get(name)
            if name != "table8"
            else [e for s in table8_sources for e in by_table.get(s, [])]
        )
        archs = {e.arch for e in used or []}
        arch = archs.pop() if len(archs) == 1 else ""
        title = TABLE_TITLES[name] + (f" ({ARCH_LABELS.get(arch, arch)})" if arch else "")
        evaluated = {s.cell_id for n in numbers for s in n.seeds if s.status == "ok"}
        arithmetic = {cell: store.arithmetic(cell) for cell in evaluated}
        tables.append(
            Table(
                name,
                title,
                numbers,
                notes,
                str(results_root),
                checkpoint,
                arch,
                autoattack=variant,
                not_computed_reasons=reasons,
                arithmetic={cell: kind for cell, kind in arithmetic.items() if kind is not None},
            )
        )
    return tables
