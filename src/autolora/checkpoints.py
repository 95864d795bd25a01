"""Weights and resume state on disk, in safetensors (no pickle is ever written or read here).

Weights file (``best_val.safetensors`` ...): a model state dict; its safetensors metadata is one
entry, ``autolora``, holding canonical JSON (``format``, epoch, selected_by, metric, value,
cell_id, ...). One entry because safetensors writes several metadata keys in a random order: the
same tensors and metadata must always give the same bytes (and sha256).

Resume state, a folder (``<cell>/state/``)::

    state.json                    info (epoch, history, schedulers, ...) + {group: file, sha256}
    <group>-<token>.safetensors   one tensor group each: model, optimizer, rng, best_val, ...

``state.json`` is sealed like a record (``record_sha256``, ``autolora.records.seal``): its history,
best values, learning rate and scheduler states are refused after a hand edit, not resumed into
the run record. It is the commit point: tensor files are written first under fresh names, then
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
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from autolora import records
from autolora.errors import DataError
from autolora.files import canonical_json, read_json, read_verified, write_bytes, write_json
from autolora.planning import layout

WEIGHTS_FORMAT = "autolora-weights/2"
METADATA_KEY = "autolora"
STATE_FORMAT = 2  # 2: sealed (record_sha256)


def _storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> bytes:
    """The safetensors file of ``tensors`` with ``metadata`` as one canonical-JSON entry: equal
    tensors and metadata give equal bytes."""
    encoded = None if metadata is None else {METADATA_KEY: canonical_json(metadata)}
    return save(_storable(tensors), metadata=encoded)


def tensors_from_bytes(data: bytes, path: str | os.PathLike, fix: str) -> dict[str, Tensor]:
    """Parse safetensors ``data`` (the contents of ``path``); a damaged file is a DataError."""
    try:
        return load(data)
    except (SafetensorError, ValueError) as error:
        raise DataError(
            f"{path} is not a readable safetensors file ({error}): it is truncated or damaged; "
            f"{fix}"
        ) from None


def metadata_from_bytes(data: bytes, path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """The ``autolora`` metadata entry of a safetensors file's bytes ({} when it has none)."""
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        raw = header.get("__metadata__") or {}
        return json.loads(raw[METADATA_KEY]) if METADATA_KEY in raw else {}
    except (ValueError, AttributeError, TypeError):
        raise DataError(
            f"{path} is not a readable safetensors file (damaged header): it is truncated or "
            f"damaged; {fix}"
        ) from None


def save_weights(path: str | os.PathLike, state_dict: dict[str, Tensor], metadata: dict) -> str:
    """Write a state dict with ``metadata`` (JSON-serialisable), atomically; returns its sha256."""
    return write_bytes(path, safetensors_bytes(state_dict, {**metadata, "format": WEIGHTS_FORMAT}))


def load_verified_weights(
    path: str | os.PathLike, sha256: str, *, recorded_in: str, fix: str, device: str = "cpu"
) -> dict[str, Tensor]:
    """The tensors of ``path`` after checking its bytes against ``sha256`` (read once)."""
    data = read_verified(path, sha256, recorded_in=recorded_in, fix=fix, what="checkpoint")
    tensors = tensors_from_bytes(data, path, fix)
    return tensors if str(device) == "cpu" else {k: t.to(device) for k, t in tensors.items()}


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
    """The JSON part of a resume state, its seal checked, or None when there is none (cheap: no
    tensors read). A damaged, edited or older-format ``state.json`` is a DataError."""
    path = Path(state_dir) / layout.STATE_FILE
    if not path.is_file():
        return None
    fix = f"delete {Path(state_dir)} to start the run over"
    info = read_json(path, fix)
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise DataError(
            f"resume state {path} has format {found!r}, expected {STATE_FORMAT} (written by "
            f"another version of autolora); {fix}"
        )
    recorded, actual = info.get(records.SEAL_KEY), records.seal_digest(info)
    if recorded != actual:
        raise DataError(
            f"{path}: its content hashes to {actual}, not to its {records.SEAL_KEY} {recorded}: "
            f"the resume state was changed after it was written; {fix}"
        )
    return {key: value for key, value in info.items() if key != records.SEAL_KEY}


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
            path = state_dir / layout.state_tensor_file(group, token)
            written.append(path)
            sha256 = write_bytes(path, safetensors_bytes(group_tensors))
            files[group] = {"file": path.name, "sha256": sha256}
        committed = records.seal({**info, "format": STATE_FORMAT, "files": files})
        write_json(state_dir / layout.STATE_FILE, committed)
    except BaseException:
        for path in written:  # not committed: the previous state stays, and so does the space
            path.unlink(missing_ok=True)
        raise
    _delete_unnamed(state_dir, files)


def _delete_unnamed(state_dir: Path, files: dict[str, dict[str, str]]) -> None:
    """Delete tensor and temporary files of ``state_dir`` that the state ``files`` do not name."""
    keep = {entry["file"] for entry in files.values()} | {layout.STATE_FILE}
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
    groups: dict[str, dict[str, Tensor]] = {}
    for group, entry in info["files"].items():
        groups[group] = load_verified_weights(
            state_dir / entry["file"],
            entry["sha256"],
            recorded_in=str(state_dir / layout.STATE_FILE),
            fix=f"delete {state_dir} to start the run over",
            device=str(device),
        )
    return info, groups


def clear_state(state_dir: str | os.PathLike) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
