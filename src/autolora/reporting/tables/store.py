"""The evaluation records behind the tables, read once per cell (each checked against its seal and
its checkpoint's run record), with the reason a value is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from autolora.autoattack_variants import (
    CONFIG_KEY,
    STANDARD,
)
from autolora.errors import DataError
from autolora.planning import layout
from autolora.records import EvaluationRecord, RunRecord

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
