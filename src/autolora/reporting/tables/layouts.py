"""Each table's rows and columns (SPEC §5): the main tables, the rank, ε_pt and α ablations, AutoLR
and the p-values, built from the grid's ``TableEntry`` list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from autolora.planning.grid import TableEntry
from autolora.planning.vocabulary import (
    AUTOLR,
    BASELINES,
    DEFAULT_ALPHA,
    DEFAULT_LORA_RANK,
    PROPOSED,
    parse_variant,
    plain_number,
)
from autolora.records import EvaluationRecord
from autolora.reporting.tables.numbers import (
    Number,
    ParameterCounts,
    mean_number,
    ordered,
    p_value_number,
    ratio_number,
)
from autolora.reporting.tables.store import EvaluationStore

METRICS = EvaluationRecord.METRICS  # SA, PGD10, AA
ABLATION_METRICS = ("SA", "PGD10")
RATIO_ROW = "param_ratio"  # LoRa parameters created (what the paper's Table 3 counts)
RATIO_USED_ROW = "param_ratio_used"  # those the LoRa forward uses (lora_blocks: last)


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


def group(entries: Iterable[TableEntry], key) -> dict[Any, list[TableEntry]]:
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
    groups = group(entries, lambda e: (e.dataset, e.method))
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
    groups = group(entries, lambda e: (row_key(e), factor_value(e, name)))
    rows = ordered(row_key(e) for e in entries)
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
        groups = group(entries, lambda e: (e.dataset, e.method))
        for dataset in ordered(e.dataset for e in entries):
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


def layout_table(
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
