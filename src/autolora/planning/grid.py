"""The workflow's grid: which cells the configured tables need, and which table entry each fills.

``load_config`` reads and checks a workflow configuration (docs/internals.md, "The workflow
configuration and the grid"); ``expand_grid`` turns it into the unique cells (a cell needed by
several tables appears once) and one ``TableEntry`` per (table, cell). Torch-free: Snakemake
imports this module while it builds the DAG.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autolora.autoattack_variants import configured_variant
from autolora.errors import ConfigError, reject_unknown
from autolora.planning.cells import CellIdentity, resolve_cell
from autolora.planning.protocol import protocol_choices
from autolora.planning.vocabulary import (
    AUTOLORA,
    AUTOLR,
    DATASET_SOURCES,
    GRAD_SIMILARITY_METHODS,
    METHODS,
    PRETRAINED_HERE_ARCHS,
    PUBLISHED_ARCHS,
    SYNTHETIC,
    TWINS,
    alpha_variant,
    plain_number,
    rank_variant,
)

MAIN_TABLES = ("table1", "table2")
WEIGHTS_SOURCES = ("download", "pretrain")  # the published backbones, or the tiny one trained here
# The paper reports AutoAttack only in Tables 1 and 2 (and Table 8's p-values over them); the
# ablation cells of Tables 3-6 report SA and PGD-10, so AutoAttack is skipped there by default.
AUTOATTACK_TABLES = MAIN_TABLES
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "table1": ("arch", "eps_pt", "datasets", "methods"),
    "table2": ("arch", "eps_pt", "datasets", "methods"),
    "table3": ("arch", "eps_pt", "datasets", "ranks"),
    "table4": ("arch", "eps_pt", "datasets", "methods"),
    "table5": ("arch", "eps_pt", "datasets"),
    "table6": ("arch", "eps_pt", "datasets", "alphas"),
    "table8": ("tables",),
    "figures": ("arch", "eps_pt", "datasets", "methods", "grad_similarity_batches"),
}
TABLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "table1": {"arch": "resnet18", "eps_pt": 4, "methods": list(METHODS)},
    "table2": {"arch": "resnet50", "eps_pt": 4, "methods": list(METHODS)},
    "table3": {"arch": "resnet18", "eps_pt": 4, "ranks": [2, 4, 8, 16]},
    "table4": {"arch": "resnet18", "eps_pt": [0, 1, 2, 4, 8], "methods": list(METHODS)},
    "table5": {"arch": "resnet18", "eps_pt": 4},
    "table6": {"arch": "resnet18", "eps_pt": 4, "alphas": [0.2, 0.5, 0.8, 1, 2, 3, 5]},
    "table8": {"tables": list(MAIN_TABLES)},
    "figures": {
        "arch": "resnet18",
        "eps_pt": 4,
        "methods": list(METHODS),
        "grad_similarity_batches": 10,
    },
}
# Settings of `training` that do not define a cell's training result, kept out of its identity
# (the train job's spec, a Snakemake param whose change retrains the cell): the runtime (device,
# workers, fast paths, determinism) says how it is computed and reaches the job apart from the
# spec; AutoAttack's settings are read by the evaluation only, whose options they become; the
# selection picks which of the checkpoints every run writes is evaluated (the evaluate job's
# checkpoint wildcard).
RUNTIME_KEY = "runtime"
EVALUATION_ONLY_KEYS = ("autoattack", "selection")
# Top-level keys that change no number of any table: the cost model (time limits, memory).
UNUSED_BY_RESULTS = ("cost",)
FOLDER_KEYS = ("results", "resources")
TOP_KEYS = (
    "protocol",
    "seeds",
    "results",
    "resources",
    "datasets",
    "weights",
    "training",
    "evaluation",
    "tables",
    "cost",
)


@dataclass(frozen=True)
class TableEntry(CellIdentity):
    """One cell's place in one table: its identity, the table, and ``factor``, the table's varied
    value: the LoRa rank (table3), ε_pt (table4), whether the automated LR is on (table5, a
    bool), α (table6), or None."""

    table: str
    factor: Any = None


@dataclass(frozen=True)
class Grid:
    cells: dict[str, dict[str, Any]]
    entries: list[TableEntry]

    def cells_of(self, table: str) -> list[str]:
        """The unique cell ids one table uses, in entry order."""
        return list(dict.fromkeys(e.cell_id for e in self.entries if e.table == table))

    def autoattack_cells(self, config: Mapping[str, Any]) -> set[str]:
        """The cells whose evaluation includes AutoAttack: those of a table in
        ``evaluation.autoattack_tables`` (default: Tables 1 and 2, the only ones that report
        AA), with a seed in ``evaluation.autoattack_seeds`` and a dataset in
        ``evaluation.autoattack_datasets`` (default: every seed, every dataset)."""
        evaluation = config.get("evaluation") or {}
        if not evaluation.get("autoattack", True):
            return set()
        tables = evaluation.get("autoattack_tables") or AUTOATTACK_TABLES
        seeds = evaluation.get("autoattack_seeds")
        datasets = evaluation.get("autoattack_datasets")
        return {
            e.cell_id
            for e in self.entries
            if e.table in tables
            and (seeds is None or e.seed in seeds)
            and (datasets is None or e.dataset in datasets)
        }

    def autoattack_skip_reasons(self, config: Mapping[str, Any]) -> dict[str, str]:
        """Why each cell outside ``autoattack_cells`` gets no AutoAttack: the config keys and
        values that exclude it (e.g. "`evaluation.autoattack_seeds` = [0]"), for footnotes."""
        evaluation = config.get("evaluation") or {}
        if not evaluation.get("autoattack", True):
            return {cell: "`evaluation.autoattack` = false" for cell in self.cells}
        tables = evaluation.get("autoattack_tables") or AUTOATTACK_TABLES
        default = "" if evaluation.get("autoattack_tables") else " (default)"
        seeds = evaluation.get("autoattack_seeds")
        datasets = evaluation.get("autoattack_datasets")
        tables_of: dict[str, set[str]] = {}
        for e in self.entries:
            tables_of.setdefault(e.cell_id, set()).add(e.table)
        included = self.autoattack_cells(config)
        reasons: dict[str, str] = {}
        for key, spec in self.cells.items():
            if key in included:
                continue
            if not tables_of.get(key, set()) & set(tables):
                reasons[key] = f"`evaluation.autoattack_tables` = {_flow_list(tables)}{default}"
                continue
            excluded_by = []
            if seeds is not None and spec["seed"] not in seeds:
                excluded_by.append(f"`evaluation.autoattack_seeds` = {_flow_list(seeds)}")
            if datasets is not None and spec["dataset"] not in datasets:
                excluded_by.append(f"`evaluation.autoattack_datasets` = {_flow_list(datasets)}")
            reasons[key] = " and ".join(excluded_by)
        return reasons

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(e.table for e in self.entries))

    @property
    def datasets(self) -> list[str]:
        return sorted({spec["dataset"] for spec in self.cells.values()})

    @property
    def weights(self) -> list[tuple[str, float]]:
        """The (arch, ε_pt) pairs of the backbones the cells start from."""
        return sorted({(spec["arch"], spec["eps_pt"]) for spec in self.cells.values()})


def _flow_list(values: Iterable[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


# ---- loading and checking ----------------------------------------------------------------------


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a workflow configuration file and check it (``check_config``)."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    return check_config(config)


def check_config(config: Any) -> dict[str, Any]:
    """Checks the JSON schema cannot express: every table's datasets are declared, weights
    sources match the backbones, table names exist. Returns the config unchanged."""
    if not isinstance(config, Mapping):
        raise ConfigError("the workflow config must be a mapping of keys (protocol, tables, ...)")
    reject_unknown(config, TOP_KEYS, "")
    protocol_choices(config.get("protocol", "paper"))  # raises on an unknown protocol
    seeds(config)
    tables = config.get("tables") or {}
    if not isinstance(tables, Mapping):
        raise ConfigError("'tables' must be a mapping of table names (table1, ...) to settings")
    reject_unknown(tables, TABLE_KEYS, "tables.")
    datasets = config.get("datasets") or {}
    for name, table in tables.items():
        reject_unknown(table or {}, TABLE_KEYS[name], f"tables.{name}.")
        for method in (table or {}).get("methods", []):
            if method not in METHODS:
                raise ConfigError(
                    f"'tables.{name}.methods' names {method!r}; allowed: {', '.join(METHODS)}"
                )
        for dataset in (table or {}).get("datasets", []):
            if dataset not in datasets:
                raise ConfigError(
                    f"'tables.{name}.datasets' names {dataset!r}, which 'datasets' does not "
                    f"declare; add 'datasets.{dataset}' or remove it from the table"
                )
    for referenced in (tables.get("table8") or {}).get("tables", []):
        if referenced not in MAIN_TABLES:
            raise ConfigError(
                f"'tables.table8.tables' names {referenced!r}; allowed: {', '.join(MAIN_TABLES)}"
            )
        if referenced not in tables:
            raise ConfigError(
                f"'tables.table8.tables' names {referenced!r}, which 'tables' does not configure"
            )
    for name, dataset in datasets.items():
        _check_dataset(name, dataset)
    if reported_checkpoint(config) not in train_checkpoints(config):
        raise ConfigError(
            f"the reported checkpoint {reported_checkpoint(config)!r} (training.selection or the "
            "protocol's) needs training.test_each_epoch: true; set training.selection: best_val "
            "or training.test_each_epoch: true"
        )
    evaluation = config.get("evaluation") or {}
    reject_unknown(
        evaluation,
        (
            "autoattack",
            "autoattack_version",
            "n",
            "autoattack_seeds",
            "autoattack_tables",
            "autoattack_datasets",
        ),
        "evaluation.",
    )
    configured_variant(config)  # raises on an unknown variant
    unknown_datasets = set(evaluation.get("autoattack_datasets") or []) - set(datasets)
    if unknown_datasets:
        raise ConfigError(
            f"'evaluation.autoattack_datasets' names {sorted(unknown_datasets)}, which 'datasets' "
            "does not declare; use declared datasets or null (every dataset)"
        )
    for table in evaluation.get("autoattack_tables") or []:
        if table not in TABLE_KEYS:
            raise ConfigError(
                f"'evaluation.autoattack_tables' names {table!r}; allowed: {', '.join(TABLE_KEYS)}"
            )
    unknown_seeds = set(evaluation.get("autoattack_seeds") or []) - set(seeds(config))
    if unknown_seeds:
        raise ConfigError(
            f"'evaluation.autoattack_seeds' names seeds {sorted(unknown_seeds)} that 'seeds' "
            "does not list; use configured seeds or null (every seed)"
        )
    _check_weights(config, tables)
    for key in FOLDER_KEYS:
        _check_folder(key, config.get(key, key))
    return dict(config)


def _check_folder(key: str, value: Any) -> None:
    """An output root must name a folder below the working directory or elsewhere, not the file
    system's root: '' would put every output at /<protocol>/..."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{key}' must name a folder (e.g. {key}), got {value!r}")
    if value.startswith("/") and not os.path.normpath(value).lstrip("/"):
        raise ConfigError(f"'{key}' is {value!r}, the file system's root: name a folder below it")


