"""The records behind every result, typed: the run record (``run.json``), the evaluation record
(``eval-<checkpoint>.json``) and a backbone's record (``<backbone>.json``).

Each has one writer (``to_json`` / ``write``: the same keys and the same canonical JSON as always)
and one reader (``read``: damaged JSON, another kind, a broken seal or a missing key is a one-line
DataError naming the file and the fix). The file names are ``autolora.planning.layout``'s; the
fields are documented in docs/internals.md ("Records").

Seal: the run and evaluation records carry ``record_sha256``, the sha256 of their own canonical
JSON without that key (:func:`seal`). Their readers check it, so a changed byte or a hand edit of a
record is refused by name before any number is taken from it. A seal detects damage and edits that
do not recompute it; it is not a signature (see the README on what the audit cannot detect).

The audit and the crate read records as plain JSON on purpose: they report every problem they
find instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from autolora.autoattack_variants import record_variant
from autolora.errors import DataError
from autolora.files import (
    as_json_data,
    canonical_json,
    parse_json,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
)

SEAL_KEY = "record_sha256"
KIND_KEY = "kind"


# ---- paths and files as records store them -------------------------------------------------------


def record_path(path: str | os.PathLike) -> str:
    """``path`` as records store it: relative to the working directory when inside it (the
    workflow runs from the repository root), absolute otherwise."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)


def file_entry(role: str, path: str | os.PathLike) -> dict[str, str]:
    """``{role, path, sha256}`` of an existing file."""
    return {"role": role, "path": record_path(path), "sha256": sha256_file(path)}


# ---- the seal ------------------------------------------------------------------------------------


def seal_digest(record: Mapping[str, Any]) -> str:
    """sha256 of the record's canonical JSON without its seal."""
    content = {key: value for key, value in record.items() if key != SEAL_KEY}
    return sha256_bytes(canonical_json(content).encode())


def seal(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with its ``record_sha256`` (computed on the JSON form, as written)."""
    content = as_json_data({k: v for k, v in record.items() if k != SEAL_KEY})
    return {**content, SEAL_KEY: seal_digest(content)}


def read_sealed(path: str | os.PathLike, kind: str, fix: str) -> dict[str, Any]:
    """A sealed record of ``kind`` from ``path``: damaged JSON, another kind, a missing or broken
    seal are each a DataError naming the file and ``fix``."""
    record = read_json(path, fix)
    if not isinstance(record, dict) or record.get(KIND_KEY) != kind:
        found = record.get(KIND_KEY) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{path} is not a {kind} record (kind {found!r}); {fix}")
    recorded = record.get(SEAL_KEY)
    if recorded is None:
        raise DataError(f"{path} has no {SEAL_KEY} (it was not written by autolora); {fix}")
    actual = seal_digest(record)
    if actual != recorded:
        raise DataError(
            f"{path}: its content hashes to {actual}, not to its {SEAL_KEY} {recorded}: the record "
            f"was changed after it was written; {fix}"
        )
    return record


# ---- the typed records ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Record:
    """A JSON record: ``kind`` plus one key per field. Keys a reader finds beyond the fields are
    kept in ``extra`` and written back unchanged, so reading and rewriting a record loses
    nothing."""

    KIND: ClassVar[str]
    WHAT: ClassVar[str]  # how messages name it, e.g. "run record"
    REQUIRED: ClassVar[tuple[str, ...]]  # the keys every reader relies on
    SEALED: ClassVar[bool] = True

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _keys(cls) -> list[str]:
        return [item.name for item in dataclasses.fields(cls) if item.name != "extra"]

    def to_json(self) -> dict[str, Any]:
        """The record as written: ``kind``, every field, ``extra`` and, when sealed, the seal."""
        content = {KIND_KEY: self.KIND, **{key: getattr(self, key) for key in self._keys()}}
        content.update(self.extra)
        return seal(content) if self.SEALED else content

    def write(self, path: str | os.PathLike) -> dict[str, Any]:
        """Write the record atomically (key-sorted JSON); returns what was written."""
        data = self.to_json()
        write_json(path, data)
        return data

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike, fix: str):
        """The record in ``data`` (the parsed contents of ``path``); another kind or a missing
        key is a DataError naming ``path`` and ``fix``."""
        if not isinstance(data, dict) or data.get(KIND_KEY) != cls.KIND:
            raise DataError(f"{path} is not a {cls.WHAT} (kind {cls.KIND!r}); {fix}")
        missing = [key for key in cls.REQUIRED if key not in data]
        if missing:
            raise DataError(f"{path} lacks {missing[0]!r}, which every {cls.WHAT} has; {fix}")
        keys = cls._keys()
        extra = {k: v for k, v in data.items() if k not in keys and k not in (KIND_KEY, SEAL_KEY)}
        return cls(**{key: data.get(key) for key in keys}, extra=extra)

    @classmethod
    def read(cls, path: str | os.PathLike, fix: str):
        """The record in ``path``, its seal checked (:func:`read_sealed`)."""
        return cls.from_json(read_sealed(path, cls.KIND, fix), path, fix)


@dataclass(frozen=True, kw_only=True)
class ProducedRecord(Record):
    """A record of a job's result: where and with what it was computed
    (``autolora.environment.environment``), when, and by which command."""

    code: dict[str, Any] | None = None  # {commit, dirty, version}
    packages: dict[str, Any] | None = None
    python: str | None = None
    host: str | None = None
    device: str | None = None
    threads: dict[str, Any] | None = None  # {intra_op, inter_op, OMP_NUM_THREADS}
    slurm: dict[str, Any] | None = None  # the SLURM job, or None outside SLURM
    started: str | None = None
    finished: str | None = None
    command: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunRecord(ProducedRecord):
    """``run.json``: one cell's finished training run (written by ``autolora train`` as its last
    output, the commit point of the run)."""

    KIND: ClassVar[str] = "training_run"
    WHAT: ClassVar[str] = "run record"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "cell",
        "cell_id",
        "config",
        "protocol",
        "inputs",
        "outputs",
        "checkpoints",
        "attempts",
    )

    cell: dict[str, Any]  # the identity: protocol, arch, eps_pt, dataset, method, variant, seed
    cell_id: str
    spec: dict[str, Any] | None = None  # the spec the train job got
    config: dict[str, Any] | None = None  # the resolved cell configuration
    protocol: dict[str, Any] | None = None  # name, every resolved choice, the defaults
    lora: dict[str, Any] | None = None  # where the LoRa update acted (AutoLoRa only)
    inputs: list[dict[str, Any]] | None = None  # {role, path, sha256}
    verified: dict[str, Any] | None = None  # {files, seconds}
    outputs: list[dict[str, Any]] | None = None  # {role, path, sha256}: checkpoints, history
    checkpoints: dict[str, dict[str, Any]] | None = None  # name -> {epoch, ..., path, sha256}
    attempts: list[dict[str, Any]] | None = None
    epochs_run: int | None = None
    stop_reason: str | None = None
    superseded: list[dict[str, Any]] | None = None  # kept work this run moved aside: path, reason
    seconds_this_attempt: float | None = None

    def output_names(self) -> list[str]:
        """The file names of the outputs (checkpoints, history), in the record's order."""
        return [Path(entry["path"]).name for entry in self.outputs or []]

    def output(self, role: str) -> dict[str, Any] | None:
        """The output entry of ``role`` (``history``, ``best_val``, ...), or None."""
        return next((e for e in self.outputs or [] if e.get("role") == role), None)

    def inputs_of(self, role: str) -> list[dict[str, Any]]:
        return [entry for entry in self.inputs or [] if entry.get("role") == role]


