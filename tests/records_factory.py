"""Test helper: cell folders with format-correct records and known metric values.

Writes, under a root folder used as the working directory, what the workflow would: shared inputs
(prepared-dataset metadata, split manifest, backbone weights as a small safetensors file) and per
cell ``run.json``, ``eval-<checkpoint>.json``, real safetensors checkpoints and ``history.csv``.
Every path inside the records is relative to the root; every sha256 is the file's real hash;
records carry their seal (``record_sha256``) as `autolora train` / `evaluate` write them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from autolora.data.sources import CATALOGUE as DATASETS
from autolora.files import sha256_file, write_json
from autolora.pins import record_lock
from autolora.planning.grid import TableEntry
from autolora.records import seal
from autolora.weights import CATALOGUE

CHECKPOINTS = ("best_val", "best_test", "final")


def entry(
    table: str,
    dataset: str,
    method: str,
    seed: int,
    *,
    arch: str = "resnet18",
    eps_pt: float = 4,
    variant: str | None = None,
    factor: Any = None,
    protocol: str = "paper",
) -> TableEntry:
    return TableEntry(protocol, arch, eps_pt, dataset, method, variant, seed, table, factor)


def _file(role: str, path: Path, root: Path) -> dict[str, str]:
    return {"role": role, "path": path.relative_to(root).as_posix(), "sha256": sha256_file(path)}


def shared_inputs(root: Path, dataset: str, arch: str, eps_pt: float) -> list[dict[str, str]]:
    """Prepared-dataset metadata, split manifest and backbone weights (created once)."""
    data = root / "resources" / "data" / dataset
    manifest = data / "splits" / "paper.csv"
    if not manifest.exists():
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("split,position,example\ntrain,0,3\ntrain,1,0\nval,0,1\ntest,0,2\n")
        labels = data / "labels.npy"
        np.save(labels, np.array([0, 1, 2, 3], dtype=np.int64))
        files = {"labels.npy": sha256_file(labels), "splits/paper.csv": sha256_file(manifest)}
        if dataset in DATASETS:  # the published archives it would have been prepared from
            sources = [{"file": a.name, **a.checksum.as_record()} for a in DATASETS[dataset].files]
        else:
            sources = [{"generator": "records_factory"}]
        metadata = {"format": 2, "name": dataset, "num_classes": 10, "sources": sources}
        write_json(data / "dataset.json", seal({**metadata, "files": files}))
    weights = root / "resources" / "weights" / f"{arch}-eps{eps_pt}.safetensors"
    if not weights.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"conv1.weight": np.full((4, 3, 3, 3), float(eps_pt), dtype=np.float32)}, str(weights)
        )
        write_json(weights.with_suffix(".json"), backbone_record(root, weights, arch, eps_pt))
    return [
        _file("dataset", data / "dataset.json", root),
        _file("split_manifest", manifest, root),
        _file("weights", weights, root),
        _file("weights_record", weights.with_suffix(".json"), root),
    ]


def backbone_record(root: Path, weights: Path, arch: str, eps_pt: float) -> dict[str, Any]:
    """The record beside a backbone: converted from a catalogue checkpoint (whose published hash,
    or one pinned in <root>/config/weights.lock, the record names) or pre-trained here."""
    entry = CATALOGUE.get((arch, float(eps_pt)))
    if entry is None:
        source = {"pretrained_by": "records_factory"}
    else:
        digest = entry.sha256 or hashlib.sha256(entry.file.encode()).hexdigest()
        if entry.sha256 is None:
            (root / "config").mkdir(exist_ok=True)
            record_lock(root / "config" / "weights.lock", entry.file, digest)
        source = {"file": f"{arch}-eps{eps_pt:g}.ckpt", "sha256": digest}
    return {
        "kind": "backbone_weights",
        "arch": arch,
        "eps_pt": eps_pt,
        "source": source,
        "file": weights.name,
        "sha256": sha256_file(weights),
    }


def write_cell(
    root: Path,
    table_entry: TableEntry,
    metrics: Mapping[str, float | None],
    *,
    results: str = "results",
    checkpoint: str = "best_test",
    history: Sequence[Mapping[str, Any]] | None = None,
    protocol_choices: Mapping[str, Any] | None = None,
    autoattack_version: str = "standard",
) -> Path:
    """One finished, evaluated cell with ``metrics`` (percent) in its evaluation record; its AA
    (if any) from the AutoAttack variant ``autoattack_version``."""
    root = Path(root)
    cell_dir = root / results / table_entry.cell_id
    cell_dir.mkdir(parents=True, exist_ok=True)
    inputs = shared_inputs(root, table_entry.dataset, table_entry.arch, table_entry.eps_pt)
    history = history or [
        {"epoch": e, "grad_similarity": 0.1 * e, "test_pgd10": 40 + e} for e in (1, 2, 3)
    ]
    with open(cell_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    checkpoints = {}
    for index, name in enumerate(CHECKPOINTS):
        path = cell_dir / f"{name}.safetensors"
        weights = np.arange(64, dtype=np.float32) * (index + 1) + table_entry.seed
        save_file({"backbone.fc.weight": weights.reshape(8, 8)}, str(path))
        checkpoints[name] = {
            "epoch": index + 2,
            "selected_by": name,
            "metric": "test_pgd10",
            "value": 50.0,
            **{k: v for k, v in _file(name, path, root).items() if k != "role"},
        }
    identity = {
        "protocol": "paper",
        "arch": table_entry.arch,
        "eps_pt": table_entry.eps_pt,
        "dataset": table_entry.dataset,
        "method": table_entry.method,
        "variant": table_entry.variant,
        "seed": table_entry.seed,
    }
    run_path = cell_dir / "run.json"
    write_json(
        run_path,
        seal(
            {
                "kind": "training_run",
                "cell": identity,
                "cell_id": table_entry.cell_id,
                "config": {},
                "protocol": {
                    "name": "paper",
                    "choices": dict(protocol_choices or {"selection": checkpoint}),
                },
                "code": {"commit": "0123456789abcdef", "dirty": False, "version": "0.1.0"},
                "packages": {},
                "python": "CPython 3.11",
                "host": "node07",
                "device": "NVIDIA H100",
                "slurm": {"job_id": "4242", "node": "node07"},
                "started": "2024-01-01T00:00:00Z",
                "finished": "2024-01-01T01:00:00Z",
                "command": "autolora train",
                "inputs": inputs,
                "outputs": [_file("history", cell_dir / "history.csv", root)],
                "checkpoints": checkpoints,
                "attempts": [{"started": "2024-01-01T00:00:00Z"}],
                "epochs_run": 3,
                "stop_reason": "finished",
            }
        ),
    )
    chosen = checkpoints[checkpoint]
    write_json(
        cell_dir / f"eval-{checkpoint}.json",
        seal(
            {
                "kind": "evaluation",
                "cell": identity,
                "cell_id": table_entry.cell_id,
                "checkpoint": {
                    "name": checkpoint,
                    "path": chosen["path"],
                    "sha256": chosen["sha256"],
                    "epoch": chosen["epoch"],
                    "selected_by": checkpoint,
                },
                "metrics": dict(metrics),
                "n": 100,
                "autoattack": None
                if metrics.get("AA") is None
                else {"version": autoattack_version, "progression": [], "seed": 0},
                "run_record": {
                    "path": run_path.relative_to(root).as_posix(),
                    "sha256": sha256_file(run_path),
                },
                "inputs": [_file("checkpoint", cell_dir / f"{checkpoint}.safetensors", root)]
                + inputs[1:2],
                "device": "NVIDIA H100",
                "host": "node08",
                "slurm": {"job_id": "4343", "node": "node08"},
                "seconds": 12.5,
                "started": "2024-01-01T02:00:00Z",
                "finished": "2024-01-01T02:00:12Z",
                "code": {"commit": "0123456789abcdef", "dirty": False, "version": "0.1.0"},
            }
        ),
    )
    return cell_dir


def metrics_of(sa: float, pgd10: float, aa: float | None) -> dict[str, float | None]:
    return {"SA": sa, "PGD10": pgd10, "AA": aa}


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
