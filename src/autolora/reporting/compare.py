"""The paper's numbers beside ours, and whether the paper's qualitative claims hold in ours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from autolora.errors import DataError
from autolora.planning.vocabulary import BASELINES, PROPOSED
from autolora.reporting.tables import Number, Table

PAPER_COLUMNS = (
    "table",
    "backbone",
    "dataset",
    "method",
    "variant",
    "variant_value",
    "metric",
    "value",
)
KEY_COLUMNS = PAPER_COLUMNS[:-1]
CLAIM_METRICS = ("PGD10", "AA")
HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "unknown"


def load_paper_results(path: str | Path) -> pd.DataFrame:
    """The paper's reported numbers, one per line; key columns as normalised strings."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as error:
        raise DataError(
            f"{path}: cannot read the paper's results ({error}); restore it from "
            "git (config/paper_results.csv)"
        ) from error
    missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {list(PAPER_COLUMNS)}")
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    frame["variant_value"] = frame["variant_value"].map(normalise_variant_value)
    return frame


def normalise_variant_value(value: object) -> str:
    """'1.0', '1' and 1 compare equal; booleans lower-case; anything else as text."""
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def paper_lookup(paper: pd.DataFrame) -> dict[tuple, float]:
    return {tuple(row[c] for c in KEY_COLUMNS): row["value"] for _, row in paper.iterrows()}


def paper_value(lookup: dict[tuple, float], number: Number) -> float:
    if number.paper_key is None:
        return math.nan
    key = dict(
        number.paper_key,
        variant_value=normalise_variant_value(number.paper_key["variant_value"])
        if number.paper_key["variant_value"] != ""
        else "",
    )
    return lookup.get(tuple(key[c] for c in KEY_COLUMNS), math.nan)


def comparison_frame(tables: Sequence[Table], paper: pd.DataFrame) -> pd.DataFrame:
    """One line per number: ours (mean or p-value), the paper's, ours − paper. AA from a reduced
    AutoAttack variant is not set beside the paper's (standard) AA."""
    lookup = paper_lookup(paper)
    lines = []
    for table in tables:
        for number in table.numbers:
            theirs = math.nan if _other_aa(table, number) else paper_value(lookup, number)
            lines.append(
                {
                    "table": table.name,
                    "row": number.row,
                    "column": number.column,
                    "ours": number.value,
                    "std": number.std,
                    "n": number.n,
                    "expected": number.expected,
                    "complete": number.complete if number.kind != "ratio" else True,
                    "paper": theirs,
                    "difference": number.value - theirs,
                    "ours_display": number.display(),
                }
            )
    return pd.DataFrame(lines)


def claims_frame(tables: Sequence[Table], paper: pd.DataFrame) -> pd.DataFrame:
    """Per main table, dataset and metric: is AutoLoRa above both baselines, in ours and the paper?"""
    lookup = paper_lookup(paper)
    lines = []
    for table in tables:
        if table.name not in ("table1", "table2"):
            continue
        for dataset in dict.fromkeys(r.split("/")[0] for r in table.rows):
            for metric in CLAIM_METRICS:
                numbers = {
                    m: table.number(f"{dataset}/{m}", metric) for m in (PROPOSED, *BASELINES)
                }
                ours = _claim_status(
                    {m: n.value if n and n.n else None for m, n in numbers.items()}
                )
                paper_status = _claim_status(
                    {m: (paper_value(lookup, n) if n else math.nan) for m, n in numbers.items()}
                )
                incomplete = [m for m, n in numbers.items() if n is not None and not n.complete]
                notes = ["incomplete seeds: " + ", ".join(incomplete)] if incomplete else []
                if metric == "AA" and not table.autoattack.is_standard:
                    notes.append(f"ours: {table.autoattack.label}, the paper's: standard")
                lines.append(
                    {
                        "table": table.name,
                        "dataset": dataset,
                        "metric": metric,
                        "claim": f"AutoLoRa's {metric} above vanilla RFT and TWINS",
                        "ours": ours,
                        "paper": paper_status,
                        "note": "; ".join(notes),
                    }
                )
    return pd.DataFrame(
        lines, columns=["table", "dataset", "metric", "claim", "ours", "paper", "note"]
    )


def _other_aa(table: Table, number: Number) -> bool:
    """An AA number (mean or p-value) from a reduced AutoAttack variant."""
    return number.metric == "AA" and not table.autoattack.is_standard


def _claim_status(values: dict[str, float | None]) -> str:
    if any(v is None or math.isnan(v) for v in values.values()):
        return UNKNOWN
    proposed = values[PROPOSED]
    return HOLDS if all(proposed > values[b] for b in BASELINES) else FAILS


def comparison_markdown(comparison: pd.DataFrame) -> str:
    """Markdown of the side-by-side (numbers the paper reports only)."""
    shown = comparison[comparison["paper"].notna()]
    lines = ["| table | row | column | ours | paper | ours − paper |", "|---|---|---|--:|--:|--:|"]
    for _, line in shown.iterrows():
        difference = (
            "—" if math.isnan(line["difference"]) else _signed(line["difference"], line["table"])
        )
        lines.append(
            f"| {line['table']} | {line['row']} | {line['column']} | {line['ours_display']} "
            f"| {_plain(line['paper'])} | {difference} |"
        )
    return "\n".join(lines) + "\n"


def claims_markdown(claims: pd.DataFrame) -> str:
    lines = ["| table | dataset | claim | ours | paper | note |", "|---|---|---|---|---|---|"]
    for _, c in claims.iterrows():
        lines.append(
            f"| {c['table']} | {c['dataset']} | {c['claim']} | {c['ours']} | {c['paper']} "
            f"| {c['note']} |"
        )
    return "\n".join(lines) + "\n"


def _signed(value: float, table: str) -> str:
    return f"{value:+.2e}" if table == "table8" else f"{value:+.2f}"


def _plain(value: float) -> str:
    return f"{value:g}"
