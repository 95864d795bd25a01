"""Kept work across attempts: a finished run's outputs checked against its run record, restored
from ``completed/`` after a retry, and work of another run superseded.

Kept work is reused only for the same run: every attempt first verifies its inputs, then compares
the identity (the resolved configuration less ``runtime`` and the evaluation-only settings) and
the input hashes (``dataset.json``, the split files, the backbone and its record) with those the
kept work recorded (``completed/run.json``; ``state.json``, which stores the inputs verified at
the first attempt). Work of another identity or other inputs is superseded: moved whole to
``superseded/<UTC time>-<reason>/`` (never deleted; the log names what differed) and the cell
trains from scratch; the new ``run.json`` lists what it superseded. So the run record's
``inputs`` are always the files the run trained from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from autolora import cellfolder, checkpoints, environment
from autolora.errors import ChecksumError, DataError
from autolora.files import sha256_file
from autolora.planning import layout
from autolora.planning.cells import CellConfig
from autolora.planning.grid import training_identity
from autolora.records import RunRecord

logger = logging.getLogger(__name__)

# The inputs whose files define a run's result: kept work recorded with other hashes is superseded.
COMPARED_INPUTS = ("dataset", "split_manifest", "split_info", "weights", "weights_record")


def _settings(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"attack.eps": ...}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stale_reasons(
    recorded_config: dict[str, Any] | None,
    recorded_inputs: list[dict[str, Any]] | None,
    config_dict: dict[str, Any],
    inputs: list[dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """What makes kept work (its resolved configuration and recorded inputs) another run than the
    current one: the identity settings and the compared inputs that differ, each in words."""
    old = _settings(training_identity(recorded_config or {}))
    new = _settings(training_identity(config_dict))
    settings = [
        f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]
    recorded = {item.get("role"): item.get("sha256") for item in recorded_inputs or []}
    files = []
    for item in inputs:
        before = recorded.get(item["role"])
        if item["role"] in COMPARED_INPUTS and before != item["sha256"]:
            was = "not recorded" if before is None else before[:12]
            files.append(f"{item['role']} {item['path']}: sha256 {was} -> {item['sha256'][:12]}")
    return settings, files


def supersede_if_stale(
    out_dir: Path,
    what: str,
    kept: list[tuple[dict[str, Any] | None, list[dict[str, Any]] | None]],
    config: CellConfig,
    inputs: list[dict[str, Any]],
    names: list[str],
) -> dict[str, Any] | None:
    """Move kept work (``names`` of the cell folder) to ``superseded/`` when any of the ``kept``
    (configuration, inputs) pairs (of a run record or the resume state) is another run than
    ``config`` on this attempt's verified ``inputs``; returns the entry for the new run record,
    or None when it is the same run."""
    settings: list[str] = []
    files: list[str] = []
    config_dict = config.to_dict()
    for recorded, recorded_inputs in kept:
        changed = stale_reasons(recorded, recorded_inputs, config_dict, inputs)
        settings += [item for item in changed[0] if item not in settings]
        files += [item for item in changed[1] if item not in files]
    if not settings and not files:
        return None
    slug = "-and-".join(
        kind for kind, changed in (("identity", settings), ("inputs", files)) if changed
    )
    reason = "; ".join(settings + files)
    folder, moved = cellfolder.supersede(out_dir, names, f"{slug}-changed", reason)
    path = folder.relative_to(out_dir).as_posix()
    logger.warning(
        "%s: %s was computed with another identity or other inputs (%s): moved to %s; the cell "
        "trains from scratch",
        config.cell_id,
        what,
        reason,
        out_dir / path,
    )
    return {"path": path, "reason": reason, "moved": moved}


def relative_log(out_dir: Path, log_path: Path | None) -> str | None:
    return None if log_path is None else str(log_path.relative_to(out_dir))


def read_run_record(out_dir: Path, folder: Path | None = None) -> RunRecord | None:
    """The sealed run record of a finished cell, from ``folder`` (default ``out_dir``; its
    ``completed/`` for the kept copy), or None when there is none: a damaged or edited one is a
    DataError."""
    path = (folder or out_dir) / layout.RUN_RECORD
    if not path.is_file():
        return None
    return RunRecord.read(
        path,
        f"delete {out_dir} and train the cell again (or restore the file from a backup)",
    )


def missing_and_changed_outputs(folder: Path, record: RunRecord) -> tuple[list[str], list[str]]:
    """The outputs a run record lists (checkpoints, history) that are missing from ``folder``,
    and those there that differ from their sha256."""
    missing, changed = [], []
    for entry in record.outputs or []:
        output = folder / Path(entry["path"]).name
        if not output.is_file():
            missing.append(output.name)
        elif sha256_file(output) != entry["sha256"]:
            changed.append(output.name)
    return missing, changed


def verify_run_outputs(out_dir: Path, record: RunRecord) -> None:
    """Check every output a run record lists against its sha256 (DataError naming the file)."""
    refuse_missing_or_changed(out_dir, record, *missing_and_changed_outputs(out_dir, record))


def refuse_missing_or_changed(
    out_dir: Path, record: RunRecord, missing: list[str], changed: list[str]
) -> None:
    """DataError naming the first ``changed`` output of ``record`` in ``out_dir``, else the first
    ``missing`` one (the lists of :func:`missing_and_changed_outputs`)."""
    if changed:
        raise DataError(
            f"{out_dir / changed[0]}: its sha256 differs from the one recorded in "
            f"{out_dir / layout.RUN_RECORD}: the file changed after training; "
            + _changed_output_fix(out_dir, changed[0], record)
        )
    if missing:
        raise DataError(
            f"{out_dir / missing[0]} is missing (listed in {out_dir / layout.RUN_RECORD}); delete {out_dir} "
            "and train the cell again"
        )


def _changed_output_fix(out_dir: Path, name: str, record: RunRecord) -> str:
    """What to do about a changed output: have it restored when the copy kept in ``completed/`` is
    another file that still matches; otherwise (a change in place reaches the kept copy through
    the hard link) train again."""
    output, kept = out_dir / name, out_dir / layout.COMPLETED_DIR / name
    [expected] = [e["sha256"] for e in record.outputs or [] if Path(e["path"]).name == name]
    if kept.is_file() and not os.path.samefile(kept, output) and sha256_file(kept) == expected:
        return f"delete it to have it restored from {kept} (which still matches its sha256)"
    why = "is the same file (a hard link)" if kept.is_file() else "is missing"
    if kept.is_file() and not os.path.samefile(kept, output):
        why = "changed too"
    return (
        f"its kept copy {kept} {why}, so it cannot be restored: delete {out_dir} (or move it "
        "away) and train the cell again"
    )


def verify_kept_outputs(out_dir: Path, record: RunRecord) -> None:
    """Check every file of the finished run kept in ``completed/`` against its sha256."""
    kept = out_dir / layout.COMPLETED_DIR
    missing, changed = missing_and_changed_outputs(kept, record)
    if missing or changed:
        raise ChecksumError(
            f"{kept / (missing + changed)[0]} is missing or does not match its sha256 in "
            f"{kept / layout.RUN_RECORD}: the finished run cannot be restored; delete {out_dir} to train "
            "the cell again"
        )


def finished_run_names(out_dir: Path, finished: list[RunRecord]) -> list[str]:
    """What belongs to a finished run in the cell folder: its outputs, its evaluations, a left-over
    state, and ``completed/`` last (the commit point)."""
    outputs = [name for record in finished for name in record.output_names()]
    evaluations = sorted(  # records and their logs
        path.name for path in out_dir.glob(f"{layout.EVALUATION_PREFIX}*") if path.is_file()
    )
    names = [
        layout.RUN_RECORD,
        layout.HISTORY,
        *outputs,
        *evaluations,
        layout.STATE_DIR,
        layout.COMPLETED_DIR,
    ]
    return list(dict.fromkeys(names))


def restore_completed_run(
    out_dir: Path, record: RunRecord, config: CellConfig, log_path: Path | None
) -> RunRecord:
    """Put the kept outputs of a finished run back in place, recording this attempt."""
    attempt = {
        "started": environment.timestamp(),
        "resumed_from_epoch": record.epochs_run,
        "resumed_at_batch": None,
        "host": environment.host(),
        "slurm": environment.slurm_context(),
        "runtime": config.to_dict()["runtime"],
        "log": relative_log(out_dir, log_path),
        "restored_outputs": True,
    }
    record = dataclasses.replace(record, attempts=[*(record.attempts or []), attempt])
    commit_completed_run(out_dir, record)  # a state is left over if killed right after completing
    logger.info(
        "%s: training had completed (%d epochs); its outputs are restored from %s",
        config.cell_id,
        record.epochs_run,
        out_dir / layout.COMPLETED_DIR,
    )
    return record


def commit_completed_run(out_dir: Path, record: RunRecord) -> None:
    """Commit a finished run: its record into ``completed/`` (the commit point), the resume state
    dropped, the outputs put in place."""
    record.write(out_dir / layout.COMPLETED_DIR / layout.RUN_RECORD)
    checkpoints.clear_state(out_dir / layout.STATE_DIR)
    cellfolder.publish(out_dir, [*record.output_names(), layout.RUN_RECORD])
