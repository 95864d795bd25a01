"""Standard accuracy, PGD-10 and AutoAttack of a trained cell's checkpoint (SPEC 3, 5).

The accuracies are counted by ``autolora.accuracy`` (the same code as the training loop's
per-epoch numbers). All accuracies are in percent.

Before anything is evaluated, every input is verified where it is read: the run record's seal, the
checkpoint against the run record's sha256 (hashed on the bytes that are then parsed), the prepared
dataset's ``dataset.json`` and split files against the run record, and the data files the
evaluation reads against ``dataset.json``. The evaluation record lists them under ``verified``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from autolora import environment
from autolora.accuracy import batches_on, clean_and_pgd_accuracy
from autolora.attacks import autoattack_evaluation
from autolora.autoattack_variants import STANDARD, autoattack_variant
from autolora.errors import ConfigError, DataError
from autolora.files import sha256_file
from autolora.planning import layout
from autolora.records import EvaluationRecord, RunRecord, file_entry, record_path

logger = logging.getLogger(__name__)


EVALUATION_SUBSET_SEED = 0  # one subset per dataset and n: every cell sees the same images


def stratified_subset(
    labels: Sequence[int], n: int, seed: int = EVALUATION_SUBSET_SEED
) -> list[int]:
    """Positions (ascending) of a seeded, class-stratified subset of ``n`` of the examples whose
    labels are ``labels``: each class gets n·(its share), rounded down, and the examples left over
    go to the classes with the largest remainders (ties: lower class index); within a class the
    positions are drawn uniformly without replacement. All positions when ``n`` >= their count.
    A class-ordered split's first n images would be a few classes only."""
    labels = np.asarray(labels, dtype=np.int64)
    if n >= len(labels):
        return list(range(len(labels)))
    classes, counts = np.unique(labels, return_counts=True)
    quotas = n * counts / len(labels)
    take = np.floor(quotas).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda i: (-(quotas[i] - take[i]), classes[i]))
    for i in order[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=int(k), replace=False)
        for label, k in zip(classes, take, strict=True)
    ]
    return sorted(int(p) for p in np.concatenate(chosen))


def resolve_checkpoint_name(name: str, config) -> str:
    """``name``, or for ``selected`` the selection of the cell's spec, else its protocol's. A
    workflow's ``training.selection`` is not part of a run (the selection is the evaluation's):
    the workflow names the checkpoint itself."""
    if name == layout.SELECTED_CHECKPOINT:
        return config.selection
    if name not in layout.CHECKPOINT_NAMES:
        allowed = ", ".join((*layout.CHECKPOINT_NAMES, layout.SELECTED_CHECKPOINT))
        raise ConfigError(f"--checkpoint {name!r}: allowed {allowed}")
    return name


def load_run_record(run_dir: Path) -> RunRecord:
    path = run_dir / layout.RUN_RECORD
    if not path.is_file():
        raise DataError(f"{path} does not exist: the run is not complete; finish `autolora train`")
    return RunRecord.read(path, f"delete {run_dir} and train the cell again (`autolora train`)")


def check_same_data(run_record: RunRecord, data_dir: Path, run_dir: Path) -> list[dict[str, str]]:
    """The prepared dataset must be the one the run was trained on: its ``dataset.json`` and
    split files must hash to the run record's input entries, else the numbers would silently
    describe other data. Returns what was checked."""
    checked = []
    expected_places = {
        "dataset": Path(),
        "split_manifest": Path(layout.SPLITS_DIR),
        "split_info": Path(layout.SPLITS_DIR),
    }
    for entry in run_record.inputs or []:
        place = expected_places.get(entry.get("role"))
        if place is None or entry.get("path") is None:
            continue
        path = data_dir / place / Path(entry["path"]).name
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != entry["sha256"]:
            raise DataError(
                f"{path} (sha256 {actual}) is not the {entry['role']} run {run_dir} was trained "
                f"on (sha256 {entry['sha256']} in its run.json): pass the prepared dataset of "
                "that run as --data, or retrain the cell on this one"
            )
        checked.append(
            {
                "path": record_path(path),
                "sha256": actual,
                "checked_against": record_path(run_dir / layout.RUN_RECORD),
            }
        )
    return checked


