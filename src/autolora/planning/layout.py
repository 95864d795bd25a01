"""Where every file lives: the names of the files and folders of a cell, of a prepared dataset, of
a backbone, of the resources folder and of a results folder, defined once.

The code that writes a file, the code that reads it and the workflow's rules (``common.smk``
imports this module) take its name from here. What the files hold is documented in
docs/internals.md; the records' contents are typed in ``autolora.records``. Torch-free.

A cell's folder, ``<results>/<cell id>/``::

    run.json  history.csv  best_test.safetensors  best_val.safetensors  final.safetensors
    eval-<checkpoint>.json  train.log  eval-<checkpoint>.log
    state/      resume state while the run is unfinished (state.json + tensor files)
    completed/  the finished run's outputs (the files above are hard links to them)
    logs/       train-<UTC time>-<pid>.log, one per training attempt
    train.lock  held by the `autolora train` working on the cell

A results folder, ``<results>/<protocol>/``: ``tables/``, ``figures/``, ``provenance/``,
``comparison.csv``/``.md``, ``claims.csv``, ``missing.txt``, ``report.md``/``.html``,
``config.resolved.yaml``, ``ro-crate-metadata.json``, ``source/``, ``logs/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from autolora.planning.vocabulary import format_number, method_folder

# ---- a cell ------------------------------------------------------------------------------------

# A cell's id is its folder under the results root; the names in braces are also the workflow's
# wildcards (common.smk).
RUNS_DIR = "runs"  # in a results folder: every cell of its protocol
CELL_ID_TEMPLATE = (
    f"{{protocol}}/{RUNS_DIR}/{{arch}}-eps{{eps}}/{{dataset}}/{{method}}/seed{{seed}}"
)
RUN_RECORD = "run.json"
HISTORY = "history.csv"
TRAIN_LOG = "train.log"  # the latest training attempt's log, as the workflow writes it
CHECKPOINT_NAMES = ("best_test", "best_val", "final")
SELECTED_CHECKPOINT = "selected"  # `autolora evaluate --checkpoint`: the protocol's selection
STATE_DIR = "state"
STATE_FILE = "state.json"  # in state/: the commit point of the resume state
COMPLETED_DIR = "completed"
SUPERSEDED_DIR = "superseded"  # kept work of another identity or other inputs, moved aside
SUPERSEDED_NOTE = "superseded.json"  # in each superseded/<time>-<reason>/: why and what moved
LOGS_DIR = "logs"  # in a cell, in the resources folder and in a results folder
LOCK_FILE = "train.lock"
EVALUATION_PREFIX = "eval-"
WEIGHTS_SUFFIX = ".safetensors"


def cell_id(
    protocol: str,
    arch: str,
    eps_pt: float,
    dataset: str,
    method: str,
    variant: str | None,
    seed: int,
) -> str:
    """``<protocol>/runs/<arch>-eps<eps_pt>/<dataset>/<method>[-<variant>]/seed<seed>``."""
    return CELL_ID_TEMPLATE.format(
        protocol=protocol,
        arch=arch,
        eps=format_number(eps_pt),
        dataset=dataset,
        method=method_folder(method, variant),
        seed=seed,
    )


def cell_pattern(results: str) -> str:
    """A cell's folder with the workflow's wildcards: ``<results>/{protocol}/runs/...``."""
    return f"{results}/{CELL_ID_TEMPLATE}"


def checkpoint_file(name: str) -> str:
    """``best_test.safetensors``, ``best_val.safetensors``, ``final.safetensors``."""
    return f"{name}{WEIGHTS_SUFFIX}"


def evaluation_record(checkpoint: str) -> str:
    """``eval-<checkpoint>.json``: the evaluation record of a cell's checkpoint."""
    return f"{EVALUATION_PREFIX}{checkpoint}.json"


def evaluation_log(checkpoint: str) -> str:
    return f"{EVALUATION_PREFIX}{checkpoint}.log"


def attempt_log(stamp: str, pid: int, number: int = 1) -> str:
    """One training attempt's log in ``logs/``; ``number`` > 1 when the name is taken already."""
    stem = f"train-{stamp}-{pid}"
    return f"{stem}.log" if number == 1 else f"{stem}-{number}.log"


def state_tensor_file(group: str, token: str) -> str:
    """A tensor group of the resume state (``model-<token>.safetensors``, ...) in ``state/``."""
    return f"{group}-{token}{WEIGHTS_SUFFIX}"


# ---- a prepared dataset: <resources>/data/<dataset>/ --------------------------------------------

