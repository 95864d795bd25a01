"""The provenance indices: one per table (every number -> its seeds' evaluation records -> the
run record, checkpoint, history and every input, each with its sha256) and the results index of
the whole folder, whose sha256 is the folder's seal; written by ``autolora aggregate``, read by
the audit, the recomputation and the crate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ConfigError, DataError
from autolora.files import read_json, sha256_file, write_json
from autolora.planning import layout
from autolora.records import EvaluationRecord, RunRecord

INDEX_FORMAT = 1
INDEX_KIND = "provenance_index"
RESULTS_KIND = "results_index"
SEAL_PREFIX = "sha256:"
VALUE_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# Building the index


def relative_to_root(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` when it lies inside it; as given otherwise."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def cell_chain(evaluation_path: str, root: str | Path) -> dict:
    """The chain behind one cell's evaluation record: every file with the sha256 claimed for it."""
    root = Path(root)
    file = root / evaluation_path
    if not file.is_file():
        return {"status": "missing", "evaluation": {"path": evaluation_path, "sha256": None}}
    fix = f"rerun `snakemake {evaluation_path}`"
    record = EvaluationRecord.read(file, fix)
    checkpoint = dict(record.checkpoint or {})
    run_ref = dict(record.run_record or {})
    files = [
        {
            "role": "checkpoint",
            "path": checkpoint.get("path"),
            "sha256": checkpoint.get("sha256"),
            "claimed_by": evaluation_path,
        },
        {
            "role": "run_record",
            "path": run_ref.get("path"),
            "sha256": run_ref.get("sha256"),
            "claimed_by": evaluation_path,
        },
    ]
    files += [_claimed(item, evaluation_path) for item in record.inputs or []]
    run_path = run_ref.get("path")
    if run_path and (root / run_path).is_file():
        run = RunRecord.read(root / run_path, f"rerun `snakemake {run_path}`")
        files += [_claimed(item, run_path) for item in run.inputs or []]
        files += [
            _claimed(item, run_path) for item in run.outputs or [] if item.get("role") == "history"
        ]
    return {
        "status": "ok",
        "evaluation": {"path": evaluation_path, "sha256": sha256_file(file)},
        "checkpoint": checkpoint,
        "run_record": run_ref,
        "files": _unique_files(files),
    }


def _claimed(item: dict, claimed_by: str) -> dict:
    return {
        "role": item.get("role", "input"),
        "path": item.get("path"),
        "sha256": item.get("sha256"),
        "claimed_by": claimed_by,
    }


def _unique_files(files: Iterable[dict]) -> list[dict]:
    seen, unique = set(), []
    for item in files:
        key = (item["path"], item["sha256"])
        if item["path"] and key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def number_entry(number: Any, root: str | Path) -> dict:
    """The index entry of one ``autolora.reporting.tables.Number``."""
    return {
        "row": number.row,
        "column": number.column,
        "kind": number.kind,
        "metric": number.metric,
        "value": json_float(number.value),
        "std": json_float(number.std),
        "n": number.n,
        "expected": number.expected,
        "display": number.display(),
        "test": number.test,
        "formula": number.formula,
        "parameters": number.parameters,
        "seeds": [
            {
                "group": s.group,
                "cell_id": s.cell_id,
                "seed": s.seed,
                "value": s.value,
                "status": s.status,
                "evaluation": relative_to_root(s.evaluation, root),
            }
            for s in number.seeds
        ],
    }


def build_index(
    table: Any, *, root: str | Path, protocol: str | None, outputs: Iterable[str | Path] = ()
) -> dict:
    """The provenance index of an ``autolora.reporting.tables.Table``; ``outputs``: its rendered files."""
    numbers = [number_entry(n, root) for n in table.numbers]
    cells: dict[str, dict] = {}
    for entry in numbers:
        for seed in entry["seeds"]:
            if seed["cell_id"] not in cells:
                cells[seed["cell_id"]] = cell_chain(seed["evaluation"], root)
    return {
        "format": INDEX_FORMAT,
        "kind": INDEX_KIND,
        "table": table.name,
        "title": table.title,
        "arch": table.arch,
        "protocol": protocol,
        "checkpoint": table.checkpoint,
        "results": table.results_root,
        "autolora_version": __version__,
        "outputs": [
            {
                "path": relative_to_root(p, root),
                "sha256": sha256_file(Path(root) / relative_to_root(p, root)),
            }
            for p in outputs
        ],
        "numbers": numbers,
        "cells": cells,
    }


