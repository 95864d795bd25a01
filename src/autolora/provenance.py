"""Provenance: a sidecar index per table and the audit that walks and re-verifies it.

The index of a table maps every number (table, row, column) to the evaluation records of its seeds
(path + sha256), and through them to the checkpoint, the run record and every input the run record
names (split manifest, weights, ...), each with its sha256. Hashes claimed by the records themselves
are copied, not recomputed, at aggregation time; only the evaluation records (which nothing else
hashes) are hashed then. ``audit`` re-hashes every file on the chain, checks that the records agree
with one another and recomputes the number from the per-seed values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.io import read_json, sha256_file, write_json
from autolora.stats import TEST_DESCRIPTIONS, summarize, two_sample_ttest
from autolora.tables import parameter_ratio_pct

INDEX_FORMAT = 1
INDEX_KIND = "provenance_index"
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
    record = read_json(file)
    checkpoint = dict(record.get("checkpoint") or {})
    run_ref = dict(record.get("run_record") or {})
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
    files += [_claimed(item, evaluation_path) for item in record.get("inputs") or []]
    run_path = run_ref.get("path")
    if run_path and (root / run_path).is_file():
        run = read_json(root / run_path)
        files += [_claimed(item, run_path) for item in run.get("inputs") or []]
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
    """The index entry of one ``autolora.tables.Number``."""
    return {
        "row": number.row,
        "column": number.column,
        "kind": number.kind,
        "metric": number.metric,
        "value": _json_float(number.value),
        "std": _json_float(number.std),
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
    """The provenance index of an ``autolora.tables.Table``; ``outputs``: its rendered files."""
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
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------------------------
# Reading the index


def resolve_index_dir(index: str | Path) -> Path:
    """Accept the aggregate output folder or its ``provenance/`` subfolder."""
    index = Path(index)
    if (index / "provenance").is_dir():
        index = index / "provenance"
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
    directory = resolve_index_dir(index_dir)
    return [load_index(directory, p.stem) for p in sorted(directory.glob("*.json"))]


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


# --------------------------------------------------------------------------------------------
# Auditing


@dataclass
class Audit:
    """Accumulates the plain-language chain and every problem found; hashes each file once."""

    root: Path
    # (arch, rank, lora_blocks) -> autolora.models.parameter_counts(...); lets the audit recount
    # Table 3's parameters on the built model (this module does not import torch)
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    verified: int = 0
    _hashes: dict[str, str] = field(default_factory=dict)
    _cells_done: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def say(self, text: str, indent: int = 0) -> None:
        self.lines.append("  " * indent + text)

    def problem(self, text: str, indent: int = 0) -> None:
        self.problems.append(text)
        self.say("PROBLEM: " + text, indent)

    def check_file(self, role: str, path: str | None, expected: str | None, indent: int) -> bool:
        """Re-hash ``path`` and compare with ``expected``; True when it matches."""
        if not path:
            self.problem(f"{role}: no path recorded", indent)
            return False
        file = self.root / path
        if file.is_dir():
            self.say(f"{role} {path}: a directory, exists (not hashed)", indent)
            return True
        if not file.is_file():
            self.problem(f"{path}: missing ({role}; recorded sha256 {_short(expected)})", indent)
            return False
        if expected is None:
            self.say(f"{role} {path}: exists, no sha256 recorded", indent)
            return True
        actual = self._sha256(file)
        if actual != expected:
            self.problem(
                f"{path}: sha256 mismatch ({role}; recorded {_short(expected)}, "
                f"found {_short(actual)}) — the file changed after it was recorded",
                indent,
            )
            return False
        self.verified += 1
        self.say(f"{role} {path}: sha256 {_short(actual)} verified", indent)
        return True

    def _sha256(self, file: Path) -> str:
        key = str(file.resolve())
        if key not in self._hashes:
            self._hashes[key] = sha256_file(file)
        return self._hashes[key]


def audit_number(audit: Audit, index: dict, number: dict) -> None:
    """Describe one number's chain and re-verify it, adding to ``audit``."""
    table, row, column = index["table"], number["row"], number["column"]
    audit.say(f"{table} · row {row} · column {column} = {number['display']}")
    if number["kind"] == "ratio":
        audit.say(f"computed, not measured: {number['formula']}", 1)
        _check_ratio(audit, index, number)
        return
    protocol = index.get("protocol") or "unknown"
    what = (
        "mean over seeds (std with ddof = 1)"
        if number["kind"] == "mean"
        else f"p-value, {TEST_DESCRIPTIONS.get(number['test'], number['test'])}, AutoLoRa vs {_groups(number)}"
    )
    audit.say(
        f"{number['metric']} (%), {what}; {number['n']} of {number['expected']} configured "
        f"values present; protocol {protocol}; checkpoint {index.get('checkpoint')}",
        1,
    )
    for seed in number["seeds"]:
        _audit_seed(audit, index, number, seed)
    _check_value(audit, index, number)