DATASET_METADATA = "dataset.json"
IMAGES = "images.u8"
IMAGE_INDEX = "images_index.npy"
LABELS = "labels.npy"
EXAMPLES = "examples.csv"
SPLITS_DIR = "splits"


def split_manifest(scheme: str) -> str:
    """``splits/<scheme>.csv``: split, position, example."""
    return f"{SPLITS_DIR}/{scheme}.csv"


def split_info(scheme: str) -> str:
    """``splits/<scheme>.json``: the scheme's counts, head size and notes."""
    return f"{SPLITS_DIR}/{scheme}.json"


# ---- the resources folder: downloads, prepared datasets, backbones -----------------------------

DATA_DIR = "data"
DOWNLOADS_DIR = "downloads"
WEIGHTS_DIR = "weights"
STAGING_DIR = ".staging"  # in downloads/: archives until every one of a dataset is verified


def prepared_dataset(resources: str, dataset: str) -> str:
    return f"{resources}/{DATA_DIR}/{dataset}"


def dataset_downloads(resources: str, dataset: str) -> str:
    return f"{resources}/{DOWNLOADS_DIR}/{dataset}"


def dataset_staging(resources: str, dataset: str) -> str:
    return f"{resources}/{DOWNLOADS_DIR}/{STAGING_DIR}/{dataset}"


def backbone(resources: str, arch: str, eps: str) -> str:
    """``<resources>/weights/<arch>-eps<eps>.safetensors``; its record is beside it."""
    return f"{resources}/{WEIGHTS_DIR}/{arch}-eps{eps}{WEIGHTS_SUFFIX}"


def backbone_download(resources: str, arch: str, eps: str) -> str:
    """Where the published checkpoint of a backbone is downloaded to."""
    return f"{resources}/{DOWNLOADS_DIR}/{WEIGHTS_DIR}/{arch}-eps{eps}.ckpt"


def backbone_record(backbone_file: str | os.PathLike) -> Path:
    """The JSON record beside a converted or pre-trained backbone."""
    return Path(backbone_file).with_suffix(".json")


def downloads_beside(prepared: str | os.PathLike, dataset: str) -> Path:
    """The downloads of ``dataset`` in the resources folder holding the prepared dataset folder
    ``prepared`` (``<resources>/data/<x>`` -> ``<resources>/downloads/<dataset>``)."""
    return Path(prepared).parent.parent / DOWNLOADS_DIR / dataset


def download_of_backbone(backbone_file: str | os.PathLike, name: str) -> Path:
    """Where the checkpoint ``name`` a backbone was converted from is downloaded
    (``<resources>/weights/x.safetensors`` -> ``<resources>/downloads/weights/<name>``)."""
    return Path(backbone_file).parent.parent / DOWNLOADS_DIR / WEIGHTS_DIR / name


def resource_log(resources: str, rule: str, name: str) -> str:
    return f"{resources}/{LOGS_DIR}/{rule}/{name}.log"


# ---- a results folder: <results>/<protocol>/ ------------------------------------------------------

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
PROVENANCE_DIR = "provenance"
RESULTS_INDEX = "results.json"  # in provenance/: every other file's sha256; its own is the seal
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
CLAIMS = "claims.csv"
MISSING_CELLS = "missing.txt"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RESOLVED_CONFIG = "config.resolved.yaml"
CRATE_METADATA = "ro-crate-metadata.json"
CRATE_SOURCE_DIR = "source"  # the crate's copy of the workflow definition
VALUES_SUFFIX = "_values.csv"


def results_folder(results: str, protocol: str) -> str:
    return f"{results}/{protocol}"


def table_file(table: str, suffix: str) -> str:
    """A rendered table in ``tables/``: ``<table>.csv``, ``.md`` or ``.tex``."""
    return f"{TABLES_DIR}/{table}.{suffix}"


def table_values(table: str) -> str:
    """One line per number of a table, with its per-seed values."""
    return f"{TABLES_DIR}/{table}{VALUES_SUFFIX}"


def table_index(table: str) -> str:
    """The provenance index of one table."""
    return f"{PROVENANCE_DIR}/{table}.json"


def figure_name(column: str, arch: str, dataset: str) -> str:
    """A figure's file in ``figures/``: the history ``column`` per epoch, one backbone and dataset."""
    return f"{column}-{arch}-{dataset}.png"


def report_log(rule: str) -> str:
    """The log of a rule that writes into the results folder (``logs/<rule>.log``)."""
    return f"{LOGS_DIR}/{rule}.log"


CRATE_LOG = report_log("crate")  # still being written while the crate is: not described in it
