import json
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from autolora import costmodel
from autolora.autoattack_variants import configured_variant
from autolora.errors import AutoloraError
from autolora.grid import expand_grid, reported_checkpoint, train_checkpoints

validate(config, schema="../../config/schema.yaml")

try:
    GRID = expand_grid(config)
except AutoloraError as error:
    raise WorkflowError(f"invalid workflow config: {error}") from None

RESULTS = config["results"]
RESOURCES = config["resources"]
PROTOCOL = config["protocol"]
REPORT = f"{RESULTS}/{PROTOCOL}"
REPORTED_CHECKPOINT = reported_checkpoint(config)
COST = costmodel.CostModel.from_config(config)
AUTOATTACK_CELLS = GRID.autoattack_cells(config)
AUTOATTACK_VARIANT = configured_variant(config)
CELL = f"{RESULTS}/{{protocol}}/runs/{{arch}}-eps{{eps}}/{{dataset}}/{{method}}/seed{{seed}}"
CONDA_ENV = "../../envs/autolora.yaml"


def _alternatives(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


SYNTHETIC_DATASETS = [
    name for name, spec in config["datasets"].items() if spec["source"] == "synthetic"
]
REAL_DATASETS = [name for name in config["datasets"] if name not in SYNTHETIC_DATASETS]


wildcard_constraints:
    protocol="paper|clean",
    arch="resnet18|resnet50|tiny",
    eps=r"\d+(\.\d+)?",
    dataset=_alternatives(config["datasets"]),
    method=r"(vanilla|twins|autolora)(-(r\d+|alpha\d+(\.\d+)?|autolr))?",
    seed=r"\d+",
    checkpoint="best_test|best_val|final",


# ---- cells ---------------------------------------------------------------------------------


def cell_id(wildcards):
    return (
        f"{wildcards.protocol}/runs/{wildcards.arch}-eps{wildcards.eps}/"
        f"{wildcards.dataset}/{wildcards.method}/seed{wildcards.seed}"
    )


def cell_spec(wildcards):
    key = cell_id(wildcards)
    if key not in GRID.cells:
        raise WorkflowError(
            f"cell {key} is not in the configured grid; add it to a table of the config "
            "or request one of the configured cells"
        )
    return GRID.cells[key]


def cell_spec_json(wildcards):
    """The cell spec as the train command's --spec; a change of it reruns the cell."""
    return json.dumps(cell_spec(wildcards), sort_keys=True, separators=(",", ":"))


def cell_evaluations():
    return [f"{RESULTS}/{key}/eval-{REPORTED_CHECKPOINT}.json" for key in GRID.cells]


def cell_histories():
    return [f"{RESULTS}/{key}/history.csv" for key in GRID.cells]


# ---- resources from the cost model -----------------------------------------------------------


def train_runtime_min(wildcards):
    minutes = costmodel.train_minutes(cell_spec(wildcards), config, COST)
    return costmodel.time_limit_min(minutes, COST)


def evaluate_runtime_min(wildcards):
    n = config["evaluation"].get("n")
    minutes = costmodel.evaluate_minutes(
        cell_spec(wildcards),
        config,
        COST,
        n,
        autoattack=cell_id(wildcards) in AUTOATTACK_CELLS,
    )
    return costmodel.time_limit_min(minutes, COST)


def cell_mem_mb(wildcards):
    return COST.mem_mb.get(wildcards.arch, 16000)


def train_slurm_extra(wildcards):
    """Ask SLURM for SIGTERM two minutes before the time limit: `autolora train` saves its state
    and exits 75, the job fails and Snakemake's retry resumes the cell. SIGTERM, not SIGUSR1:
    the Snakemake process inside the job step handles SIGTERM gracefully but dies on SIGUSR1.
    """
    return "--signal=TERM@120"


# ---- command-line options from the config ----------------------------------------------------


def evaluation_options(wildcards):
    n = config["evaluation"].get("n")
    options = [f"--n {int(n)}"] if n else []
    if cell_id(wildcards) in AUTOATTACK_CELLS:
        options.append(f"--autoattack-version {AUTOATTACK_VARIANT.name}")
    else:
        options.append("--no-autoattack")
    return " ".join(options)


def pretrain_options():
    options = (config.get("weights") or {}).get("pretrain") or {}
    return " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in options.items()
    )


def synthetic_options(wildcards):
    spec = config["datasets"][wildcards.dataset]
    return (
        f"--num-classes {spec['num_classes']} --train {spec['train']} --test {spec['test']} "
        f"--image-size {spec['image_size']} --seed {spec['seed']} --name {wildcards.dataset}"
    )


def crate_configfile_options():
    """The config files this invocation read, for the crate's copy of the workflow."""
    return " ".join(
        f"--configfile {shlex.quote(str(path))}" for path in workflow.configfiles
    )