def _groups(number: dict) -> str:
    return ", ".join(sorted({s["group"] for s in number["seeds"] if s["group"] != "autolora"}))


def _audit_seed(audit: Audit, index: dict, number: dict, seed: dict) -> None:
    label = f"{seed['group']} " if seed["group"] else ""
    chain = index["cells"].get(seed["cell_id"], {})
    if seed["status"] == "missing" or chain.get("status") == "missing":
        exists = (audit.root / seed["evaluation"]).is_file()
        later = " (it exists now: rerun `autolora aggregate`)" if exists else ""
        audit.say(
            f"{label}seed {seed['seed']}: no evaluation record at aggregation "
            f"({seed['evaluation']}){later}",
            1,
        )
        return
    value = "not computed" if seed["value"] is None else f"{seed['value']:.6g}"
    audit.say(
        f"{label}seed {seed['seed']}: {number['metric']} = {value} — cell {seed['cell_id']}", 1
    )
    if seed["cell_id"] in audit._cells_done:
        audit.say("chain verified above", 2)
    else:
        audit._cells_done.add(seed["cell_id"])
        _audit_chain(audit, chain)
    _check_seed_value(audit, chain, number, seed)


def _audit_chain(audit: Audit, chain: dict) -> None:
    evaluation = chain["evaluation"]
    if not audit.check_file("evaluation record", evaluation["path"], evaluation["sha256"], 2):
        return
    record = read_json(audit.root / evaluation["path"])
    checkpoint = chain.get("checkpoint") or {}
    audit.say(
        f"checkpoint {checkpoint.get('name')!r}: epoch {checkpoint.get('epoch')}, selected by "
        f"{checkpoint.get('selected_by')}",
        2,
    )
    audit.say(
        f"evaluated {record.get('n')} test images on {_machine(record)}; "
        f"{_autoattack_words(record)}; finished {record.get('finished')}",
        2,
    )
    for item in chain["files"]:
        audit.check_file(item["role"], item["path"], item["sha256"], 2)
    run_path = (chain.get("run_record") or {}).get("path")
    if run_path and (audit.root / run_path).is_file():
        _describe_run(audit, read_json(audit.root / run_path), run_path, checkpoint)


def _describe_run(audit: Audit, run: dict, run_path: str, checkpoint: dict) -> None:
    protocol = run.get("protocol") or {}
    choices = ", ".join(f"{k}={v}" for k, v in sorted((protocol.get("choices") or {}).items()))
    code = run.get("code") or {}
    dirty = " with uncommitted changes" if code.get("dirty") else ""
    attempts = len(run.get("attempts") or []) or 1
    audit.say(f"trained under protocol {protocol.get('name')} ({choices})", 2)
    audit.say(
        f"code {code.get('commit')}{dirty}, autolora {code.get('version')}; "
        f"{run.get('epochs_run')} epochs, stopped: {run.get('stop_reason')}; "
        f"{attempts} attempt(s); finished {run.get('finished')}",
        2,
    )
    audit.say(f"trained on {_machine(run)}", 2)
    recorded = (run.get("checkpoints") or {}).get(checkpoint.get("name"), {})
    if recorded.get("sha256") != checkpoint.get("sha256"):
        audit.problem(
            f"{run_path}: its checkpoint {checkpoint.get('name')!r} has sha256 "
            f"{_short(recorded.get('sha256'))}, the evaluation record names "
            f"{_short(checkpoint.get('sha256'))}",
            2,
        )


def _autoattack_words(record: dict) -> str:
    version = (record.get("autoattack") or {}).get("version")
    return f"AutoAttack {version}" if version else "no AutoAttack"


def _machine(record: dict) -> str:
    slurm = record.get("slurm")
    where = (
        f"SLURM job {slurm.get('job_id')} on node {slurm.get('node')}" if slurm else "outside SLURM"
    )
    return f"host {record.get('host')}, device {record.get('device')}, {where}"