def evaluate_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    checkpoint: str,
    out: str | os.PathLike,
    n: int | None = None,
    autoattack: bool | None = None,
    autoattack_version: str = STANDARD,
    autoattack_batch_size: int | None = None,
    device: str | None = None,
    runtime: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test split (a seeded, class-stratified subset of ``n``
    examples, ``stratified_subset``, when ``n`` is given) and write the record.

    ``n``, ``autoattack`` and ``autoattack_batch_size`` default to the cell's ``autoattack``
    settings; ``runtime`` (device, workers) replaces the settings of the run's, and ``device``
    the device; ``autoattack_version`` names the AutoAttack variant
    (``autolora.autoattack_variants``: ``standard``, the paper's, or a reduced one).
    """
    from autolora.checkpoints import load_verified_weights
    from autolora.data.loaders import make_loader
    from autolora.data.prepared import PreparedDataset, SplitView
    from autolora.models import build_model
    from autolora.planning.cells import CellConfig

    started, clock = environment.timestamp(), time.monotonic()
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    run_record = load_run_record(run_dir)
    config = CellConfig.from_dict(run_record.config).with_runtime(runtime)
    if autoattack_batch_size is not None:
        if autoattack_batch_size < 1:
            raise ConfigError(f"--autoattack-batch-size must be >= 1, got {autoattack_batch_size}")
        config = dataclasses.replace(
            config,
            autoattack=dataclasses.replace(config.autoattack, batch_size=autoattack_batch_size),
        )
    name = resolve_checkpoint_name(checkpoint, config)
    checkpoint_entry = run_record.checkpoints.get(name)
    if checkpoint_entry is None:
        selected = (
            f" ('{layout.SELECTED_CHECKPOINT}' is the protocol's selection, {name}, unless the "
            "cell's spec chose one)"
            if checkpoint == layout.SELECTED_CHECKPOINT
            else ""
        )
        raise DataError(
            f"run {run_dir} has no {name} checkpoint{selected} (its checkpoints: "
            f"{', '.join(run_record.checkpoints)}); choose another --checkpoint"
        )
    checkpoint_path = run_dir / layout.checkpoint_file(name)
    verification_started = time.monotonic()
    state_dict = load_verified_weights(
        checkpoint_path,
        checkpoint_entry["sha256"],
        recorded_in=str(run_dir / layout.RUN_RECORD),
        fix=f"delete {run_dir} and train the cell again (`autolora train`)",
    )
    checkpoint_sha = checkpoint_entry["sha256"]
    verified = [
        {
            "path": record_path(checkpoint_path),
            "sha256": checkpoint_sha,
            "checked_against": record_path(run_dir / layout.RUN_RECORD),
        }
    ]
    n = config.autoattack.n if n is None else n
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    run_autoattack = config.autoattack.enabled if autoattack is None else autoattack
    variant = autoattack_variant(autoattack_version)
    torch_device = environment.resolve_device(device or config.runtime.device)

    verified += check_same_data(run_record, data_dir, run_dir)
    verification_seconds = time.monotonic() - verification_started
    dataset = PreparedDataset.open(data_dir, verify=config.split_scheme)
    verification_seconds += dataset.verification_seconds
    verified += [
        {
            "path": record_path(data_dir / item["file"]),
            "sha256": item["sha256"],
            "checked_against": record_path(data_dir / layout.DATASET_METADATA),
        }
        for item in dataset.verified
    ]
    test_view = dataset.split(config.split_scheme, "test")
    subset = None
    if n is not None and n < len(test_view):
        positions = stratified_subset(test_view.labels, n)
        subset = {
            "n": len(positions),
            "selection": "class-stratified",
            "seed": EVALUATION_SUBSET_SEED,
            "test_positions": positions,
            "examples": [int(test_view.indices[p]) for p in positions],
        }
        test_view = SplitView(dataset, config.split_scheme, "test", test_view.indices[positions])
    from autolora.methods import build_method, method_settings

    method = build_method(config.method, method_settings(config))
    model = build_model(
        config.arch,
        dataset.num_outputs(config.split_scheme),
        input_upsample=dataset.metadata.get("input_upsample"),
        **method.model_options(),
    )
    model.load_state_dict(state_dict)
    model.to(torch_device).eval()

    def test_batches() -> Iterator[tuple[Tensor, Tensor]]:
        loader = make_loader(
            test_view,
            train=False,
            seed=config.seed,
            epoch=0,
            batch_size=config.batch_size,
            stream="eval",
            num_workers=config.runtime.num_workers,
        )
        return batches_on(loader, torch_device)

    attack = config.attack
    sa, pgd10, count = clean_and_pgd_accuracy(
        model, test_batches(), eps=attack.eps, step=attack.step, steps=attack.eval_steps
    )
    logger.info("%s %s: SA %.2f PGD-10 %.2f (n=%d)", config.cell_id, name, sa, pgd10, count)
    autoattack_record = None
    aa = None
    if run_autoattack:
        xs, ys = zip(*((x.cpu(), y.cpu()) for x, y in test_batches()), strict=True)
        result = autoattack_evaluation(
            model,
            torch.cat(xs).to(torch_device),
            torch.cat(ys).to(torch_device),
            eps=attack.eps,
            device=torch_device,
            batch_size=config.autoattack.batch_size,
            seed=config.seed,
            version=variant.name,
        )
        aa = result.robust_accuracy
        autoattack_record = {
            "version": result.version,
            "attacks": list(result.attacks),
            "package": environment.package_versions(("pyautoattack",))["pyautoattack"],
            "progression": result.progression,
            "clean_accuracy": result.clean_accuracy,
            "seed": config.seed,
            "batch_size": config.autoattack.batch_size,
        }
        logger.info("%s %s: %s %.2f", config.cell_id, name, variant.label, aa)

    metadata = run_record.checkpoints[name]
    scheme = config.split_scheme
    run_record_path = run_dir / layout.RUN_RECORD
    record = EvaluationRecord(
        cell=run_record.cell,
        cell_id=config.cell_id,
        checkpoint={
            "name": name,
            "requested": checkpoint,
            "path": record_path(checkpoint_path),
            "sha256": checkpoint_sha,
            "epoch": metadata["epoch"],
            "selected_by": metadata["selected_by"],
        },
        metrics={"SA": sa, "PGD10": pgd10, "AA": aa},
        n=count,
        subset=subset,
        attack={"eps": attack.eps, "step": attack.step, "pgd_steps": attack.eval_steps},
        autoattack=autoattack_record,
        run_record={"path": record_path(run_record_path), "sha256": sha256_file(run_record_path)},
        inputs=[
            file_entry("dataset", data_dir / layout.DATASET_METADATA),
            file_entry("split_manifest", data_dir / layout.split_manifest(scheme)),
            file_entry("checkpoint", checkpoint_path),
        ],
        verified={"files": verified, "seconds": round(verification_seconds, 6)},
        **environment.environment(torch_device),
        seconds=round(time.monotonic() - clock, 3),
        started=started,
        finished=environment.timestamp(),
        command=command if command is not None else environment.command_line(),
    )
    return record.write(out)
