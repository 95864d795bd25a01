"""Weights and resume state on disk, in safetensors (no pickle is ever written or read here).

Weights file (``best_val.safetensors`` ...): a model state dict; its safetensors metadata holds
``format`` and one JSON-encoded value per key (epoch, selected_by, metric, value, cell_id, ...).

Resume state, a folder (``<cell>/state/``)::

    state.json                    info (epoch, history, schedulers, ...) + {group: file, sha256}
    <group>-<token>.safetensors   one tensor group each: model, optimizer, rng, best_val, ...

``state.json`` is the commit point: tensor files are written first under fresh names, then
``state.json`` is replaced atomically, then files it no longer names are deleted. A crash at any
moment leaves the previous state or the new one, never a mix. A save that fails (a full disk)
deletes the files it wrote before raising, and every save first deletes what a killed one left
(files ``state.json`` does not name, temporary files), so that the next attempt finds the space
it needs and resumes from the previous state. One writer at a time: the cell's lock
(``autolora.cellfolder``) guarantees it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from autolora.errors import ChecksumError, DataError
from autolora.io import atomic_path, read_json, sha256_file, write_json

WEIGHTS_FORMAT = "autolora-weights/1"
STATE_FORMAT = 1
STATE_FILE = "state.json"


def _storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def save_weights(path: str | os.PathLike, state_dict: dict[str, Tensor], metadata: dict) -> None:
    """Write a state dict with JSON-encoded ``metadata`` values, atomically."""
    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    encoded["format"] = WEIGHTS_FORMAT
    with atomic_path(path) as tmp:
        save_file(_storable(state_dict), str(tmp), metadata=encoded)


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist: train the cell first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise DataError(f"checkpoint {path} is not a readable safetensors file: {error}") from error
    if raw.get("format") != WEIGHTS_FORMAT:
        raise DataError(
            f"checkpoint {path} has format {raw.get('format')!r}, expected {WEIGHTS_FORMAT!r}: "
            "it was not written by `autolora train`"
        )
    return {key: json.loads(value) for key, value in raw.items() if key != "format"}


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state dict into tensors (``state.<param>.<key>``) and the JSON rest."""
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        plain_state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                plain_state[str(index)][key] = value
    return tensors, {"state": plain_state, "param_groups": state_dict["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def read_state_info(state_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON part of a resume state, or None when there is none (cheap: no tensors read)."""
    path = Path(state_dir) / STATE_FILE
    return read_json(path) if path.is_file() else None


def save_state(
    state_dir: str | os.PathLike,
    info: dict[str, Any],
    tensors: dict[str, dict[str, Tensor] | None],
) -> None:
    """Commit a new resume state. A group given as None keeps the previous state's file."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state_info(state_dir) or {}
    _delete_unnamed(state_dir, previous.get("files", {}))
    files: dict[str, dict[str, str]] = {}
    token = uuid.uuid4().hex[:12]
    written: list[Path] = []
    try:
        for group, group_tensors in tensors.items():
            if group_tensors is None:
                if group in previous.get("files", {}):
                    files[group] = previous["files"][group]
                continue
            path = state_dir / f"{group}-{token}.safetensors"
            written.append(path)
            with atomic_path(path) as tmp:
                save_file(_storable(group_tensors), str(tmp))
            files[group] = {"file": path.name, "sha256": sha256_file(path)}
        write_json(state_dir / STATE_FILE, {**info, "format": STATE_FORMAT, "files": files})
    except BaseException:
        for path in written:  # not committed: the previous state stays, and so does the space
            path.unlink(missing_ok=True)
        raise
    _delete_unnamed(state_dir, files)


def _delete_unnamed(state_dir: Path, files: dict[str, dict[str, str]]) -> None:
    """Delete tensor and temporary files of ``state_dir`` that the state ``files`` do not name."""
    keep = {entry["file"] for entry in files.values()} | {STATE_FILE}
    for path in state_dir.iterdir():
        stray = path.suffix == ".safetensors" or path.name.endswith(".tmp")
        if stray and path.name not in keep:
            path.unlink(missing_ok=True)


def load_state(
    state_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]] | None:
    """``(info, {group: tensors})`` of the committed resume state, or None when there is none.
    Every tensor file is checked against its sha256."""
    state_dir = Path(state_dir)
    info = read_state_info(state_dir)
    if info is None:
        return None
    if info.get("format") != STATE_FORMAT:
        raise DataError(
            f"resume state {state_dir / STATE_FILE} has format {info.get('format')!r}, expected "
            f"{STATE_FORMAT}: delete {state_dir} to start the run over"
        )
    groups: dict[str, dict[str, Tensor]] = {}
    for group, entry in info["files"].items():
        path = state_dir / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise ChecksumError(
                f"resume state file {path} is missing or does not match its sha256 in "
                f"{state_dir / STATE_FILE}: delete {state_dir} to start the run over"
            )
        groups[group] = load_file(str(path), device=str(device))
    return info, groups


def clear_state(state_dir: str | os.PathLike) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