def _check_seed_value(audit: Audit, chain: dict, number: dict, seed: dict) -> None:
    path = audit.root / chain["evaluation"]["path"]
    if not path.is_file():
        return
    recorded = (read_json(path).get("metrics") or {}).get(number["metric"])
    if not _same(recorded, seed["value"]):
        audit.problem(
            f"{chain['evaluation']['path']}: {number['metric']} is {recorded}, the index "
            f"says {seed['value']}",
            2,
        )


def _check_value(audit: Audit, index: dict, number: dict) -> None:
    values = [s["value"] for s in number["seeds"] if s["status"] == "ok"]
    if number["kind"] == "mean":
        recomputed = summarize(values).mean if values else None
    else:
        a = [
            s["value"] for s in number["seeds"] if s["status"] == "ok" and s["group"] == "autolora"
        ]
        b = [
            s["value"] for s in number["seeds"] if s["status"] == "ok" and s["group"] != "autolora"
        ]
        enough = len(a) >= 2 and len(b) >= 2
        recomputed = (
            two_sample_ttest(a, b, welch=number["test"] == "welch").pvalue if enough else None
        )
    if _same(_json_float(recomputed), number["value"]):
        audit.say("recomputed from the per-seed values: matches", 1)
    else:
        audit.problem(
            f"{index['table']}: {number['row']} / {number['column']} is {number['value']}, "
            f"recomputed {recomputed}",
            1,
        )


def _check_ratio(audit: Audit, index: dict, number: dict) -> None:
    counts = number.get("parameters")
    if number["value"] is None or not counts:
        return
    recomputed = parameter_ratio_pct(counts[counts["counted"]], counts["feature_extractor"])
    if not _same(recomputed, number["value"]):
        audit.problem(f"{index['table']}: ratio {number['column']} does not match its counts", 1)
        return
    if audit.count_parameters is None:
        audit.say("recomputed from the recorded counts: matches", 1)
        return
    recount = audit.count_parameters(counts["arch"], counts["lora_rank"], counts["lora_blocks"])
    keys = ("feature_extractor", "lora_created", "lora_used", "update_blocks")
    differing = [k for k in keys if recount[k] != counts[k]]
    if differing:
        audit.problem(
            f"{index['table']}: ratio {number['column']}: the built model has "
            + ", ".join(f"{k} {recount[k]} (recorded {counts[k]})" for k in differing),
            1,
        )
    else:
        audit.say("recomputed: matches (parameters recounted on the built model)", 1)


def _check_outputs(audit: Audit, index: dict) -> None:
    for item in index.get("outputs") or []:
        audit.check_file("table file", item["path"], item["sha256"], 1)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(float(a) - float(b)) <= VALUE_TOLERANCE * max(1.0, abs(float(b)))


def _short(digest: str | None) -> str:
    return "none" if not digest else digest[:12]


def audit_one(
    index_dir: str | Path,
    table: str,
    row: str,
    column: str,
    root: str | Path = ".",
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None,
) -> Audit:
    index = load_index(index_dir, table)
    audit = Audit(Path(root), count_parameters)
    audit_number(audit, index, find_number(index, row, column))
    return audit


def audit_all(
    index_dir: str | Path,
    root: str | Path = ".",
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None,
) -> Audit:
    """Every number of every indexed table, and the table files themselves."""
    audit = Audit(Path(root), count_parameters)
    indices = all_indices(index_dir)
    if not indices:
        raise ConfigError(
            f"no provenance index in {resolve_index_dir(index_dir)}: run `autolora aggregate` first"
        )
    for index in indices:
        audit.say(f"== {index['table']}: {index['title']} ({len(index['numbers'])} numbers)")
        _check_outputs(audit, index)
        for number in index["numbers"]:
            audit_number(audit, index, number)
    return audit


def raise_if_failed(audit: Audit) -> None:
    """ChecksumError naming the files at fault (the CLI turns it into exit status 2)."""
    if audit.ok:
        return
    shown = "; ".join(audit.problems[:5])
    more = f" (+{len(audit.problems) - 5} more)" if len(audit.problems) > 5 else ""
    raise ChecksumError(
        f"audit failed, {len(audit.problems)} problem(s): {shown}{more}. "
        "Rerun the jobs that produce these files (snakemake) and `autolora aggregate`."
    )
