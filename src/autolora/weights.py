"""Pre-trained backbones of SPEC §1: catalogue, download, sha256 verification, lock file, and the
one-time conversion of a robustness-library checkpoint (a pickle) to safetensors.

The conversion is the only place in the package where a pickle is opened. Everything downstream
reads the safetensors file, whose keys are torchvision's ResNet names (``fc.*`` included; the
model loader ignores the head).
"""

from __future__ import annotations

import logging
import os
import pickle
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolora.data.sources.download import Checksum, download
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.files import sha256_bytes, sha256_file
from autolora.pins import DEFAULT_LOCK, check_or_pin, read_lock
from autolora.planning import layout
from autolora.planning.vocabulary import ARCHS, PUBLISHED_ARCHS, PUBLISHED_EPS_PT_255
from autolora.records import BackboneRecord

log = logging.getLogger(__name__)

HOST = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main"
EPS_VALUES = tuple(float(eps) for eps in PUBLISHED_EPS_PT_255)  # L-inf, /255
APPROX_SIZE_MB = {"resnet18": 93.6, "resnet50": 205.0}
STATE_PREFIX = "module.model."

PUBLISHED_SHA256: dict[str, str | None] = {
    "resnet18_linf_eps0.5.ckpt": "48d5e933d4ec99b390a0b7c628a4303343f9517a46245cbd7d2f2c034cbd93ee",
    "resnet18_linf_eps1.0.ckpt": "b49800111d38197deefb0c236055fbdd9d91a0607e55d6cc0bce15504adc9582",
    "resnet18_linf_eps2.0.ckpt": "bf2611291cc5f792c7f8f17ff6f841f9a0ede32dbe575cbd5bc57233139ae8bd",
    "resnet18_linf_eps4.0.ckpt": "6f8ccef1ae4958c381617081e9e0fb5f50e7cccd4965192d1caa452fd6c5cd1e",
    "resnet18_linf_eps8.0.ckpt": None,
    "resnet18_l2_eps0.ckpt": "d762c58693a2ecaf93160060bb2c32493598540a08852fb3068e95e88f032623",
    "resnet50_linf_eps0.5.ckpt": "9612d8096ef5378b4a32746072f72fedcb02c7ff4b747bc7163274f7ec2f0fd8",
    "resnet50_linf_eps1.0.ckpt": None,
    "resnet50_linf_eps2.0.ckpt": "59f28de783a049cb4d91ba1c0a09c314db2cc4bb1e859566e023f842b02772ac",
    "resnet50_linf_eps4.0.ckpt": "9e62216975c111b8081481533b6142dec34be69abe5d90b54d7f860015c263db",
    "resnet50_linf_eps8.0.ckpt": "b907957f8e3ce209816813d8811c682e965a1b0f48455def828d35a4cc2953dc",
    "resnet50_l2_eps0.ckpt": "72d4a99582db5d7fa86c3fd2a089f0bfd6a10f69d635bca51f6ad72ac6b458f0",
}


@dataclass(frozen=True)
class WeightFile:
    """One published checkpoint; ``sha256`` is None where the publisher gives none."""

    arch: str
    eps_pt_255: float
    file: str
    url: str
    approx_size_mb: float
    sha256: str | None


def weight_file_name(arch: str, eps_pt_255: float) -> str:
    """ε = 0 is the standard-training file (``*_l2_eps0.ckpt``); others are L-inf robust files."""
    if eps_pt_255 == 0:
        return f"{arch}_l2_eps0.ckpt"
    return f"{arch}_linf_eps{float(eps_pt_255):.1f}.ckpt"


CATALOGUE: dict[tuple[str, float], WeightFile] = {
    (arch, eps): WeightFile(
        arch=arch,
        eps_pt_255=eps,
        file=weight_file_name(arch, eps),
        url=f"{HOST}/{weight_file_name(arch, eps)}",
        approx_size_mb=APPROX_SIZE_MB[arch],
        sha256=PUBLISHED_SHA256[weight_file_name(arch, eps)],
    )
    for arch in PUBLISHED_ARCHS
    for eps in EPS_VALUES
}


