"""The inputs of a run, verified where they are read: the prepared dataset's files against its
``dataset.json`` (hashed as they are read; ``images.u8`` in one streaming pass), the backbone
against the record beside it and, for a downloaded checkpoint, the published or pinned hash in
``config/weights.lock``. A ``--data`` whose dataset is not the spec's, or weights of another arch /
ε_pt, are refused. Nothing is trained before this has passed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from autolora import records
from autolora.data.prepared import PreparedDataset
from autolora.errors import ConfigError, DataError
from autolora.planning import layout
from autolora.planning.cells import CellConfig
from autolora.weights import DEFAULT_LOCK, load_verified_backbone


class RunInputs:
    """One attempt's inputs: :meth:`verify` opens the prepared data and reads the backbone; then
    ``dataset``, ``split_info``, ``views`` (train/val/test), ``backbone_state`` (until the model
    takes it), ``verified`` (every file checked and against what), ``verification_seconds`` and
    ``inputs`` (the run record's entries, with the sha256 of the bytes verified) are set."""

    def __init__(
        self,
        config: CellConfig,
        spec: dict[str, Any],
        *,
        data_dir: Path,
        weights: Path,
        spec_file: Path | None,
        weights_lock: Path = DEFAULT_LOCK,
    ) -> None:
        self.config = config
        self.spec = spec
        self.data_dir = data_dir
        self.weights_path = weights
        self.spec_file = spec_file
        self.weights_lock = weights_lock
        self.verified: list[dict[str, Any]] = []
        self.verification_seconds = 0.0
        self.inputs: list[dict[str, Any]] = []
        self.backbone_state: dict[str, Tensor] | None = None

    def verify(self) -> list[dict[str, Any]]:
        """Open the prepared data and read the backbone, checking every file against its record
        (nothing is trained yet); returns the run's inputs with the sha256 of the bytes read."""
        self._open_data()
        self._verify_backbone()
        self.inputs = self._entries()
        return self.inputs

    def _open_data(self) -> None:
        config = self.config
        self.dataset = PreparedDataset.open(self.data_dir, verify=config.split_scheme)
        check_dataset_name(self.dataset, config, self.data_dir)
        self.verified.append(
            {
                "path": records.record_path(self.data_dir / layout.DATASET_METADATA),
                "sha256": self.dataset.metadata_sha256,
                "checked_against": "its record_sha256",
            }
        )
        self.verified += [
            {
                "path": records.record_path(self.data_dir / item["file"]),
                "sha256": item["sha256"],
                "checked_against": records.record_path(self.data_dir / layout.DATASET_METADATA),
            }
            for item in self.dataset.verified
        ]
        self.verification_seconds += self.dataset.verification_seconds
        self.split_info = self.dataset.split_info(config.split_scheme)
        self.views = {
            name: self.dataset.split(config.split_scheme, name) for name in ("train", "val", "test")
        }
        for name in ("train", "val") + (("test",) if config.test_each_epoch else ()):
            if len(self.views[name]) == 0:
                raise DataError(
                    f"prepared dataset {self.data_dir}: split {name!r} of scheme "
                    f"{config.split_scheme!r} is empty; re-prepare the dataset"
                )

    def _verify_backbone(self) -> None:
        config = self.config
        self.backbone_state, verified, seconds = load_verified_backbone(
            self.weights_path,
            arch=config.arch,
            eps_pt_255=config.eps_pt,
            lock_path=self.weights_lock,
        )
        self.backbone_verified = verified
        self.verified += [
            {
                **item,
                "path": item["path"] if item.get("source") else records.record_path(item["path"]),
            }
            for item in verified
        ]
        self.verification_seconds += seconds

    def _entries(self) -> list[dict[str, Any]]:
        """The run's input files with the sha256 of the bytes verified (not hashed again)."""
        if self.spec_file is not None:
            spec_entry = records.file_entry("spec", self.spec_file)
        else:
            text = json.dumps(self.spec, sort_keys=True)
            spec_entry = {
                "role": "spec",
                "path": None,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        scheme = self.config.split_scheme
        data_files = {item["file"]: item["sha256"] for item in self.dataset.verified}
        weights, weights_record = self.backbone_verified[:2]
        return [
            spec_entry,
            hashed_entry(
                "dataset", self.data_dir / layout.DATASET_METADATA, self.dataset.metadata_sha256
            ),
            hashed_entry(
                "split_manifest",
                self.data_dir / layout.split_manifest(scheme),
                data_files[layout.split_manifest(scheme)],
            ),
            hashed_entry(
                "split_info",
                self.data_dir / layout.split_info(scheme),
                data_files[layout.split_info(scheme)],
            ),
            hashed_entry("weights", self.weights_path, weights["sha256"]),
            hashed_entry(
                "weights_record",
                layout.backbone_record(self.weights_path),
                weights_record["sha256"],
            ),
        ]


def hashed_entry(role: str, path: Path, sha256: str) -> dict[str, str]:
    """A record's entry of the file ``path`` whose bytes hashed to ``sha256`` when they were
    written or verified (``records.file_entry`` hashes the file again)."""
    return {"role": role, "path": records.record_path(path), "sha256": sha256}


def check_dataset_name(dataset: PreparedDataset, config: CellConfig, data_dir: Path) -> None:
    """Refuse a prepared dataset that is not the cell's (its records would name the wrong data)."""
    if dataset.name != config.dataset:
        raise ConfigError(
            f"--data {data_dir} holds dataset {dataset.name!r}, but the cell is of "
            f"{config.dataset!r}: pass the prepared {config.dataset} dataset "
            f"({layout.prepared_dataset('resources', config.dataset)} in the workflow)"
        )