def _check_dataset(name: str, dataset: Any) -> None:
    if not isinstance(dataset, Mapping) or "source" not in dataset:
        raise ConfigError(f"'datasets.{name}' needs a 'source' (a SPEC dataset key or synthetic)")
    hyper = dataset.get("hyper")
    if _per_method(hyper):
        reject_unknown(hyper, METHODS, f"datasets.{name}.hyper.")
    if dataset["source"] not in DATASET_SOURCES:
        raise ConfigError(
            f"invalid 'datasets.{name}.source' {dataset['source']!r}; allowed: "
            f"{', '.join(DATASET_SOURCES)}"
        )
    if dataset["source"] == SYNTHETIC:
        for key in ("num_classes", "train", "test", "image_size", "seed"):
            if key not in dataset:
                raise ConfigError(f"synthetic dataset 'datasets.{name}' lacks '{key}'; add it")
    elif dataset["source"] != name:
        raise ConfigError(
            f"'datasets.{name}.source' is {dataset['source']!r}; a real dataset's key must equal "
            f"its source (e.g. 'datasets.cifar10: {{source: cifar10}}') or use 'synthetic'"
        )


def _check_weights(config: Mapping[str, Any], tables: Mapping[str, Any]) -> None:
    source = weights_source(config)
    allowed = PRETRAINED_HERE_ARCHS if source == "pretrain" else PUBLISHED_ARCHS
    for name, table in tables.items():
        arch = _table_setting(name, table or {}, "arch")
        if arch is not None and arch not in allowed:
            raise ConfigError(
                f"'tables.{name}.arch' is {arch!r} but 'weights.source' is {source!r}, which "
                f"provides {', '.join(allowed)}; change one of them"
            )