def lookup(arch: str, eps_pt_255: float) -> WeightFile:
    try:
        return CATALOGUE[(arch, float(eps_pt_255))]
    except (KeyError, ValueError):
        raise ConfigError(
            f"no published checkpoint for arch {arch!r} with eps_pt {eps_pt_255!r}; available: "
            f"arch in {', '.join(PUBLISHED_ARCHS)}, eps_pt in {', '.join(f'{e:g}' for e in EPS_VALUES)} "
            "(the tiny demo backbone comes from `autolora pretrain`)"
        ) from None


def entry_for_file(path: str | os.PathLike) -> WeightFile:
    """The catalogue entry whose file name ``path`` has (to infer arch and eps_pt)."""
    name = Path(path).name
    for entry in CATALOGUE.values():
        if entry.file == name:
            return entry
    raise ConfigError(
        f"{name} is not a catalogue file name; pass --arch and --eps to say what it holds"
    )


def verify_weights(
    path: str | os.PathLike, entry: WeightFile, lock_path: str | os.PathLike = DEFAULT_LOCK
) -> str:
    """Check ``path`` against the published sha256 or the one pinned in the lock file.

    Where neither exists, the hash is recorded in the lock file (trust on first use) and every
    later call checks against it. Returns the file's sha256.
    """
    actual = sha256_file(path)
    check_pinned(actual, entry, lock_path, path)
    return actual


def pinned_sha256(entry: WeightFile, lock_path: str | os.PathLike) -> tuple[str | None, str]:
    """The sha256 ``entry``'s file must have and where it comes from ("published" or the lock);
    (None, lock) when neither knows it."""
    pinned = read_lock(lock_path).get(entry.file)
    if entry.sha256 and pinned and entry.sha256 != pinned:
        raise ConfigError(
            f"{lock_path}: pins {entry.file} to {pinned}, but the published sha256 is "
            f"{entry.sha256}; correct or delete that line of the lock file"
        )
    return (entry.sha256, "published") if entry.sha256 else (pinned, str(lock_path))


def check_pinned(
    actual: str, entry: WeightFile, lock_path: str | os.PathLike, path: str | os.PathLike
) -> str:
    """Compare ``actual`` (the sha256 of ``path``, a copy of ``entry.file``) with the published
    or pinned hash; pin it where there is none (trust on first use). Returns the origin."""
    expected, origin = pinned_sha256(entry, lock_path)
    redo = "delete it and download it again"
    if origin != "published":
        return check_or_pin(actual, entry.file, lock_path, path, redo)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, expected {expected} ({origin}) for {entry.file}; {redo}"
        )
    return origin


def download_weights(
    arch: str,
    eps_pt_255: float,
    dest: str | os.PathLike,
    *,
    lock_path: str | os.PathLike = DEFAULT_LOCK,
    progress: bool | None = None,
) -> Path:
    """Download a catalogue checkpoint to ``dest`` (resumable), verify it, pin it if unpinned."""
    entry = lookup(arch, eps_pt_255)
    expected, _ = pinned_sha256(entry, lock_path)
    checksum = Checksum("sha256", expected) if expected else None
    path = download(entry.url, dest, checksum=checksum, progress=progress)
    verify_weights(path, entry, lock_path)
    return path


# ---- conversion --------------------------------------------------------------------------------

# Globals a robustness checkpoint's tensors and bookkeeping legitimately need.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
}