def write_index(index_dir: str | Path, index: dict) -> Path:
    path = Path(index_dir) / f"{index['table']}.json"
    write_json(path, index)
    return path


def build_results_index(
    *,
    root: str | Path,
    protocol: str | None,
    table_indices: Iterable[str | Path],
    files: Mapping[str, Iterable[str | Path]],
    inputs: Mapping[str, str | Path | None],
) -> dict:
    """The index of a whole results folder: every table index, every other file the aggregation
    wrote (``files``: role -> paths) and the files it read besides the records (``inputs``)."""

    def entries(role: str, paths: Iterable[str | Path]) -> list[dict]:
        relative = sorted(relative_to_root(p, root) for p in paths)
        return [
            {"role": role, "path": rel, "sha256": sha256_file(Path(root) / rel)} for rel in relative
        ]

    return {
        "format": INDEX_FORMAT,
        "kind": RESULTS_KIND,
        "protocol": protocol,
        "autolora_version": __version__,
        "tables": entries("table index", table_indices),
        "files": [item for role, paths in files.items() for item in entries(role, paths)],
        "inputs": [item for role, path in inputs.items() if path for item in entries(role, [path])],
    }


def write_results_index(index_dir: str | Path, index: dict) -> str:
    """Write ``provenance/results.json``; returns its sha256 (the folder's seal, without prefix)."""
    return write_json(Path(index_dir) / layout.RESULTS_INDEX, index)


def seal_of(index_dir: str | Path) -> str:
    """The seal of a results folder: the sha256 of its results index (``sha256:<hex>``)."""
    path = resolve_index_dir(index_dir) / layout.RESULTS_INDEX
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run `autolora aggregate` to write it")
    return SEAL_PREFIX + sha256_file(path)


def json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------------------------
# Reading the index


def resolve_index_dir(index: str | Path) -> Path:
    """Accept the aggregate output folder or its ``provenance/`` subfolder."""
    index = Path(index)
    if (index / layout.PROVENANCE_DIR).is_dir():
        index = index / layout.PROVENANCE_DIR
    if not index.is_dir():
        raise ConfigError(
            f"no provenance index at {index}: run `autolora aggregate` first or pass "
            "--index <aggregate output folder>"
        )
    return index


def load_index(index_dir: str | Path, table: str) -> dict:
    path = resolve_index_dir(index_dir) / f"{table}.json"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in path.parent.glob("*.json"))) or "none"
        raise ConfigError(f"no index for table {table!r} ({path} missing); available: {available}")
    index = read_json(path)
    if index.get("kind") != INDEX_KIND or index.get("format") != INDEX_FORMAT:
        raise DataError(
            f"{path}: not a provenance index of format {INDEX_FORMAT}; rerun `autolora aggregate`"
        )
    return index


def all_indices(index_dir: str | Path) -> list[dict]:
    """Every table index of a provenance folder (not the results index)."""
    directory = resolve_index_dir(index_dir)
    paths = sorted(p for p in directory.glob("*.json") if p.name != layout.RESULTS_INDEX)
    return [load_index(directory, p.stem) for p in paths]


def find_number(index: dict, row: str, column: str) -> dict:
    for number in index["numbers"]:
        if number["row"] == row and number["column"] == column:
            return number
    rows = list(dict.fromkeys(n["row"] for n in index["numbers"]))
    columns = list(dict.fromkeys(n["column"] for n in index["numbers"]))
    raise ConfigError(
        f"{index['table']} has no number at row {row!r}, column {column!r}; rows: "
        f"{', '.join(rows)}; columns: {', '.join(columns)}"
    )
