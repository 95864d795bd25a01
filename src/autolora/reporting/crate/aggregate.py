"""The aggregation's side of the crate: the sha256 the provenance indices claim for the folder's
files (``load_claims``), the folder's tables, figures, report and indices as files, and every table
number as a ``PropertyValue`` derived from the evaluation records of its seeds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.files import read_json
from autolora.planning import layout
from autolora.reporting.crate.graph import CrateBuilder, ref
from autolora.reporting.crate.vocabulary import (
    LARGE_SUFFIXES,
    SKIPPED_SUFFIXES,
    WORKFLOW_PARAMETERS,
    is_hidden,
    media_type,
)


@dataclass
class DescribedAggregate:
    """The aggregation's results: the folder's files, the table numbers, and the latest time
    stamp of the provenance indices."""

    results: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    end: str | None = None


RESOLVE_CONFIG_LOG = layout.report_log("resolve_config")
TOP_LEVEL = {
    layout.REPORT_MD: ("report", "the reproduction report (Markdown)"),
    "report.html": ("report", "the reproduction report (HTML)"),
    layout.COMPARISON_CSV: ("report", "paper vs. reproduction, number by number"),
    layout.COMPARISON_MD: ("report", "paper vs. reproduction, number by number"),
    layout.CLAIMS: ("report", "the paper's qualitative claims, checked on the reproduction"),
    layout.MISSING_CELLS: ("report", "cells without an evaluation record and the command for each"),
}


def table_indices(folder: Path) -> list[dict[str, Any]]:
    """The folder's provenance indices of its tables (none without a provenance folder), read
    once for the claims and the numbers."""
    from autolora.reporting.provenance import all_indices

    return all_indices(folder) if (folder / layout.PROVENANCE_DIR).is_dir() else []


def load_claims(builder: CrateBuilder, indices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Register the sha256 the provenance indices (the tables' ``indices`` and the results
    index) claim for files of the folder (tables, report, figures, table indices, the resolved
    config); returns the claim on the paper's numbers."""
    folder = builder.folder
    if not (folder / layout.PROVENANCE_DIR).is_dir():
        return None
    for index in indices:
        for output in index.get("outputs") or []:
            inside = builder.crate_path(output["path"])
            if inside:
                builder.claims[inside] = (
                    output["sha256"],
                    f"{folder}/{layout.table_index(index['table'])}",
                )
    paper = None
    results_index = folder / layout.PROVENANCE_DIR / layout.RESULTS_INDEX
    if results_index.is_file():
        index = read_json(results_index)
        for item in [
            *(index.get("tables") or []),
            *(index.get("files") or []),
            *(index.get("inputs") or []),
        ]:
            inside = builder.crate_path(item["path"])
            if inside:
                builder.claims[inside] = (item["sha256"], str(results_index))
            elif item.get("role") == "paper results":
                paper = {**item, "claimed_by": str(results_index)}
    return paper


def describe_aggregate(builder: CrateBuilder, indices: list[dict[str, Any]]) -> DescribedAggregate:
    """The files the aggregation wrote into the folder and the numbers of its tables
    (``indices``)."""
    aggregate = DescribedAggregate()
    folder = builder.folder
    for index in indices:
        if index.get("created") and (aggregate.end is None or index["created"] > aggregate.end):
            aggregate.end = index["created"]

    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        path = file.relative_to(folder).as_posix()
        top = path.split("/", 1)[0]
        if (
            path
            in (layout.CRATE_METADATA, layout.RESOLVED_CONFIG, RESOLVE_CONFIG_LOG, layout.CRATE_LOG)
            or top in (layout.CRATE_SOURCE_DIR, layout.RUNS_DIR)
            or is_hidden(Path(path))
            or path.endswith(LARGE_SUFFIXES + SKIPPED_SUFFIXES)
        ):
            continue
        entity = builder.payload_file(path)
        parameter, description = _aggregate_output(path)
        builder.graph.add({"@id": entity, "description": description})
        if parameter:
            builder.example_of(entity, "aggregate", parameter)
            if parameter in WORKFLOW_PARAMETERS:
                builder.example_of(entity, "", parameter)
        aggregate.results.append(entity)

    for index in indices:
        aggregate.numbers += _describe_numbers(builder, index)
    return aggregate


def _aggregate_output(path: str) -> tuple[str | None, str]:
    if path in TOP_LEVEL:
        return TOP_LEVEL[path]
    if path.startswith(f"{layout.TABLES_DIR}/"):
        return "tables", f"table {Path(path).stem} ({media_type(path)})"
    if path.startswith(f"{layout.FIGURES_DIR}/"):
        return "figures", f"figure {Path(path).stem}"
    if path == f"{layout.PROVENANCE_DIR}/{layout.RESULTS_INDEX}":
        return (
            "provenance_index",
            "results index: every other file of the folder with its sha256; its own sha256 is "
            "the folder's seal (`autolora audit --all --seal`)",
        )
    if path.startswith(f"{layout.PROVENANCE_DIR}/"):
        return (
            "provenance_index",
            f"provenance index of {Path(path).stem}: every number → the "
            "evaluation records of its seeds → checkpoints, run records and inputs with sha256",
        )
    if path.startswith(f"{layout.LOGS_DIR}/"):
        return None, f"log of rule {Path(path).stem}"
    return None, "written by the workflow"


def _describe_numbers(builder: CrateBuilder, index: Mapping[str, Any]) -> list[str]:
    table = index["table"]
    files = [
        f"tables/{table}{suffix}"
        for suffix in (".csv", ".md", ".tex", "_values.csv")
        if f"tables/{table}{suffix}" in builder.graph.entities
    ]
    index_file = layout.table_index(table)
    numbers = []
    for number in index.get("numbers") or []:
        identifier = f"#number/{table}/{number['row']}/{number['column']}"
        evaluations = []
        for seed in number.get("seeds") or []:
            inside = builder.crate_path(seed.get("evaluation") or "")
            if seed.get("status") == "ok" and inside in builder.graph.entities:
                evaluations.append(inside)
        kind = {
            "mean": f"mean over {number.get('n')} of {number.get('expected')} seeds",
            "p_value": f"p-value ({number.get('test')} t-test) over the seeds' values",
            "ratio": f"computed: {number.get('formula')}",
        }.get(number.get("kind"), number.get("kind"))
        builder.graph.add(
            {
                "@id": identifier,
                "@type": "PropertyValue",
                "name": f"{index.get('title') or table}: {number['row']} × {number['column']}",
                "propertyID": number.get("metric") or number["column"],
                "value": number.get("value"),
                "unitText": "%" if number.get("kind") in ("mean", "ratio") else None,
                "description": f"{number.get('display')}: {kind}",
                "wasDerivedFrom": [ref(e) for e in evaluations],
                "subjectOf": [ref(f) for f in files + [index_file] if f in builder.graph.entities],
            }
        )
        for file in files + [index_file]:
            if file in builder.graph.entities and file.endswith((".csv", ".json")):
                builder.graph.link(file, "about", identifier)
        builder.example_of(identifier, "aggregate", "numbers")
        numbers.append(identifier)
    return numbers
