"""Provenance: a sidecar index per table, one index of the whole results folder, and the audit
that walks and re-verifies them.

The index of a table maps every number (table, row, column) to the evaluation records of its seeds
(path + sha256), and through them to the checkpoint, the run record, the run's history and every
input the run record names (dataset metadata, split manifest, weights and their record), each with
its sha256. Hashes claimed by the records themselves are copied, not recomputed, at aggregation
time; only the evaluation records (which nothing else hashes) are hashed then.

The results index (``provenance/results.json``) lists every other file of the results folder with
its sha256: each table index, the rendered tables, the paper comparison, the claims, the figures,
the report, the missing-cells list, and the inputs of the aggregation (configuration, the paper's
numbers). Its own sha256 is the folder's **seal**: one digest that, with a passing audit, stands for
every byte behind every number, and that a user can publish or commit.

``audit`` re-hashes every file on the chain down to each prepared data file (through
``dataset.json``), the backbone (through its record) and the archive / ``.ckpt`` checksums (present
files are re-hashed; the recorded checksums are compared with the published or pinned ones), checks
that the records agree with one another and recomputes the number from the per-seed values. What it
cannot detect: a consistent rewrite (an evaluation record edited, re-sealed and re-aggregated passes
by construction); ``autolora audit --recompute`` (``autolora.recompute``) re-evaluates the
checkpoints instead, and a published seal makes any later rewrite visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.files import md5_file, read_json, sha256_file, write_json
from autolora.planning import layout
from autolora.planning.vocabulary import PROPOSED, PUBLISHED_ARCHS
from autolora.records import EvaluationRecord, RunRecord
from autolora.reporting.stats import TEST_DESCRIPTIONS, summarize, two_sample_ttest
from autolora.reporting.tables import parameter_ratio_pct

INDEX_FORMAT = 1
INDEX_KIND = "provenance_index"
RESULTS_KIND = "results_index"
SEAL_PREFIX = "sha256:"
VALUE_TOLERANCE = 1e-9
WEIGHTS_LOCK = "config/weights.lock"


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


def _json_float(value: float) -> float | None:
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
    verified: int = 0  # hash checks that passed (a file checked twice counts twice)
    _hashes: dict[str, str] = field(default_factory=dict)
    _cells_done: set[str] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)  # datasets and backbones audited above

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rehashed(self) -> int:
        """Distinct files whose bytes were hashed."""
        return len(self._hashes)

    def load_json(self, path: str, indent: int = 2) -> Any:
        """The JSON of a file on the chain, or None (and a problem) when it is unreadable."""
        try:
            return read_json(self.root / path)
        except (OSError, DataError) as error:
            self.problem(f"{path}: unreadable ({error})", indent)
            return None

    def first_time(self, key: str) -> bool:
        if key in self._done:
            return False
        self._done.add(key)
        return True

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

    def check_archive(self, role: str, path: str, algorithm: str, expected: str, indent: int):
        """Re-hash a downloaded archive or checkpoint when it is still present (it is only needed
        to prepare or convert); say so when it is not."""
        file = self.root / path
        if not file.is_file():
            self.say(
                f"{role} {path}: not present (only needed to prepare or convert); recorded "
                f"{algorithm} {_short(expected)}",
                indent,
            )
            return
        if algorithm == "sha256":
            self.check_file(role, path, expected, indent)
            return
        key = f"md5:{file.resolve()}"
        if key not in self._hashes:
            self._hashes[key] = md5_file(file)
        if self._hashes[key] != expected:
            self.problem(
                f"{path}: md5 mismatch ({role}; recorded {_short(expected)}, found "
                f"{_short(self._hashes[key])}) — the archive is not the published one",
                indent,
            )
            return
        self.verified += 1
        self.say(f"{role} {path}: md5 {_short(expected)} verified", indent)


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
    return ", ".join(sorted({s["group"] for s in number["seeds"] if s["group"] != PROPOSED}))


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
    record = audit.load_json(evaluation["path"])
    if record is None:
        return
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
        if not audit.check_file(item["role"], item["path"], item["sha256"], 2):
            continue
        if item["role"] == "dataset":
            _audit_dataset(audit, item["path"], 3)
        elif item["role"] == "weights":
            _audit_backbone(audit, item["path"], item["sha256"], 3)
    run_path = (chain.get("run_record") or {}).get("path")
    if run_path and (audit.root / run_path).is_file():
        run = audit.load_json(run_path)
        if run is not None:
            _describe_run(audit, run, run_path, checkpoint)


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


def _audit_dataset(audit: Audit, metadata_path: str, indent: int) -> None:
    """Every file a prepared dataset's ``dataset.json`` lists (checked against its sha256 there)
    and the archives it was prepared from."""
    if not audit.first_time(f"dataset:{metadata_path}"):
        audit.say("its data files: verified above", indent)
        return
    metadata = audit.load_json(metadata_path, indent)
    if metadata is None:
        return
    folder = Path(metadata_path).parent
    files = metadata.get("files") or {}
    if not files:
        audit.problem(f"{metadata_path}: lists no data files to verify; re-prepare the dataset")
    for name, digest in sorted(files.items()):
        audit.check_file("prepared data file", (folder / name).as_posix(), digest, indent)
    _audit_dataset_sources(audit, metadata, folder, indent)


def _audit_dataset_sources(audit: Audit, metadata: dict, folder: Path, indent: int) -> None:
    from autolora.data.sources import CATALOGUE

    name = metadata.get("name")
    published = {a.name: a.checksum for a in CATALOGUE[name].files} if name in CATALOGUE else {}
    downloads = layout.downloads_beside(folder, str(name))
    for source in metadata.get("sources") or []:
        if "file" not in source:  # synthetic data: the generator and its seed
            audit.say(f"generated, not downloaded: {_words(source)}", indent)
            continue
        algorithm = "md5" if "md5" in source else "sha256"
        recorded = source.get(algorithm)
        checksum = published.get(source["file"])
        if checksum is not None and (checksum.algorithm, checksum.hexdigest) != (
            algorithm,
            recorded,
        ):
            audit.problem(
                f"dataset {name}: archive {source['file']} recorded with {algorithm} "
                f"{_short(recorded)}, but its published {checksum.algorithm} is "
                f"{_short(checksum.hexdigest)}",
                indent,
            )
            continue
        origin = "published" if checksum is not None else "no checksum published; recorded"
        audit.say(f"archive {source['file']}: {algorithm} {_short(recorded)} ({origin})", indent)
        audit.check_archive(
            "archive", (downloads / source["file"]).as_posix(), algorithm, recorded, indent + 1
        )


def _audit_backbone(audit: Audit, weights_path: str, trained_sha256: str, indent: int) -> None:
    """The record beside a backbone, and through it the published or pinned sha256 of the
    checkpoint it was converted from (re-hashed when the ``.ckpt`` is still present)."""
    if not audit.first_time(f"weights:{weights_path}"):
        audit.say("its record and source: verified above", indent)
        return
    from autolora.weights import CATALOGUE, pinned_sha256

    record_file = layout.backbone_record(weights_path).as_posix()
    if not (audit.root / record_file).is_file():
        audit.problem(f"{record_file}: missing (the record of backbone {weights_path})", indent)
        return
    record = audit.load_json(record_file, indent)
    if record is None:
        return
    if record.get("sha256") != trained_sha256:
        audit.problem(
            f"{record_file}: records sha256 {_short(record.get('sha256'))} for the backbone, the "
            f"run trained on {_short(trained_sha256)}",
            indent,
        )
        return
    audit.say(f"backbone record {record_file}: agrees ({_short(trained_sha256)})", indent)
    arch, source = record.get("arch"), record.get("source") or {}
    entry = (
        CATALOGUE.get((arch, float(record.get("eps_pt", -1)))) if arch in PUBLISHED_ARCHS else None
    )
    if entry is None:
        audit.say(f"pre-trained here, not downloaded: {_words(source)}", indent)
        return
    try:
        expected, origin = pinned_sha256(entry, audit.root / WEIGHTS_LOCK)
    except ConfigError as error:
        audit.problem(str(error), indent)
        return
    if expected is None or source.get("sha256") != expected:
        pinned = "neither published nor pinned" if expected is None else _short(expected)
        audit.problem(
            f"{record_file}: converted from {entry.file} with sha256 "
            f"{_short(source.get('sha256'))}; expected {pinned} ({origin})",
            indent,
        )
        return
    audit.say(f"converted from {entry.file}: sha256 {_short(expected)} ({origin})", indent)
    if source.get("file"):
        downloads = layout.download_of_backbone(weights_path, source["file"])
        audit.check_archive(
            "checkpoint download", downloads.as_posix(), "sha256", expected, indent + 1
        )


def _words(source: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(source.items())) or "no details recorded"


def _autoattack_words(record: dict) -> str:
    version = (record.get("autoattack") or {}).get("version")
    return f"AutoAttack {version}" if version else "no AutoAttack"


def _machine(record: dict) -> str:
    slurm = record.get("slurm")
    where = (
        f"SLURM job {slurm.get('job_id')} on node {slurm.get('node')}" if slurm else "outside SLURM"
    )
    threads = (record.get("threads") or {}).get("intra_op")
    torch_threads = f", {threads} torch thread(s)" if threads else ""
    return f"host {record.get('host')}, device {record.get('device')}{torch_threads}, {where}"


def _check_seed_value(audit: Audit, chain: dict, number: dict, seed: dict) -> None:
    path = audit.root / chain["evaluation"]["path"]
    if not path.is_file() or audit._sha256(path) != chain["evaluation"]["sha256"]:
        return  # reported as changed or missing above
    recorded = (read_json(path).get("metrics") or {}).get(number["metric"])
    if not same_value(recorded, seed["value"]):
        audit.problem(
            f"{chain['evaluation']['path']}: {number['metric']} is {recorded}, the index "
            f"says {seed['value']}",
            2,
        )


def number_value(number: dict, seeds: list[dict]) -> float | None:
    """A mean or p-value number computed from per-seed values (``seeds``: as in the index)."""
    values = [s["value"] for s in seeds if s["status"] == "ok" and s["value"] is not None]
    if number["kind"] == "mean":
        return _json_float(summarize(values).mean) if values else None
    ok = [s for s in seeds if s["status"] == "ok" and s["value"] is not None]
    a = [s["value"] for s in ok if s["group"] == PROPOSED]
    b = [s["value"] for s in ok if s["group"] != PROPOSED]
    if len(a) < 2 or len(b) < 2:
        return None
    return _json_float(two_sample_ttest(a, b, welch=number["test"] == "welch").pvalue)


def _check_value(audit: Audit, index: dict, number: dict) -> None:
    recomputed = number_value(number, number["seeds"])
    if same_value(recomputed, number["value"]):
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
    if not same_value(recomputed, number["value"]):
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


def same_value(a: float | None, b: float | None) -> bool:
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
    """Every file of the results folder (through its results index), every number of every
    indexed table and the chain behind each."""
    audit = Audit(Path(root), count_parameters)
    indices = all_indices(index_dir)
    if not indices:
        raise ConfigError(
            f"no provenance index in {resolve_index_dir(index_dir)}: run `autolora aggregate` first"
        )
    _audit_results_index(audit, resolve_index_dir(index_dir))
    for index in indices:
        audit.say(f"== {index['table']}: {index['title']} ({len(index['numbers'])} numbers)")
        _check_outputs(audit, index)
        for number in index["numbers"]:
            audit_number(audit, index, number)
    return audit


def _audit_results_index(audit: Audit, index_dir: Path) -> None:
    path = index_dir / layout.RESULTS_INDEX
    shown = relative_to_root(path.resolve(), audit.root)
    if not path.is_file():
        audit.problem(
            f"{shown}: missing, so the derived files (comparison, claims, report, figures) "
            "cannot be checked; rerun `autolora aggregate`"
        )
        return
    index = read_json(path)
    audit.say(f"== results folder: {shown} (seal {SEAL_PREFIX}{sha256_file(path)})")
    listed = set()
    for group in ("tables", "files", "inputs"):
        for item in index.get(group) or []:
            audit.check_file(item["role"], item["path"], item["sha256"], 1)
            listed.add((audit.root / item["path"]).resolve())
    for table_index in sorted(index_dir.glob("*.json")):
        if table_index.name != layout.RESULTS_INDEX and table_index.resolve() not in listed:
            audit.problem(
                f"{relative_to_root(table_index.resolve(), audit.root)}: a table "
                f"index not listed in {shown}; rerun `autolora aggregate`",
                1,
            )


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
