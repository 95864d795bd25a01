"""A table's numbers: the per-seed values behind a cell, "mean ± std (n)", p-values and Table 3's
parameter ratio, and the marks of a gap (SPEC §5)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autolora.planning.grid import TableEntry
from autolora.planning.vocabulary import (
    PROPOSED,
)
from autolora.reporting.stats import (
    summarize,
    ttest_kind,
    two_sample_ttest,
)
from autolora.reporting.tables.store import EvaluationStore

MISSING = "—"
INCOMPLETE_MARK = "†"
NOT_COMPUTED = "n/a"


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


def ordered(values: Iterable[Any]) -> list[Any]:
    """``values`` without repeats, in first-seen order."""
    return list(dict.fromkeys(values))