class Unresolved:
    """Stands in for any global outside the allow-list: built from its arguments, never called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Unresolved:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder(module: str, name: str) -> type:
    return type(f"Unresolved[{module}.{name}]", (Unresolved,), {"qualname": f"{module}.{name}"})


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; every other global becomes an inert placeholder.

    The robustness library saved its checkpoints with ``dill``, so the optimizer / schedule entries
    may reference dill helpers or training-code classes that ``weights_only`` loading refuses. They
    are not needed (only ``model`` is kept) and must not be imported or called: a placeholder class
    records the reference instead, so no code from the file can run.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        return _placeholder(module, name)


def _restricted_pickle_module() -> types.ModuleType:
    module = types.ModuleType("autolora_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    module.__name__ = "autolora_restricted_pickle"
    return module


def load_checkpoint(src: str | os.PathLike) -> Any:
    """Open a checkpoint pickle as safely as its format allows.

    First ``torch.load(weights_only=True)`` (tensors and plain containers only). If the file
    references anything else (dill-written optimizer or schedule state), fall back to
    ``RestrictedUnpickler``, which resolves only tensor-rebuilding globals.
    """
    import torch

    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        log.info("%s: weights-only load refused (%s); using the restricted unpickler", src, error)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise DataError(f"{src}: not a readable PyTorch checkpoint ({error})") from None
    try:
        return torch.load(
            src, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module()
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as error:
        raise DataError(f"{src}: not a readable PyTorch checkpoint ({error})") from None


def torchvision_state(checkpoint: Any, src: str | os.PathLike) -> dict[str, Any]:
    """The ``module.model.*`` entries of a robustness checkpoint, prefix stripped (SPEC §1)."""
    import torch

    model_state = None
    if isinstance(checkpoint, Mapping):
        model_state = checkpoint.get("model", checkpoint.get("state_dict"))
    if not isinstance(model_state, Mapping):
        raise DataError(
            f"{src}: no 'model' or 'state_dict' entry; not a robustness-library checkpoint"
        )
    state = {
        key[len(STATE_PREFIX) :]: value
        for key, value in model_state.items()
        if key.startswith(STATE_PREFIX)
    }
    if not state:
        shown = ", ".join(list(model_state)[:5])
        raise DataError(f"{src}: no '{STATE_PREFIX}*' keys (found {shown}, ...)")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise DataError(f"{src}: entry {STATE_PREFIX}{bad[0]} is not a tensor")
    return state


def check_architecture(state: Mapping[str, Any], arch: str, src: str | os.PathLike) -> None:
    """Refuse a state dict that does not load into a torchvision ``arch`` (a mislabelled file)."""
    from autolora.models import build_model, load_backbone_state

    if arch not in ARCHS:
        raise ConfigError(f"arch {arch!r}: expected one of {', '.join(ARCHS)}")
    try:
        load_backbone_state(build_model(arch, 2), state)
    except DataError as error:
        raise DataError(f"{src}: {error}") from None


def save_backbone(
    state: Mapping[str, Any], out: str | os.PathLike, metadata: Mapping[str, Any]
) -> str:
    """Write a torchvision-named state dict as safetensors (atomically; ``metadata`` as one
    canonical-JSON entry, so the same weights always give the same bytes); returns its sha256."""
    from autolora.checkpoints import safetensors_bytes
    from autolora.files import write_bytes

    return write_bytes(out, safetensors_bytes(dict(state), dict(metadata)))


def write_backbone(
    state: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    arch: str,
    eps_pt_255: float,
    source: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Write a backbone (safetensors) and its record beside it; returns the record. Every
    consumer checks the backbone against the record's sha256 before using it. ``eps_pt_255`` is
    stored as a float, so that 4 and 4.0 give the same bytes."""
    eps_pt_255 = float(eps_pt_255)
    sha = save_backbone(
        state,
        out,
        {"format": "torchvision", "arch": arch, "eps_pt": eps_pt_255, "source": dict(source)},
    )
    record = BackboneRecord(
        arch=arch,
        eps_pt=eps_pt_255,
        source=dict(source),
        file=Path(out).name,
        sha256=sha,
        num_tensors=len(state),
        extra=extra,
    )
    return record.write(layout.backbone_record(out))


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str,
    eps_pt_255: float,
    expected_sha256: str | None = None,
    lock_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Convert a robustness-library checkpoint to ``out`` (safetensors) plus its JSON record.

    The source is checked before it is opened: against ``expected_sha256`` when given, and, for
    a catalogue checkpoint with a ``lock_path``, against its published or pinned sha256; one with
    neither is pinned in the lock file now (trust on first use), so every later conversion or
    training run checks against it. Returns the record.
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise DataError(
            f"{src}: checkpoint not found; download it with `autolora weights download`"
        )
    source_sha = sha256_file(src)
    if expected_sha256 and source_sha != expected_sha256.lower():
        raise ChecksumError(
            f"{src}: sha256 is {source_sha}, expected {expected_sha256}; the checkpoint is corrupt "
            "or not the published one: delete it and download it again"
        )
    entry = CATALOGUE.get((arch, float(eps_pt_255))) if arch in PUBLISHED_ARCHS else None
    checked_against = None
    if entry is not None and lock_path is not None and pinned_sha256(entry, lock_path)[0]:
        checked_against = check_pinned(source_sha, entry, lock_path, src)  # raises on a mismatch
    state = torchvision_state(load_checkpoint(src), src)
    check_architecture(state, arch, src)
    source: dict[str, Any] = {"file": src.name, "sha256": source_sha}
    if entry is not None:
        source["catalogue_file"] = entry.file
        if lock_path is not None:  # an unpinned file is pinned now that it converted
            source["checked_against"] = checked_against or check_pinned(
                source_sha, entry, lock_path, src
            )
    return write_backbone(state, out, arch=arch, eps_pt_255=eps_pt_255, source=source)


