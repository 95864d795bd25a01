"""The paper's tables (SPEC §5) from evaluation records: layout, numbers and rendering.

A table is built from the grid's ``TableEntry`` list (one entry per cell and seed) and the results
root; nothing here parses the workflow config. Every number keeps the cells and seeds behind it, so
that the provenance index (``autolora.reporting.provenance``) and the paper comparison (``autolora.reporting.compare``)
can follow it. Cells read "mean ± std (n)"; a mean over fewer seeds than configured reads
"mean ± std (n/N)†" and a number with no seed at all reads "—" (or "n/a" where the metric was not
computed). Footnotes give each gap once, by cause, with a count and the config key or command that
explains it; the cells themselves are listed in ``missing.txt`` and the values CSV.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from autolora.autoattack_variants import (
    CONFIG_KEY,
    STANDARD,
    AutoAttackVariant,
    autoattack_variant,
)
from autolora.errors import DataError
from autolora.planning import layout
from autolora.planning.grid import TableEntry
from autolora.planning.vocabulary import (
    ARCH_LABELS,
    AUTOLR,
    BASELINES,
    DATASETS,
    DEFAULT_ALPHA,
    DEFAULT_LORA_RANK,
    METHOD_LABELS,
    PROPOSED,
    dataset_label,
    parse_variant,
    plain_number,
)
from autolora.records import EvaluationRecord, RunRecord
from autolora.reporting.stats import (
    STD_DESCRIPTION,
    TEST_DESCRIPTIONS,
    summarize,
    ttest_kind,
    two_sample_ttest,
)

METRICS = EvaluationRecord.METRICS  # SA, PGD10, AA
ABLATION_METRICS = ("SA", "PGD10")
MISSING = "—"
INCOMPLETE_MARK = "†"
NOT_COMPUTED = "n/a"
ARITHMETIC_LABELS = {"bf16": "bf16 autocast", "fp32": "fp32", "bf16+fp32": "bf16 and fp32 attempts"}
ARITHMETIC_CELLS_LISTED = 6  # cells named per kind in the arithmetic note; more are counted
RATIO_ROW = "param_ratio"  # LoRa parameters created (what the paper's Table 3 counts)
RATIO_USED_ROW = "param_ratio_used"  # those the LoRa forward uses (lora_blocks: last)
AUTOATTACK_METRIC = "AA"
NO_AA_IN_RECORD = (
    "their evaluation records have no AA (evaluated with `--no-autoattack`); delete them and "
    "rerun `snakemake`"
)

METRIC_LABELS = {"SA": "SA", "PGD10": "PGD-10", "AA": "AA", "ratio": "ratio (%)"}
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


# --------------------------------------------------------------------------------------------
# Table 3's parameter ratio. The counts come from the built models
# (``autolora.models.parameter_counts``: keys arch, lora_rank, lora_blocks, feature_extractor,
# lora_created, lora_used, update_blocks), computed where torch may be imported (``autolora
# aggregate``) and passed in as {(arch, rank): counts}.

ParameterCounts = Mapping[tuple[str, int], Mapping[str, Any]]


def parameter_ratio_pct(lora_parameters: int, feature_extractor_parameters: int) -> float:
    """Table 3's parameter ratio: LoRa parameters / FE parameters (classifier excluded), in %."""
    return 100.0 * lora_parameters / feature_extractor_parameters


# --------------------------------------------------------------------------------------------
# Evaluation records


