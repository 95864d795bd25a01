"""A cell: one training run's identity, its id/path, and its fully resolved hyper-parameters.

``resolve_cell(spec)`` turns what the workflow's grid produces for one cell into a frozen
``CellConfig``: defaults from SPEC §4 and Table 7 (§6), the protocol bundle (§7), the ablation
variant, then the spec's ``overrides``. Torch-free: the workflow imports this module.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autolora.errors import ConfigError, reject_unknown
from autolora.files import as_json_data
from autolora.planning import layout
from autolora.planning.protocol import (
    METHOD_PROTOCOL_CHOICES,
    PROTOCOL_CHOICES,
    PROTOCOLS,
    protocol_choices,
)
from autolora.planning.vocabulary import (
    ARCHS,
    AUTOLORA,
    AUTOLORA_HYPER,
    BASELINES,
    DATASET_NAME_PATTERN,
    DEFAULT_ALPHA,
    DEFAULT_LORA_RANK,
    GRAD_SIMILARITY_METHODS,
    HYPER_KEYS,
    METHODS,
    PRETRAINED_HERE_ARCHS,
    PUBLISHED_EPS_PT_255,
    TABLE7,
    TWINS,
    canonical_variant,
    format_number,
    parse_variant,
    plain_number,
)

IDENTITY_KEYS = ("protocol", "arch", "eps_pt", "dataset", "method", "variant", "seed")
SPEC_KEYS = (*IDENTITY_KEYS, "overrides", "hyper")
SPEC_DEFAULTS = {"protocol": "paper", "arch": "resnet18", "eps_pt": 4, "variant": None, "seed": 0}
GROUPS = ("attack", "autolr", "autoattack", "runtime")
# Protocol choices a training run does not read: the checkpoint selection is the evaluation's
# (training writes every checkpoint), so the run record names none.
NOT_READ_BY_TRAINING = ("selection",)

# Settings only one method reads; for the others they resolve to None and may not be overridden.
METHOD_ONLY: dict[str, tuple[str, ...]] = {
    "beta": BASELINES,
    "twins_gamma": (TWINS,),
    "lora_rank": (AUTOLORA,),
    "alpha": (AUTOLORA,),
    "lambda_scale": (AUTOLORA,),
}


@dataclass(frozen=True)
class AttackConfig:
    eps: float
    step: float
    train_steps: int = 10
    eval_steps: int = 10


@dataclass(frozen=True)
class AutoLRConfig:
    initial_lr: float = 0.01
    checkpoints: tuple[int, ...] = tuple(range(0, 57, 4))
    rho: float = 0.75
    min_lr: float = 1e-5
    decay: float = 0.5


@dataclass(frozen=True)
class AutoAttackConfig:
    enabled: bool = True
    n: int | None = None  # None: the whole test set
    batch_size: int = 250


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"
    num_workers: int = 0
    deterministic: bool = False
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    gpu_augment: bool = False


@dataclass(frozen=True)
class CellIdentity:
    """What a cell is: the protocol, the backbone and its pre-training ε (/255), the dataset, the
    method (and its ablation variant) and the seed. Its id is its folder under the results root
    (``autolora.planning.layout.cell_id``)."""

    protocol: str
    arch: str
    eps_pt: float
    dataset: str
    method: str
    variant: str | None
    seed: int

    @property
    def cell_id(self) -> str:
        return layout.cell_id(
            self.protocol,
            self.arch,
            self.eps_pt,
            self.dataset,
            self.method,
            self.variant,
            self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The identity as records and specs hold it (``IDENTITY_KEYS``)."""
        return {key: getattr(self, key) for key in IDENTITY_KEYS}