@dataclass(frozen=True, kw_only=True)
class EvaluationRecord(ProducedRecord):
    """``eval-<checkpoint>.json``: SA, PGD-10 and AutoAttack of one checkpoint of a cell."""

    KIND: ClassVar[str] = "evaluation"
    WHAT: ClassVar[str] = "evaluation record"
    REQUIRED: ClassVar[tuple[str, ...]] = ("cell_id", "checkpoint", "metrics")
    METRICS: ClassVar[tuple[str, ...]] = ("SA", "PGD10", "AA")  # percent; AA null when skipped

    cell: dict[str, Any] | None
    cell_id: str
    checkpoint: dict[str, Any]  # name, requested, path, sha256, epoch, selected_by
    metrics: dict[str, float | None]
    n: int | None = None  # test images evaluated
    subset: dict[str, Any] | None = None  # the class-stratified subset, or None: all
    attack: dict[str, Any] | None = None  # eps, step, pgd_steps
    autoattack: dict[str, Any] | None = None  # version, attacks, progression, ... or None
    run_record: dict[str, Any] | None = None  # {path, sha256} of the cell's run.json
    inputs: list[dict[str, Any]] | None = None  # {role, path, sha256}
    verified: dict[str, Any] | None = None  # {files, seconds}
    seconds: float | None = None

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike, fix: str) -> EvaluationRecord:
        record = super().from_json(data, path, fix)
        metrics = record.metrics
        if not isinstance(metrics, dict) or any(m not in metrics for m in cls.METRICS):
            raise DataError(f"{path}: record lacks metrics {list(cls.METRICS)}; {fix}")
        return record

    @property
    def checkpoint_name(self) -> str | None:
        return (self.checkpoint or {}).get("name")

    @property
    def autoattack_version(self) -> str | None:
        """The AutoAttack variant its AA was computed with; None when it has no AA."""
        return record_variant({"metrics": self.metrics, "autoattack": self.autoattack})

    def inputs_of(self, role: str) -> list[dict[str, Any]]:
        return [entry for entry in self.inputs or [] if entry.get("role") == role]


@dataclass(frozen=True, kw_only=True)
class BackboneRecord(Record):
    """``<backbone>.json`` beside a converted or pre-trained backbone: what it is and where it
    comes from (``autolora weights convert``, ``autolora pretrain``). Not sealed: every consumer
    checks the backbone against its ``sha256``. ``extra`` holds what the producer adds (the
    pre-training task and its accuracies)."""

    KIND: ClassVar[str] = "backbone_weights"
    WHAT: ClassVar[str] = "backbone weights record"
    REQUIRED: ClassVar[tuple[str, ...]] = ("arch", "eps_pt", "sha256")
    SEALED: ClassVar[bool] = False

    arch: str
    eps_pt: float  # pre-training ε, /255, stored as a float (4 and 4.0 give the same bytes)
    source: dict[str, Any] | None = None  # the converted file and its sha256, or the task
    file: str | None = None
    sha256: str | None = None
    num_tensors: int | None = None

    @classmethod
    def parse(cls, data: bytes, path: str | os.PathLike, fix: str) -> BackboneRecord:
        """The record in the bytes ``data`` of ``path`` (read once by the caller, who hashes
        them)."""
        return cls.from_json(parse_json(data, path, fix), path, fix)