def verify_backbone(
    data: bytes,
    path: str | os.PathLike,
    *,
    arch: str,
    eps_pt_255: float,
    lock_path: str | os.PathLike = DEFAULT_LOCK,
) -> list[dict[str, Any]]:
    """Check a backbone's bytes against the record beside it (sha256, arch, ε_pt) and, for a
    converted catalogue checkpoint, the record's source hash against the published or pinned one.
    Returns what was verified, for the run record."""
    path = Path(path)
    record_file = layout.backbone_record(path)
    rebuild = (
        "convert it again with `autolora weights convert` (or `autolora pretrain` for the tiny "
        "backbone), or rerun the workflow's weights rule"
    )
    if not record_file.is_file():
        raise DataError(f"backbone {path} has no record {record_file} beside it; {rebuild}")
    record_bytes = record_file.read_bytes()
    record = BackboneRecord.parse(record_bytes, record_file, rebuild)
    if record.arch != arch or float(record.eps_pt) != float(eps_pt_255):
        raise ConfigError(
            f"{path} holds {record.arch} weights pre-trained at eps_pt "
            f"{record.eps_pt} ({record_file}), but the cell asks for {arch} at eps_pt "
            f"{eps_pt_255:g}: pass the cell's backbone, e.g. "
            f"{layout.backbone('resources', arch, format(eps_pt_255, 'g'))}"
        )
    actual = sha256_bytes(data)
    if actual != record.sha256:
        raise ChecksumError(
            f"{path}: sha256 {actual} differs from {record.sha256} recorded in "
            f"{record_file}: the file changed after it was written; {rebuild}"
        )
    verified = [
        {"path": path, "sha256": actual, "checked_against": str(record_file)},
        {"path": record_file, "sha256": sha256_bytes(record_bytes), "checked_against": None},
    ]
    entry = CATALOGUE.get((arch, float(eps_pt_255))) if arch in PUBLISHED_ARCHS else None
    if entry is not None:
        source_sha = (record.source or {}).get("sha256")
        expected, origin = pinned_sha256(entry, lock_path)
        if expected is None:
            raise ChecksumError(
                f"{record_file}: its source {entry.file} (sha256 {source_sha}) is neither "
                f"published nor pinned in {lock_path}: run `autolora weights verify --arch {arch} "
                f"--eps {eps_pt_255:g} --file <the .ckpt>` to pin it, or pass the lock file that does"
            )
        if source_sha != expected:
            raise ChecksumError(
                f"{record_file}: its source {entry.file} has sha256 {source_sha}, expected "
                f"{expected} ({origin}): {path} was converted from another file; download the "
                f"checkpoint again and {rebuild}"
            )
        verified.append(
            {"path": entry.file, "sha256": source_sha, "checked_against": origin, "source": True}
        )
    return verified


def load_verified_backbone(
    path: str | os.PathLike,
    *,
    arch: str,
    eps_pt_255: float,
    lock_path: str | os.PathLike = DEFAULT_LOCK,
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """A backbone's tensors, read once and checked (:func:`verify_backbone`) before they are
    parsed; the list of what was verified; the seconds the verification took."""
    import time

    from autolora.checkpoints import tensors_from_bytes

    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist: convert or download it")
    data = path.read_bytes()
    started = time.monotonic()
    verified = verify_backbone(data, path, arch=arch, eps_pt_255=eps_pt_255, lock_path=lock_path)
    seconds = time.monotonic() - started
    state = tensors_from_bytes(data, path, "convert or pre-train it again")
    return state, verified, seconds