class EvaluationStore:
    """Reads the evaluation records ``<results>/<cell_id>/eval-<checkpoint>.json``, each once;
    a record whose AA comes from another AutoAttack variant than ``autoattack_version`` is
    refused, so that no mean mixes variants."""

    def __init__(
        self, results_root: str | Path, checkpoint: str, autoattack_version: str = STANDARD
    ):
        self.results_root = Path(results_root)
        self.checkpoint = checkpoint
        self.autoattack_version = autoattack_version
        self._records: dict[str, EvaluationRecord | None] = {}
        self._arithmetic: dict[str, str | None] = {}

    def path(self, cell_id: str) -> Path:
        return self.results_root / cell_id / layout.evaluation_record(self.checkpoint)

    def get(self, cell_id: str) -> EvaluationRecord | None:
        """The record of ``cell_id``, or None when it does not exist (yet)."""
        if cell_id not in self._records:
            self._records[cell_id] = self._read(cell_id)
        return self._records[cell_id]

    def _read(self, cell_id: str) -> EvaluationRecord | None:
        path = self.path(cell_id)
        if not path.is_file():
            return None
        fix = f"delete it and rerun `snakemake {path}`"
        record = EvaluationRecord.read(path, fix)
        problem = _evaluation_problem(record, cell_id, self.checkpoint)
        if problem:
            raise DataError(f"{path}: {problem}; {fix}")
        evaluated_with = record.autoattack_version
        if evaluated_with not in (None, self.autoattack_version):
            raise DataError(
                f"{path}: its AA comes from AutoAttack {evaluated_with!r}, the config asks for "
                f"{self.autoattack_version!r} (`{CONFIG_KEY}`); rerun `snakemake` "
                "to re-evaluate, or set the key back"
            )
        return record

    def arithmetic(self, cell_id: str) -> str | None:
        """How the cell's training steps computed (:func:`training_arithmetic` of its run record),
        or None when the cell has no readable run record."""
        if cell_id not in self._arithmetic:
            path = self.results_root / cell_id / layout.RUN_RECORD
            attempts = (
                RunRecord.read(path, f"rerun `snakemake {path}`").attempts if path.is_file() else []
            )
            self._arithmetic[cell_id] = training_arithmetic(attempts or [])
        return self._arithmetic[cell_id]


def evaluated_values_in(values_csv: str | Path) -> int:
    """:attr:`Table.evaluated_values` of a table as written to ``<table>_values.csv``."""
    frame = pd.read_csv(values_csv, dtype=str, keep_default_na=False)
    if "seeds" not in frame.columns:
        return 0
    return sum(
        1
        for seeds in frame["seeds"]
        for item in seeds.split(";")
        if item and not item.endswith("=")
    )


def training_arithmetic(attempts: Sequence[Mapping[str, Any]]) -> str | None:
    """``bf16`` (bf16 autocast, ``runtime.bf16``), ``fp32``, or ``bf16+fp32`` when the attempts
    of a run record that trained the cell differed; None when there is no training attempt."""
    kinds = {
        "bf16" if (attempt.get("runtime") or {}).get("bf16") else "fp32"
        for attempt in attempts
        if not attempt.get("restored_outputs")
    }
    return "+".join(sorted(kinds)) or None


def _evaluation_problem(record: EvaluationRecord, cell_id: str, checkpoint: str) -> str | None:
    if record.cell_id != cell_id:
        return f"record is for cell {record.cell_id!r}, expected {cell_id!r}"
    if record.checkpoint_name != checkpoint:
        return f"record evaluates checkpoint {record.checkpoint_name!r}, expected {checkpoint!r}"
    return None


# --------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True)
class SeedValue:
    """One seed's contribution to a number."""

    group: str  # the method compared (p-values) or "" (means)
    cell_id: str
    seed: int
    value: float | None
    status: str  # "ok" | "missing" (no evaluation record) | "not_computed" (metric is null)
    evaluation: str  # path of the evaluation record


@dataclass(frozen=True)
class Number:
    """One number of a table: a mean over seeds, a p-value or a computed parameter ratio."""

    table: str
    row: str
    column: str
    kind: str  # "mean" | "p_value" | "ratio"
    metric: str
    value: float
    std: float = math.nan
    n: int = 0
    expected: int = 0
    seeds: tuple[SeedValue, ...] = ()
    test: str | None = None
    formula: str | None = None
    paper_key: dict | None = None
    parameters: dict | None = None  # ratio: its counts; "counted" names the numerator

    @property
    def missing_cells(self) -> list[str]:
        return [s.cell_id for s in self.seeds if s.status == "missing"]

    @property
    def not_computed_cells(self) -> list[str]:
        return [s.cell_id for s in self.seeds if s.status == "not_computed"]

    @property
    def complete(self) -> bool:
        """Every seed has a value (a p-value of two zero-variance groups stays undefined)."""
        defined = not math.isnan(self.value) or (self.kind == "p_value" and self.n > 0)
        return all(s.status == "ok" for s in self.seeds) and defined

    def display(self) -> str:
        if self.kind == "ratio":
            return MISSING if math.isnan(self.value) else f"{self.value:.2f}"
        if self.kind == "p_value":
            return self._display_p_value()
        return self._display_mean()

    def _none_display(self) -> str:
        return NOT_COMPUTED if self.not_computed_cells and not self.missing_cells else MISSING

    def _display_mean(self) -> str:
        if self.n == 0:
            return self._none_display()
        spread = f" ± {self.std:.2f}" if self.n > 1 else ""
        if self.n == self.expected:
            return f"{self.value:.2f}{spread} ({self.n})"
        return f"{self.value:.2f}{spread} ({self.n}/{self.expected}){INCOMPLETE_MARK}"

    def _display_p_value(self) -> str:
        if self.n == 0:
            return self._none_display()
        if math.isnan(self.value):
            return NOT_COMPUTED
        text = format_p_value(self.value)
        return text if self.complete else text + INCOMPLETE_MARK