@dataclass(frozen=True)
class CellConfig(CellIdentity):
    """A cell's identity and every setting of its run, resolved (``resolve_cell``)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float
    lr_schedule: str
    milestones: tuple[int, ...]
    lr_factor: float
    autolr: AutoLRConfig
    beta: float | None
    twins_gamma: float | None
    lora_rank: int | None
    alpha: float | None
    lambda_scale: float | None
    attack: AttackConfig
    split_scheme: str
    selection: str
    kl_divisor: str
    test_each_epoch: bool
    lora_blocks: str | None  # "last" | "all" for AutoLoRa (SPEC 4.3), None for the other methods
    twins_gamma_on: str | None  # "fixed" | "adaptive" for TWINS (SPEC 4.2), None otherwise
    grad_similarity_batches: int
    autoattack: AutoAttackConfig = field(default_factory=AutoAttackConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def identity(self) -> CellIdentity:
        return CellIdentity(**{key: getattr(self, key) for key in IDENTITY_KEYS})

    @property
    def kl_divisor_value(self) -> int | None:
        """The KL divisor for ``MethodSettings``: the configured batch size, or None (actual)."""
        return self.batch_size if self.kl_divisor == "configured" else None

    def resolved_choices(self) -> dict[str, Any]:
        """Every protocol choice as resolved for this cell (overrides included; None where the
        cell's method or its training does not read the choice: ``NOT_READ_BY_TRAINING``): the
        run record's ``protocol.choices``."""
        attack = {"eps": self.attack.eps, "step": self.attack.step}
        return {
            name: attack[name] if name in attack else getattr(self, name)
            for name in PROTOCOL_CHOICES
            if name not in NOT_READ_BY_TRAINING
        } | dict.fromkeys(NOT_READ_BY_TRAINING)

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as the run record holds it: ``cell_id`` and every field."""
        return as_json_data({"cell_id": self.cell_id, **dataclasses.asdict(self)})

    def with_runtime(self, runtime: Mapping[str, Any] | None) -> CellConfig:
        """This config with the settings of ``runtime`` (checked by :func:`runtime_values`)
        replacing those of its ``runtime`` group; the others are kept."""
        if not runtime:
            return self
        return dataclasses.replace(
            self, runtime=dataclasses.replace(self.runtime, **runtime_values(runtime))
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellConfig:
        """Rebuild a config written by ``to_dict`` (validating every value again)."""
        expected = {"cell_id", *(f.name for f in dataclasses.fields(cls))}
        reject_unknown(data, sorted(expected))
        missing = sorted(expected - set(data))
        if missing:
            raise ConfigError(f"resolved cell config lacks key {missing[0]!r}; re-resolve the cell")
        identity = _validate_identity({key: data[key] for key in IDENTITY_KEYS})
        flat = _flatten({k: v for k, v in data.items() if k not in (*IDENTITY_KEYS, "cell_id")})
        values = {key: _check_value(key, value, key) for key, value in flat.items()}
        reject_unknown(values, sorted(VALIDATORS))
        _cross_checks(values, identity["method"])
        config = _build(identity, values)
        if data["cell_id"] != config.cell_id:
            raise ConfigError(
                f"cell_id {data['cell_id']!r} does not match the identity ({config.cell_id!r})"
            )
        return config


# ---- value checks ------------------------------------------------------------------------------


def _invalid(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"invalid value {value!r} for '{key}'; allowed: {allowed}")


def _as_float(key: str, value: Any, allowed: str) -> float:
    # PyYAML reads `1e-4` (no dot) as a string, so numeric strings are accepted for float fields.
    if isinstance(value, bool):
        raise _invalid(key, value, allowed)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _invalid(key, value, allowed) from None
    if not math.isfinite(number):
        raise _invalid(key, value, allowed)
    return number


def _float(low: float | None = None, high: float | None = None, *, low_open=False, high_open=False):
    parts = []
    if low is not None:
        parts.append(f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        parts.append(f"< {high:g}" if high_open else f"<= {high:g}")
    allowed = "a number " + " and ".join(parts) if parts else "a number"

    def check(key: str, value: Any) -> float:
        number = _as_float(key, value, allowed)
        if low is not None and (number < low or (low_open and number == low)):
            raise _invalid(key, value, allowed)
        if high is not None and (number > high or (high_open and number == high)):
            raise _invalid(key, value, allowed)
        return number

    return check


def _int(low: int, *, optional: bool = False):
    allowed = f"an integer >= {low}" + (" or null" if optional else "")

    def check(key: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _invalid(key, value, allowed)
        return int(value)

    return check


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    allowed = "a strictly increasing list of integers >= 0"
    if not isinstance(value, list | tuple) or not value:
        raise _invalid(key, value, allowed)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise _invalid(key, value, allowed)
    if any(b <= a for a, b in zip(value, value[1:], strict=False)):
        raise _invalid(key, value, allowed)
    return tuple(int(v) for v in value)


def _choice(*options: str):
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise _invalid(key, value, ", ".join(options))
        return value

    return check


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(key, value, "true, false")
    return value


def _device(key: str, value: Any) -> str:
    allowed = "auto, cpu, cuda, cuda:<index>, mps"
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise _invalid(key, value, allowed)
    return value


def _optional(check: Callable[[str, Any], Any]):
    def optional_check(key: str, value: Any) -> Any:
        return None if value is None else check(key, value)

    return optional_check


# Every overridable setting (dotted names for the nested groups) and its check.
VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "epochs": _int(1),
    "batch_size": _int(2),
    "lr": _float(0, low_open=True),
    "weight_decay": _float(0),
    "momentum": _float(0, 1, high_open=True),
    "lr_schedule": _choice("multistep", "autolr"),
    "milestones": _int_list,
    "lr_factor": _float(0, 1, low_open=True),
    "autolr.initial_lr": _float(0, low_open=True),
    "autolr.checkpoints": _int_list,
    "autolr.rho": _float(0, 1, low_open=True),
    "autolr.min_lr": _float(0),
    "autolr.decay": _float(0, 1, low_open=True, high_open=True),
    "beta": _optional(_float(0)),
    "twins_gamma": _optional(_float(0)),
    "lora_rank": _int(1, optional=True),
    "alpha": _optional(_float(0, low_open=True)),
    "lambda_scale": _optional(_float(0)),
    "attack.eps": _float(0),
    "attack.step": _float(0),
    "attack.train_steps": _int(0),
    "attack.eval_steps": _int(0),
    "split_scheme": _choice("paper", "clean"),
    "selection": _choice("best_test", "best_val"),
    "kl_divisor": _choice("configured", "actual"),
    "test_each_epoch": _bool,
    "lora_blocks": _optional(_choice("last", "all")),
    "twins_gamma_on": _optional(_choice("fixed", "adaptive")),
    "grad_similarity_batches": _int(0),
    "autoattack.enabled": _bool,
    "autoattack.n": _int(1, optional=True),
    "autoattack.batch_size": _int(1),
    "runtime.device": _device,
    "runtime.num_workers": _int(0),
    "runtime.deterministic": _bool,
    "runtime.channels_last": _bool,
    "runtime.bf16": _bool,
    "runtime.compile": _bool,
    "runtime.cudnn_benchmark": _bool,
    "runtime.gpu_augment": _bool,
}


def runtime_values(runtime: Any, where: str = "runtime") -> dict[str, Any]:
    """A ``runtime`` mapping (device, workers, fast paths, ...) checked key by key. The runtime
    says how a cell is computed, not what it is: it is given to a job apart from the cell's spec,
    so that changing it reruns nothing (``autolora train --runtime``)."""
    if not isinstance(runtime, Mapping):
        raise _invalid(where, runtime, "a mapping of runtime settings (device, num_workers, ...)")
    names = {item.name for item in dataclasses.fields(RuntimeConfig)}
    reject_unknown(runtime, sorted(names), f"{where}.")
    return {key: VALIDATORS[f"runtime.{key}"](f"{where}.{key}", v) for key, v in runtime.items()}


def _check_value(name: str, value: Any, shown_key: str) -> Any:
    if name not in VALIDATORS:
        return value  # reported as unknown by the caller, with the allowed list
    return VALIDATORS[name](shown_key, value)


# ---- identity, id and path ---------------------------------------------------------------------


def _validate_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    protocol = _choice(*PROTOCOLS)("protocol", identity["protocol"])
    arch = _choice(*ARCHS)("arch", identity["arch"])
    method = _choice(*METHODS)("method", identity["method"])
    dataset = identity["dataset"]
    if not isinstance(dataset, str) or not re.fullmatch(DATASET_NAME_PATTERN, dataset):
        raise _invalid("dataset", dataset, "a name of letters, digits, '_', '.', '-'")
    eps_allowed = ", ".join(format_number(e) for e in PUBLISHED_EPS_PT_255)
    if arch in PRETRAINED_HERE_ARCHS:
        eps_pt = _float(0)("eps_pt", identity["eps_pt"])
    else:
        eps_pt = _as_float("eps_pt", identity["eps_pt"], eps_allowed)
        if eps_pt not in PUBLISHED_EPS_PT_255:
            raise _invalid("eps_pt", identity["eps_pt"], eps_allowed)
    return {
        "protocol": protocol,
        "arch": arch,
        "eps_pt": plain_number(eps_pt),
        "dataset": dataset,
        "method": method,
        "variant": canonical_variant(identity["variant"], method),
        "seed": _int(0)("seed", identity["seed"]),
    }


def cell_id(identity: Mapping[str, Any] | CellIdentity | CellConfig) -> str:
    """``<protocol>/runs/<arch>-eps<eps_pt>/<dataset>/<method>[-<variant>]/seed<seed>``."""
    if not isinstance(identity, CellIdentity):
        values = {key: identity[key] for key in IDENTITY_KEYS if key != "variant"}
        identity = CellIdentity(**values, variant=identity.get("variant"))
    return identity.cell_id


# ---- resolution --------------------------------------------------------------------------------


def _defaults(identity: Mapping[str, Any]) -> dict[str, Any]:
    choices = protocol_choices(identity["protocol"])
    method = identity["method"]
    values: dict[str, Any] = {
        "epochs": 60,
        "batch_size": 128,
        "momentum": 0.9,
        "lr_schedule": "autolr" if method == AUTOLORA else "multistep",
        "milestones": (30, 50),
        "lr_factor": 0.1,
        "beta": 6.0,
        "twins_gamma": 1.0,
        "lora_rank": DEFAULT_LORA_RANK,
        "alpha": DEFAULT_ALPHA,
        "lambda_scale": 6.0,
        "attack.eps": choices["eps"],
        "attack.step": choices["step"],
        "attack.train_steps": 10,
        "attack.eval_steps": 10,
        "split_scheme": choices["split_scheme"],
        "selection": choices["selection"],
        "kl_divisor": choices["kl_divisor"],
        "test_each_epoch": choices["test_each_epoch"],
        "grad_similarity_batches": 0,
    }
    for name, methods in METHOD_PROTOCOL_CHOICES.items():
        values[name] = choices[name] if method in methods else None
    for group, cls in (
        ("autolr", AutoLRConfig),
        ("autoattack", AutoAttackConfig),
        ("runtime", RuntimeConfig),
    ):
        for item in dataclasses.fields(cls):
            values[f"{group}.{item.name}"] = item.default
    for name, methods in METHOD_ONLY.items():
        if method not in methods:
            values[name] = None
    return values


def _method_hyper(identity: Mapping[str, Any], hyper: Any) -> dict[str, float]:
    """lr, weight_decay (, twins_gamma) of the cell's method: Table 7, AutoLoRa's, or `hyper`."""
    method, dataset = identity["method"], identity["dataset"]
    where = f"datasets.{dataset}.hyper.{method}"
    if hyper is not None and not isinstance(hyper, Mapping):
        raise _invalid("hyper", hyper, f"a mapping like {{lr: ..., weight_decay: ...}} ({where})")
    hyper = dict(hyper or {})
    if set(hyper) & set(METHODS):  # per-method form {vanilla: {...}, twins: {...}}
        reject_unknown(hyper, sorted(METHODS), "hyper.")
        hyper = hyper.get(method) or {}
        if not isinstance(hyper, Mapping):
            raise _invalid(where, hyper, "a mapping like {lr: ..., weight_decay: ...}")
    keys = HYPER_KEYS[method]
    reject_unknown(hyper, sorted(keys), f"{where}.")
    if method == AUTOLORA:
        base = dict(AUTOLORA_HYPER)
    elif dataset in TABLE7[method]:
        base = dict(TABLE7[method][dataset])
    else:
        missing = [key for key in keys if key not in hyper]
        if missing:
            raise ConfigError(
                f"dataset {dataset!r} has no Table 7 hyper-parameters for {method}: set "
                f"'{where}.{missing[0]}' (needed: {', '.join(keys)})"
            )
        base = {}
    base.update(hyper)
    return {key: VALIDATORS[key](f"{where}.{key}", value) for key, value in base.items()}


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"unknown key '{prefix}{key!r}'; keys must be text")
        if key in GROUPS and isinstance(value, Mapping):
            for inner, inner_value in value.items():
                flat[f"{key}.{inner}"] = inner_value
        else:
            flat[key] = value
    return flat


def _apply_overrides(
    values: dict[str, Any], identity: Mapping[str, Any], overrides: Any, variant_key: str | None
) -> set[str]:
    if not isinstance(overrides, Mapping):
        raise _invalid("overrides", overrides, "a mapping of setting names to values")
    flat = _flatten(overrides)
    for key, value in flat.items():
        shown = f"overrides.{key}"
        if key in IDENTITY_KEYS or key == "cell_id":
            raise ConfigError(f"'{shown}' is part of the cell identity; set '{key}' in the spec")
        reject_unknown({key: value}, sorted(VALIDATORS), "overrides.")
        readers = METHOD_PROTOCOL_CHOICES.get(key, METHODS)
        if identity["method"] not in readers:
            VALIDATORS[key](shown, value)  # checked, but this method does not read it: stays None
            continue
        if key in METHOD_PROTOCOL_CHOICES and value is None:
            raise _invalid(shown, value, "a value (this method needs it)")
        methods = METHOD_ONLY.get(key)
        if methods and identity["method"] not in methods and value is not None:
            raise ConfigError(
                f"'{shown}' applies only to method {' / '.join(methods)}, "
                f"not {identity['method']!r}; remove it from this cell's overrides"
            )
        if key == variant_key and value != values[key]:
            raise ConfigError(
                f"'{shown}' = {value!r} conflicts with variant {identity['variant']!r}; "
                "use the variant or the override, not both"
            )
        values[key] = VALIDATORS[key](shown, value)
        if methods and identity["method"] in methods and values[key] is None:
            raise _invalid(shown, value, "a value (this method needs it)")
    return set(flat)


def _reconcile_autolr_lr(values: dict[str, Any], overridden: set[str]) -> None:
    """Under the automated scheduler the initial LR is ``autolr.initial_lr``; keep ``lr`` equal."""
    if values["lr_schedule"] != "autolr":
        return
    if "lr" in overridden and "autolr.initial_lr" in overridden:
        if values["lr"] != values["autolr.initial_lr"]:
            raise ConfigError(
                "'overrides.lr' and 'overrides.autolr.initial_lr' differ under lr_schedule autolr; "
                "set only one of them"
            )
    elif "lr" in overridden:
        values["autolr.initial_lr"] = values["lr"]
    else:
        values["lr"] = values["autolr.initial_lr"]


def _cross_checks(values: Mapping[str, Any], method: str) -> None:
    for name, readers in METHOD_PROTOCOL_CHOICES.items():
        if (values[name] is None) == (method in readers):
            needed = "a value" if method in readers else "null"
            raise ConfigError(
                f"invalid value {values[name]!r} for '{name}' of method {method!r}; allowed: "
                f"{needed} ({name} is read by {' / '.join(readers)} only); re-resolve the cell"
            )
    if values["grad_similarity_batches"] and method not in GRAD_SIMILARITY_METHODS:
        raise ConfigError(
            f"'overrides.grad_similarity_batches' applies only to method "
            f"{' / '.join(GRAD_SIMILARITY_METHODS)}, not {method!r}; remove it or set 0"
        )


def _build(identity: Mapping[str, Any], values: Mapping[str, Any]) -> CellConfig:
    groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    top: dict[str, Any] = {}
    for key, value in values.items():
        group, _, name = key.partition(".")
        if name:
            groups[group][name] = value
        else:
            top[key] = value
    return CellConfig(
        **identity,
        **top,
        attack=AttackConfig(**groups["attack"]),
        autolr=AutoLRConfig(**groups["autolr"]),
        autoattack=AutoAttackConfig(**groups["autoattack"]),
        runtime=RuntimeConfig(**groups["runtime"]),
    )


def resolve_cell(spec: Mapping[str, Any]) -> CellConfig:
    """Fill every setting of one cell from SPEC defaults, the protocol, the variant and overrides.

    ``spec`` keys: protocol (paper), arch (resnet18), eps_pt (4), dataset, method, variant (null),
    seed (0), overrides ({}), hyper (needed for datasets outside Table 7: ``{lr, weight_decay
    [, twins_gamma]}`` for this method, or the per-method form ``{vanilla: {...}, twins: {...}}``).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a cell spec must be a mapping, got {type(spec).__name__}")
    reject_unknown(spec, sorted(SPEC_KEYS))
    for key in ("dataset", "method"):
        if key not in spec:
            raise ConfigError(f"cell spec lacks key '{key}'")
    identity = _validate_identity(
        {key: spec.get(key, SPEC_DEFAULTS.get(key)) for key in IDENTITY_KEYS}
    )
    values = _defaults(identity)
    for key, value in _method_hyper(identity, spec.get("hyper")).items():
        values[key] = value
    variant = parse_variant(identity["variant"], identity["method"])
    variant_key = None
    if variant is not None:
        variant_key, values[variant_key] = variant
    overridden = _apply_overrides(values, identity, spec.get("overrides") or {}, variant_key)
    _reconcile_autolr_lr(values, overridden)
    _cross_checks(values, identity["method"])
    # The selection is the evaluation's (it picks a checkpoint; training writes them all), so a
    # train job's spec does not carry it: only a chosen one is checked against the checkpoints.
    chosen = "selection" in overridden
    if chosen and values["selection"] == "best_test" and not values["test_each_epoch"]:
        raise ConfigError(
            "selection 'best_test' needs test_each_epoch: true; set one of "
            "'overrides.selection' = best_val or 'overrides.test_each_epoch' = true"
        )
    return _build(identity, values)
