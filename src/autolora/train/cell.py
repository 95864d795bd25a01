"""``train_cell``: one cell trained into its folder, the entry of ``autolora train``.

Attempts take the cell's lock (a second trainer of the cell refuses) and log to their own file in
``logs/``. Every attempt first verifies its inputs (``autolora.train.inputs``); then kept work of
the same run is reused (a completed run's outputs checked or restored from ``completed/``, a resume
state continued) and kept work of another run superseded (``autolora.train.keeping``).

Runtime: ``--runtime`` (device, workers, fast paths, determinism) is merged into the cell's
``runtime`` group. It is not part of the run's identity: a run resumes or is complete under any
runtime, and each attempt records its own. ``runtime.deterministic`` turns on
``torch.use_deterministic_algorithms`` (warn-only: a CUDA op without a deterministic kernel
warns) and turns cuDNN autotuning off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolora import cellfolder, checkpoints, environment
from autolora.planning import layout
from autolora.planning.cells import CellConfig, resolve_cell
from autolora.records import RunRecord
from autolora.train.inputs import RunInputs
from autolora.train.keeping import (
    finished_run_names,
    missing_and_changed_outputs,
    read_run_record,
    refuse_missing_or_changed,
    restore_completed_run,
    supersede_if_stale,
    verify_kept_outputs,
)
from autolora.train.loop import CellTraining
from autolora.train.step import runtime_settings
from autolora.weights import DEFAULT_LOCK


@dataclass
class TrainResult:
    status: str  # "complete" | "already_complete" | "restored"
    record: RunRecord


def train_cell(
    spec: dict[str, Any],
    *,
    data_dir: str | os.PathLike,
    weights: str | os.PathLike,
    out_dir: str | os.PathLike,
    runtime: dict[str, Any] | None = None,
    spec_file: str | os.PathLike | None = None,
    command: str | None = None,
    weights_lock: str | os.PathLike = DEFAULT_LOCK,
) -> TrainResult:
    """Train one cell into ``out_dir``: after verifying the inputs, resume its state or restore
    its completed run when they are of the same identity and inputs, supersede them otherwise.
    ``runtime`` replaces settings of the spec's runtime group. Raises TrainingInterrupted after a
    stop signal, NonFiniteLoss on a NaN/inf loss, CellBusy while another process trains the
    cell."""
    config = resolve_cell(spec).with_runtime(runtime)
    out_dir = Path(out_dir)
    with cellfolder.locked(out_dir), cellfolder.attempt_log(out_dir) as log_path:
        sources = RunInputs(
            config,
            spec,
            data_dir=Path(data_dir),
            weights=Path(weights),
            spec_file=None if spec_file is None else Path(spec_file),
            weights_lock=Path(weights_lock),
        )
        training = CellTraining(
            sources,
            out_dir=out_dir,
            command=command if command is not None else environment.command_line(),
            log_path=log_path,
        )
        training.verify_inputs()
        kept = read_run_record(out_dir, out_dir / layout.COMPLETED_DIR)
        existing = read_run_record(out_dir)
        finished = [record for record in (kept, existing) if record is not None]
        names = finished_run_names(out_dir, finished)
        moved = supersede_if_stale(
            out_dir,
            "the finished run",
            [(record.config, record.inputs) for record in finished],
            config,
            training.inputs,
            names,
        )
        if moved is not None:
            training.superseded.append(moved)
        elif existing is not None or kept is not None:
            return _reuse_finished_run(out_dir, config, existing, kept, log_path)
        state = checkpoints.read_state_info(out_dir / layout.STATE_DIR)
        if state is not None:
            names = [layout.HISTORY, layout.STATE_DIR]
            moved = supersede_if_stale(
                out_dir,
                "the resume state",
                [(state.get("config"), state.get("inputs"))],
                config,
                training.inputs,
                names,
            )
            if moved is not None:
                training.superseded.append(moved)
        with runtime_settings(config):
            record = training.run()
        return TrainResult("complete", record)


def _reuse_finished_run(
    out_dir: Path,
    config: CellConfig,
    existing: RunRecord | None,
    kept: RunRecord | None,
    log_path: Path | None,
) -> TrainResult:
    """The same run finished before: its outputs are in place (checked), or restored from
    ``completed/`` (checked first). Each output in place is hashed once."""
    missing, changed = (
        ([], []) if existing is None else missing_and_changed_outputs(out_dir, existing)
    )
    if existing is not None and not missing:
        # a changed output is refused, never replaced
        refuse_missing_or_changed(out_dir, existing, missing, changed)
        checkpoints.clear_state(out_dir / layout.STATE_DIR)  # left over if killed after completing
        return TrainResult("already_complete", existing)
    if kept is None:
        refuse_missing_or_changed(out_dir, existing, missing, changed)  # names the missing output
    verify_kept_outputs(out_dir, kept)
    if existing is not None:
        refuse_missing_or_changed(out_dir, existing, [], changed)  # the outputs still in place
    return TrainResult("restored", restore_completed_run(out_dir, kept, config, log_path))