def format_p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def seed_values(
    entries: Sequence[TableEntry], store: EvaluationStore, metric: str, group: str = ""
) -> list[SeedValue]:
    values = []
    for entry in sorted(entries, key=lambda e: e.seed):
        record = store.get(entry.cell_id)
        path = str(store.path(entry.cell_id))
        if record is None:
            values.append(SeedValue(group, entry.cell_id, entry.seed, None, "missing", path))
        elif record.metrics[metric] is None:
            values.append(SeedValue(group, entry.cell_id, entry.seed, None, "not_computed", path))
        else:
            value = float(record.metrics[metric])
            values.append(SeedValue(group, entry.cell_id, entry.seed, value, "ok", path))
    return values


def mean_number(
    table: str,
    row: str,
    column: str,
    metric: str,
    entries: Sequence[TableEntry],
    store: EvaluationStore,
    paper_key: dict | None,
) -> Number:
    seeds = seed_values(entries, store, metric)
    summary = summarize([s.value for s in seeds if s.status == "ok"])
    return Number(
        table,
        row,
        column,
        "mean",
        metric,
        summary.mean,
        summary.std,
        summary.n,
        len(seeds),
        tuple(seeds),
        paper_key=paper_key,
    )


def p_value_number(
    table: str,
    row: str,
    column: str,
    metric: str,
    proposed: Sequence[TableEntry],
    baseline: Sequence[TableEntry],
    baseline_name: str,
    store: EvaluationStore,
    welch: bool,
    paper_key: dict | None,
) -> Number:
    ours = seed_values(proposed, store, metric, PROPOSED)
    theirs = seed_values(baseline, store, metric, baseline_name)
    a = [s.value for s in ours if s.status == "ok"]
    b = [s.value for s in theirs if s.status == "ok"]
    computable = len(a) >= 2 and len(b) >= 2
    p = two_sample_ttest(a, b, welch=welch).pvalue if computable else math.nan
    n = len(a) + len(b) if computable else 0
    return Number(
        table,
        row,
        column,
        "p_value",
        metric,
        p,
        n=n,
        expected=len(ours) + len(theirs),
        seeds=tuple(ours + theirs),
        test=ttest_kind(welch),
        paper_key=paper_key,
    )


def ratio_number(
    table: str,
    row: str,
    column: str,
    arch: str,
    rank: int,
    counts: Mapping[str, Any] | None,
    paper_key: dict | None,
    *,
    used: bool = False,
) -> Number:
    """Table 3's ratio at ``rank``: the LoRa parameters created (``used=False``, the paper's
    count) or those the LoRa forward uses (``used=True``) over the FE parameters, from ``counts``
    (``autolora.models.parameter_counts``); not computed without them."""
    if counts is None:
        formula = (
            f"no parameter counts of {arch} at r={rank} were given: ratio not computed "
            "(`autolora aggregate` counts them on the built model)"
        )
        return Number(
            table, row, column, "ratio", "ratio", math.nan, formula=formula, paper_key=paper_key
        )
    fe, counted = int(counts["feature_extractor"]), "lora_used" if used else "lora_created"
    lora = int(counts[counted])
    if used:
        what = (
            f"LoRa parameters the LoRa forward uses in {arch} at r={rank} under lora_blocks="
            f"{counts['lora_blocks']} (blocks {', '.join(counts['update_blocks'])})"
        )
    else:
        what = f"LoRa parameters created in {arch} at r={rank} (every residual-block conv)"
    formula = (
        f"{what} / FE parameters of {arch} (all but the classifier, no LoRa) × 100 = "
        f"{lora} / {fe} × 100, counted on the built model"
    )
    return Number(
        table,
        row,
        column,
        "ratio",
        "ratio",
        parameter_ratio_pct(lora, fe),
        formula=formula,
        paper_key=paper_key,
        parameters={**counts, "update_blocks": list(counts["update_blocks"]), "counted": counted},
    )


