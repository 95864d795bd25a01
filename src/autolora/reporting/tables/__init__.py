"""The paper's tables (SPEC §5) from evaluation records, split by job: ``store`` (the records
read), ``numbers`` (a cell's number and the seeds behind it), ``layouts`` (each table's rows and
columns), ``render`` (Markdown, LaTeX, CSV, footnotes) and ``build`` (every table of a grid).

A table is built from the grid's ``TableEntry`` list (one entry per cell and seed) and the results
root; nothing here parses the workflow config. Every number keeps the cells and seeds behind it, so
that the provenance index (``autolora.reporting.provenance``) and the paper comparison (``autolora.reporting.compare``)
can follow it. Cells read "mean ± std (n)"; a mean over fewer seeds than configured reads
"mean ± std (n/N)†" and a number with no seed at all reads "—" (or "n/a" where the metric was not
computed). Footnotes give each gap once, by cause, with a count and the config key or command that
explains it; the cells themselves are listed in ``missing.txt`` and the values CSV.
"""

from __future__ import annotations

from autolora.reporting.tables.build import (
    TABLE_ORDER,
    TABLE_TITLES,
    build_tables,
)
from autolora.reporting.tables.layouts import (
    ABLATION_METRICS,
    METRICS,
    RATIO_ROW,
    RATIO_USED_ROW,
    factor_value,
    format_factor,
    layout_autolr,
    layout_factor,
    layout_main,
    layout_p_values,
    layout_rank,
    layout_table,
)
from autolora.reporting.tables.numbers import (
    INCOMPLETE_MARK,
    MISSING,
    NOT_COMPUTED,
    Number,
    ParameterCounts,
    SeedValue,
    format_p_value,
    mean_number,
    p_value_number,
    parameter_ratio_pct,
    ratio_number,
    seed_values,
)
from autolora.reporting.tables.render import (
    METRIC_LABELS,
    Table,
    latex_escape,
)
from autolora.reporting.tables.store import (
    EvaluationStore,
    evaluated_values_in,
    training_arithmetic,
)

__all__ = [
    "ABLATION_METRICS",
    "EvaluationStore",
    "INCOMPLETE_MARK",
    "METRICS",
    "METRIC_LABELS",
    "MISSING",
    "NOT_COMPUTED",
    "Number",
    "ParameterCounts",
    "RATIO_ROW",
    "RATIO_USED_ROW",
    "SeedValue",
    "TABLE_ORDER",
    "TABLE_TITLES",
    "Table",
    "build_tables",
    "evaluated_values_in",
    "factor_value",
    "format_factor",
    "format_p_value",
    "latex_escape",
    "layout_autolr",
    "layout_factor",
    "layout_main",
    "layout_p_values",
    "layout_rank",
    "layout_table",
    "mean_number",
    "p_value_number",
    "parameter_ratio_pct",
    "ratio_number",
    "seed_values",
    "training_arithmetic",
]