def weights_source(config: Mapping[str, Any]) -> str:
    """``download`` (Salman et al. ResNets) or ``pretrain`` (the tiny demo backbone)."""
    source = (config.get("weights") or {}).get("source", "download")
    if source not in WEIGHTS_SOURCES:
        raise ConfigError(
            f"invalid 'weights.source' {source!r}; allowed: {', '.join(WEIGHTS_SOURCES)}"
        )
    return source


def seeds(config: Mapping[str, Any]) -> list[int]:
    values = config.get("seeds", [0, 6, 66])
    if (
        not isinstance(values, list)
        or not values
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values)
        or len(set(values)) != len(values)
    ):
        raise ConfigError(f"'seeds' must be a list of distinct integers >= 0, got {values!r}")
    return list(values)


def training_identity(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Training settings (a cell's overrides, a run's resolved configuration) less the runtime
    and the evaluation-only settings: those that define a training result."""
    dropped = (RUNTIME_KEY, *EVALUATION_ONLY_KEYS)
    return {key: value for key, value in settings.items() if key not in dropped}


def identity_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's spec as its train job gets it: without the runtime and the evaluation-only
    settings, which do not change its training (a change of this spec retrains the cell)."""
    return {**spec, "overrides": training_identity(spec.get("overrides") or {})}


def evaluation_overrides(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation-only settings of a cell's spec (``autoattack``: enabled, n, batch_size)."""
    return dict((spec.get("overrides") or {}).get("autoattack") or {})


def runtime(config: Mapping[str, Any]) -> dict[str, Any]:
    """``training.runtime``: how every cell is computed (device, workers, fast paths)."""
    return dict((config.get("training") or {}).get(RUNTIME_KEY) or {})


def job_threads(config: Mapping[str, Any]) -> int:
    """CPUs of a training or evaluation job: its data-loader workers plus the main process."""
    return int(runtime(config).get("num_workers", 0)) + 1


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without what changes no number (``training.runtime``, ``cost``): what the
    tables are built from, so that changing only those reruns nothing."""
    kept = {key: value for key, value in config.items() if key not in UNUSED_BY_RESULTS}
    if isinstance(kept.get("training"), Mapping):
        kept["training"] = {k: v for k, v in kept["training"].items() if k != RUNTIME_KEY}
    return kept


def reported_checkpoint(config: Mapping[str, Any]) -> str:
    """The checkpoint the tables report: the protocol's selection unless training overrides it."""
    training = config.get("training") or {}
    return (
        training.get("selection") or protocol_choices(config.get("protocol", "paper"))["selection"]
    )


def train_checkpoints(config: Mapping[str, Any]) -> list[str]:
    """The checkpoints every training run writes: best_test only when the test set is
    evaluated each epoch."""
    training = config.get("training") or {}
    test_each_epoch = training.get(
        "test_each_epoch", protocol_choices(config.get("protocol", "paper"))["test_each_epoch"]
    )
    return (["best_test"] if test_each_epoch else []) + ["best_val", "final"]


# ---- expansion ---------------------------------------------------------------------------------


def _table_setting(table: str, settings: Mapping[str, Any], key: str) -> Any:
    return settings.get(key, TABLE_DEFAULTS[table].get(key))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _variants(table: str, settings: Mapping[str, Any]) -> list[tuple[str, str | None, Any]]:
    """(method, variant, factor) triples a table asks for on each dataset × ε_pt × seed."""
    if table in ("table1", "table2", "table4", "figures"):
        return [(m, None, None) for m in _table_setting(table, settings, "methods")]
    if table == "table3":
        ranks = [int(r) for r in _table_setting(table, settings, "ranks")]
        return [(AUTOLORA, rank_variant(r), r) for r in ranks]
    if table == "table5":
        return [(TWINS, None, False), (TWINS, AUTOLR, True)]
    if table == "table6":
        alphas = [plain_number(a) for a in _table_setting(table, settings, "alphas")]
        return [(AUTOLORA, alpha_variant(a), a) for a in alphas]
    raise ConfigError(f"unknown table {table!r}")  # pragma: no cover - guarded by check_config


def _spec(
    config: Mapping[str, Any], identity: dict[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    spec = dict(identity)
    spec["overrides"] = {**(config.get("training") or {}), **extra}
    hyper = (config["datasets"][identity["dataset"]] or {}).get("hyper")
    if _per_method(hyper):
        # Only the cell's own method's settings are part of its identity: a new TWINS learning
        # rate must not retrain the vanilla cells of the dataset.
        hyper = hyper.get(identity["method"])
    if hyper is not None:
        spec["hyper"] = hyper
    return spec


def _per_method(hyper: Any) -> bool:
    """Whether ``hyper`` is the per-method form ``{vanilla: {...}, twins: {...}}``."""
    return isinstance(hyper, Mapping) and bool(set(hyper) & set(METHODS))


def _merge(cells: dict[str, dict[str, Any]], key: str, spec: dict[str, Any]) -> None:
    """Add a cell, or merge its overrides into the same cell already needed by another table."""
    if key not in cells:
        cells[key] = spec
        return
    merged = cells[key]["overrides"]
    for name, value in spec["overrides"].items():
        if name in merged and merged[name] != value:
            raise ConfigError(
                f"cell {key} gets two values for '{name}' ({merged[name]!r}, {value!r}) from "
                "different tables; make the tables agree"
            )
        merged[name] = value


def expand_grid(config: Mapping[str, Any]) -> Grid:
    """The unique cells and the table entries of a checked workflow configuration."""
    config = check_config(config)
    protocol = config.get("protocol", "paper")
    tables = config.get("tables") or {}
    cell_seeds = seeds(config)
    cells: dict[str, dict[str, Any]] = {}
    entries: list[TableEntry] = []
    for table, settings in tables.items():
        if table == "table8":
            continue
        settings = settings or {}
        arch = _table_setting(table, settings, "arch")
        extra = {}
        if table == "figures":
            extra["grad_similarity_batches"] = int(
                _table_setting(table, settings, "grad_similarity_batches")
            )
        for eps_pt in _as_list(_table_setting(table, settings, "eps_pt")):
            eps_pt = plain_number(eps_pt)
            for dataset in settings.get("datasets", []):
                for method, variant, factor in _variants(table, settings):
                    if table == "table4":
                        factor = eps_pt
                    cell_extra = extra if method in GRAD_SIMILARITY_METHODS else {}
                    for seed in cell_seeds:
                        identity = {
                            "protocol": protocol,
                            "arch": arch,
                            "eps_pt": eps_pt,
                            "dataset": dataset,
                            "method": method,
                            "variant": variant,
                            "seed": seed,
                        }
                        entry = TableEntry(**identity, table=table, factor=factor)
                        _merge(cells, entry.cell_id, _spec(config, identity, cell_extra))
                        entries.append(entry)
    referenced = (tables.get("table8") or {}).get("tables", TABLE_DEFAULTS["table8"]["tables"])
    if "table8" in tables:
        main = [e for e in entries if e.table in referenced]
        entries.extend(dataclasses.replace(e, table="table8", factor=None) for e in main)
    for key, spec in cells.items():
        resolved = resolve_cell(spec)  # every hyper-parameter checked before any job starts
        if (
            resolved.cell_id != key
        ):  # pragma: no cover - both come from autolora.planning.cells.cell_id
            raise ConfigError(f"cell {key} resolves to a different id {resolved.cell_id}")
    return Grid(cells=cells, entries=entries)