# --------------------------------------------------------------------------------------------
# Layouts: which entries make which number


def factor_value(entry: TableEntry, table: str) -> Any:
    """The value a table varies for this entry (rank, ε_pt, autolr flag, α)."""
    if table == "table4":
        return plain_number(entry.eps_pt)
    if table == "table5":
        return entry.variant == AUTOLR
    if entry.factor is not None and not isinstance(entry.factor, str):
        return plain_number(entry.factor)
    if table not in ("table3", "table6"):
        return None
    setting, value = parse_variant(entry.variant, entry.method) or (None, None)
    if table == "table3":
        return int(value) if setting == "lora_rank" else DEFAULT_LORA_RANK
    return float(value) if setting == "alpha" else DEFAULT_ALPHA


def format_factor(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _group(entries: Iterable[TableEntry], key) -> dict[Any, list[TableEntry]]:
    groups: dict[Any, list[TableEntry]] = {}
    for entry in entries:
        groups.setdefault(key(entry), []).append(entry)
    return groups


def _paper_key(
    table: str,
    arch: str,
    dataset: str,
    method: str,
    metric: str,
    variant: str = "",
    variant_value: str = "",
) -> dict:
    return {
        "table": table,
        "backbone": arch,
        "dataset": dataset,
        "method": method,
        "variant": variant,
        "variant_value": variant_value,
        "metric": metric,
    }


def _arch(entries: Sequence[TableEntry]) -> str:
    return entries[0].arch if entries else ""


def layout_main(name: str, entries: Sequence[TableEntry], store: EvaluationStore) -> list[Number]:
    """Tables 1/2: rows dataset/method, columns SA, PGD10, AA."""
    groups = _group(entries, lambda e: (e.dataset, e.method))
    numbers = []
    for (dataset, method), cell_entries in groups.items():
        row = f"{dataset}/{method}"
        for metric in METRICS:
            key = _paper_key(name, cell_entries[0].arch, dataset, method, metric)
            numbers.append(mean_number(name, row, metric, metric, cell_entries, store, key))
    return numbers


def _by_row_then_factor(
    name: str, entries: Sequence[TableEntry], row_key
) -> list[tuple[Any, Any, list[TableEntry]]]:
    """(row key, factor value, entries) in row order of first appearance, factor ascending."""
    groups = _group(entries, lambda e: (row_key(e), factor_value(e, name)))
    rows = _ordered(row_key(e) for e in entries)
    return [
        (row, value, groups[(row, value)])
        for row in rows
        for value in sorted(v for r, v in groups if r == row)
    ]


def layout_rank(
    name: str,
    entries: Sequence[TableEntry],
    store: EvaluationStore,
    parameter_counts: ParameterCounts | None = None,
) -> list[Number]:
    """Table 3: rows dataset, columns r<k>/SA and r<k>/PGD10; row param_ratio (LoRa parameters
    created) and, under lora_blocks: last, row param_ratio_used, columns r<k>/ratio."""
    numbers = []
    for dataset, rank, cell_entries in _by_row_then_factor(name, entries, lambda e: e.dataset):
        for metric in ABLATION_METRICS:
            key = _paper_key(
                name, cell_entries[0].arch, dataset, PROPOSED, metric, "lora_rank", str(rank)
            )
            numbers.append(
                mean_number(name, dataset, f"r{rank}/{metric}", metric, cell_entries, store, key)
            )
    arch = _arch(entries)
    ranks = sorted({factor_value(e, name) for e in entries})
    counts = {rank: (parameter_counts or {}).get((arch, rank)) for rank in ranks}
    for rank in ranks:
        key = _paper_key(name, arch, "", PROPOSED, "param_ratio_pct", "lora_rank", str(rank))
        numbers.append(
            ratio_number(name, RATIO_ROW, f"r{rank}/ratio", arch, rank, counts[rank], key)
        )
    if any(c is not None and c["lora_blocks"] == "last" for c in counts.values()):
        for rank in ranks:  # the paper reports no such number: no paper key
            numbers.append(
                ratio_number(
                    name,
                    RATIO_USED_ROW,
                    f"r{rank}/ratio",
                    arch,
                    rank,
                    counts[rank],
                    None,
                    used=True,
                )
            )
    return numbers


def layout_factor(
    name: str,
    entries: Sequence[TableEntry],
    store: EvaluationStore,
    *,
    prefix: str,
    paper_variant: str,
    with_method: bool,
) -> list[Number]:
    """Tables 4 and 6: rows dataset[/method], columns <prefix><value>/<metric>."""

    def row_key(e: TableEntry) -> str:
        return f"{e.dataset}/{e.method}" if with_method else e.dataset

    numbers = []
    for row, value, cell_entries in _by_row_then_factor(name, entries, row_key):
        first = cell_entries[0]
        for metric in ABLATION_METRICS:
            key = _paper_key(
                name,
                first.arch,
                first.dataset,
                first.method,
                metric,
                paper_variant,
                format_factor(value),
            )
            numbers.append(
                mean_number(
                    name,
                    row,
                    f"{prefix}{format_factor(value)}/{metric}",
                    metric,
                    cell_entries,
                    store,
                    key,
                )
            )
    return numbers


def layout_autolr(name: str, entries: Sequence[TableEntry], store: EvaluationStore) -> list[Number]:
    """Table 5: rows dataset, columns twins/<metric> and twins-autolr/<metric>."""
    numbers = []
    for dataset, autolr, cell_entries in _by_row_then_factor(name, entries, lambda e: e.dataset):
        label = "twins-autolr" if autolr else "twins"
        for metric in METRICS:
            key = _paper_key(
                name,
                cell_entries[0].arch,
                dataset,
                "twins",
                metric,
                "auto_lr",
                "true" if autolr else "false",
            )
            numbers.append(
                mean_number(name, dataset, f"{label}/{metric}", metric, cell_entries, store, key)
            )
    return numbers


def layout_p_values(
    name: str, sources: dict[str, Sequence[TableEntry]], store: EvaluationStore, welch: bool
) -> list[Number]:
    """Table 8: rows <source table>/<dataset>, columns <baseline>/<metric>."""
    numbers = []
    for source, entries in sources.items():
        groups = _group(entries, lambda e: (e.dataset, e.method))
        for dataset in _ordered(e.dataset for e in entries):
            proposed = groups.get((dataset, PROPOSED))
            if not proposed:
                continue
            for baseline in BASELINES:
                if (dataset, baseline) not in groups:
                    continue
                for metric in METRICS:
                    key = _paper_key(
                        name,
                        proposed[0].arch,
                        dataset,
                        PROPOSED,
                        f"p_{metric}",
                        "baseline",
                        baseline,
                    )
                    numbers.append(
                        p_value_number(
                            name,
                            f"{source}/{dataset}",
                            f"{baseline}/{metric}",
                            metric,
                            proposed,
                            groups[(dataset, baseline)],
                            baseline,
                            store,
                            welch,
                            key,
                        )
                    )
    return numbers


# --------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    name: str
    title: str
    numbers: list[Number]
    notes: list[str] = field(default_factory=list)
    results_root: str = "results"
    checkpoint: str = "best_test"
    arch: str = ""
    autoattack: AutoAttackVariant = field(default_factory=lambda: autoattack_variant(STANDARD))
    # cell id -> the config keys that leave it without AA (autolora.planning.grid.autoattack_skip_reasons)
    not_computed_reasons: dict[str, str] = field(default_factory=dict)
    arithmetic: dict[str, str] = field(default_factory=dict)  # evaluated cell -> how it trained

    @property
    def rows(self) -> list[str]:
        return _ordered(n.row for n in self.numbers)

    @property
    def columns(self) -> list[str]:
        return _ordered(n.column for n in self.numbers)

    def number(self, row: str, column: str) -> Number | None:
        return next((n for n in self.numbers if n.row == row and n.column == column), None)

    @property
    def missing_cells(self) -> list[str]:
        return sorted({c for n in self.numbers for c in n.missing_cells})

    @property
    def not_computed_cells(self) -> list[str]:
        return sorted({c for n in self.numbers for c in n.not_computed_cells})

    @property
    def cells(self) -> list[str]:
        """Every cell behind a number of this table."""
        return sorted({s.cell_id for n in self.numbers for s in n.seeds})

    @property
    def autoattack_cells(self) -> list[str]:
        """The cells behind this table's AA numbers (none: the table reports no AA)."""
        return sorted(
            {s.cell_id for n in self.numbers if n.metric == AUTOATTACK_METRIC for s in n.seeds}
        )

    def not_computed_by_reason(self) -> dict[str, list[str]]:
        """The cells without AA, grouped by what explains it (a config key, or the record)."""
        groups: dict[str, list[str]] = {}
        for cell in self.not_computed_cells:
            reason = self.not_computed_reasons.get(cell) or NO_AA_IN_RECORD
            groups.setdefault(reason, []).append(cell)
        return groups

    @property
    def full_title(self) -> str:
        """The title, naming the AutoAttack variant when the table reports AA."""
        if not self.autoattack_cells:
            return self.title
        return f"{self.title}; AA: {self.autoattack.label}"

    @property
    def complete(self) -> bool:
        return all(n.complete for n in self.numbers if n.kind != "ratio")

    def display_frame(self) -> pd.DataFrame:
        """Rows × columns of display strings; absent combinations are empty."""
        frame = pd.DataFrame("", index=pd.Index(self.rows, name="row"), columns=self.columns)
        for number in self.numbers:
            frame.loc[number.row, number.column] = number.display()
        return frame

    def values_frame(self) -> pd.DataFrame:
        """One line per number: value, std, n, expected seeds, completeness, per-seed values."""
        lines = []
        for n in self.numbers:
            lines.append(
                {
                    "table": self.name,
                    "row": n.row,
                    "column": n.column,
                    "kind": n.kind,
                    "metric": n.metric,
                    "value": n.value,
                    "std": n.std,
                    "n": n.n,
                    "expected": n.expected,
                    "complete": n.complete if n.kind != "ratio" else True,
                    "test": n.test or "",
                    "seeds": ";".join(
                        f"{s.group + ':' if s.group else ''}{s.seed}="
                        f"{'' if s.value is None else repr(s.value)}"
                        for s in n.seeds
                    ),
                    "missing_cells": ";".join(n.missing_cells),
                    "not_computed_cells": ";".join(n.not_computed_cells),
                    "autoattack": self.autoattack.name if n.metric == AUTOATTACK_METRIC else "",
                }
            )
        return pd.DataFrame(lines)

    @property
    def evaluated_values(self) -> int:
        """How many per-seed values from evaluation records the table's numbers use."""
        return sum(1 for n in self.numbers for s in n.seeds if s.status == "ok")

    def eval_target(self, cell_id: str) -> str:
        return (
            f"{self.results_root.rstrip('/')}/{cell_id}/{layout.evaluation_record(self.checkpoint)}"
        )

    def footnotes(self) -> list[str]:
        """Notes printed under the table: conventions first, then each gap once, by cause, with
        a count and the config key or command that explains it (cells: ``missing.txt``)."""
        notes = list(self.notes)
        if self.autoattack_cells:
            notes.append(self.autoattack.footnote())
        if any(n.kind == "mean" and n.n and n.n < n.expected for n in self.numbers):
            notes.append(
                f"{INCOMPLETE_MARK} mean over fewer seeds than configured (n/N): "
                "incomplete, not comparable with complete cells."
            )
        if any(n.kind == "p_value" and n.n and not n.complete for n in self.numbers):
            notes.append(f"{INCOMPLETE_MARK} p-value from fewer seeds than configured.")
        aa_cells = len(self.autoattack_cells)
        for reason, cells in self.not_computed_by_reason().items():
            notes.append(
                f"{NOT_COMPUTED}: AA not computed for {len(cells)} of {aa_cells} cells: {reason} "
                f"(the cells: {layout.MISSING_CELLS})."
            )
        notes += sorted(
            {
                f"{MISSING} (ratio): {n.formula}"
                for n in self.numbers
                if n.kind == "ratio" and math.isnan(n.value)
            }
        )
        if any(n.kind == "p_value" and n.n and math.isnan(n.value) for n in self.numbers):
            notes.append(f"{NOT_COMPUTED} (p-value): undefined, both groups have zero variance.")
        arithmetic_note = self.arithmetic_note()
        if arithmetic_note:
            notes.append(arithmetic_note)
        if self.missing_cells:
            notes.append(
                f"{MISSING}: no evaluation record yet for {len(self.missing_cells)} of "
                f"{len(self.cells)} cells; `snakemake` produces them (each cell and its command: "
                f"{layout.MISSING_CELLS})."
            )
        return notes

    def arithmetic_note(self) -> str | None:
        """A note when the table's cells were trained under different arithmetic (bf16 autocast
        and fp32, ``training.runtime.bf16``): their numbers are not strictly comparable."""
        groups: dict[str, list[str]] = {}
        for cell, kind in sorted(self.arithmetic.items()):
            groups.setdefault(kind, []).append(cell)
        if len(groups) < 2:
            return None
        parts = []
        for kind, cells in sorted(groups.items()):
            listed = f" ({', '.join(cells)})" if len(cells) <= ARITHMETIC_CELLS_LISTED else ""
            parts.append(f"{ARITHMETIC_LABELS.get(kind, kind)}: {len(cells)} cell(s){listed}")
        return (
            "Cells trained under different arithmetic (training.runtime.bf16), not strictly "
            "comparable: " + "; ".join(parts) + "."
        )

    # ---- rendering

    def to_csv(self) -> str:
        return self.display_frame().to_csv()

    def values_csv(self) -> str:
        return self.values_frame().to_csv(index=False)

    def to_markdown(self) -> str:
        frame = self.display_frame()
        header = ["row", *frame.columns]
        lines = [
            f"**{self.full_title}**",
            "",
            _md_row(header),
            _md_row(["---"] + ["--:"] * len(frame.columns)),
            *(_md_row([row, *frame.loc[row]]) for row in frame.index),
            "",  # Markdown needs a blank line before the notes' paragraph
            *(note + "  " for note in self.footnotes()),  # two trailing spaces: a line break
        ]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        frame = self.display_frame()
        spec = "l" + "r" * len(frame.columns)
        header = [""] + [_latex_column(c) for c in frame.columns]
        lines = [
            "% " + self.full_title,
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(header) + r" \\",
            "\\midrule",
        ]
        for row in frame.index:
            cells = [_latex_row_label(row)] + [_latex_cell(v) for v in frame.loc[row]]
            lines.append(" & ".join(cells) + r" \\")
        lines.append("\\bottomrule")
        for note in self.footnotes():
            text = latex_escape(note.replace("`", ""))
            lines.append(
                f"\\multicolumn{{{len(frame.columns) + 1}}}{{l}}{{\\footnotesize {text}}} \\\\"
            )
        lines.append("\\end{tabular}")
        return "\n".join(lines) + "\n"


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
    by_table = _group(entries, lambda e: e.table)
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
            numbers = _layout(name, by_table[name], store, parameter_counts)
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


def _layout(
    name: str,
    entries: Sequence[TableEntry],
    store: EvaluationStore,
    parameter_counts: ParameterCounts | None,
) -> list[Number]:
    if name in ("table1", "table2"):
        return layout_main(name, entries, store)
    if name == "table3":
        return layout_rank(name, entries, store, parameter_counts)
    if name == "table4":
        return layout_factor(
            name, entries, store, prefix="eps", paper_variant="pretrain_eps", with_method=True
        )
    if name == "table5":
        return layout_autolr(name, entries, store)
    if name == "table6":
        return layout_factor(
            name, entries, store, prefix="alpha", paper_variant="alpha", with_method=False
        )
    raise ValueError(f"no layout for {name}")


# --------------------------------------------------------------------------------------------
# Rendering helpers


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


LATEX_ESCAPES = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"}


def latex_escape(text: str) -> str:
    text = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return (
        text.replace("±", r"$\pm$")
        .replace(MISSING, "---")
        .replace(INCOMPLETE_MARK, r"$^\dagger$")
        .replace("ε", r"$\varepsilon$")
        .replace("α", r"$\alpha$")
    )


def _latex_cell(value: str) -> str:
    return latex_escape(value)


def _latex_row_label(row: str) -> str:
    parts = row.split("/")
    labels = [dataset_label(p) if p in DATASETS else METHOD_LABELS.get(p, p) for p in parts]
    if parts[0].startswith("table"):
        labels[0] = "Table " + parts[0][len("table") :]
    return latex_escape(" / ".join(labels))


def _latex_column(column: str) -> str:
    factor, _, metric = column.rpartition("/")
    label = METRIC_LABELS.get(metric, metric)
    if not factor:
        return latex_escape(label)
    for prefix, symbol in (("alpha", r"$\alpha$="), ("eps", r"$\varepsilon_{pt}$="), ("r", "$r$=")):
        if re.fullmatch(rf"{prefix}[0-9.]+", factor):
            return symbol + factor[len(prefix) :] + " " + latex_escape(label)
    return latex_escape(METHOD_LABELS.get(factor, factor) + " " + label)
