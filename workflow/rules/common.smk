import json
import os
import re
import shlex
import shutil
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:
    from autolora.planning import costmodel, grid, layout, vocabulary
    from autolora.autoattack_variants import configured_variant
    from autolora.errors import AutoloraError
    from autolora.planning.protocol import PROTOCOLS
except ImportError as error:
    raise WorkflowError(
        f"the autolora package cannot be imported ({error}): run Snakemake from the project's "
        "environment (`source .venv/bin/activate`, or `make install` first)"
    ) from None

validate(config, schema="../../config/schema.yaml")

try:
    GRID = grid.expand_grid(config)
except AutoloraError as error:
    raise WorkflowError(f"invalid workflow config: {error}") from None

RESULTS = config["results"]
RESOURCES = config["resources"]
PROTOCOL = config["protocol"]
REPORT = layout.results_folder(RESULTS, PROTOCOL)
REPORTED_CHECKPOINT = grid.reported_checkpoint(config)
COST = costmodel.CostModel.from_config(config)
AUTOATTACK_CELLS = GRID.autoattack_cells(config)
AUTOATTACK_VARIANT = configured_variant(config)
CELL = layout.cell_pattern(RESULTS)
CONDA_ENV = "../../envs/autolora.yaml"
# The paper's numbers, found from the workflow's own folder (not the working directory). A plain
# path, not workflow.source_path(): that one points into Snakemake's temporary source cache, and
# the path recorded in the provenance index must still exist when the results are audited.
PAPER_RESULTS = os.path.relpath(
    os.path.join(workflow.basedir, "config", "paper_results.csv")
)
# The pinned backbone hashes committed with the workflow (not the working directory's): a
# resource, not a param, like the runtime, so that moving the repository reruns nothing.
WEIGHTS_LOCK = os.path.relpath(os.path.join(workflow.basedir, "config", "weights.lock"))
# How cells are computed (device, workers, fast paths): not a param, so changing it reruns nothing.
RUNTIME_JSON = json.dumps(grid.runtime(config), sort_keys=True, separators=(",", ":"))
# CPUs of a training or evaluation job: the data-loader workers plus the main process.
JOB_THREADS = grid.job_threads(config)


def _alternatives(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


SYNTHETIC_DATASETS = [
    name
    for name, spec in config["datasets"].items()
    if spec["source"] == vocabulary.SYNTHETIC
]
REAL_DATASETS = [name for name in config["datasets"] if name not in SYNTHETIC_DATASETS]


# Wildcards take the names the vocabulary defines and the config declares (no literal lists).
wildcard_constraints:
    protocol=_alternatives(PROTOCOLS),
    arch=_alternatives(vocabulary.ARCHS),
    eps=vocabulary.NUMBER_PATTERN,
    dataset=_alternatives(config["datasets"]),
    method=vocabulary.method_folder_pattern(),
    seed=r"\d+",
    checkpoint=_alternatives(layout.CHECKPOINT_NAMES),


# ---- cells ---------------------------------------------------------------------------------


def cell_id(wildcards):
    return layout.CELL_ID_TEMPLATE.format(**dict(wildcards.items()))


def cell_spec(wildcards):
    key = cell_id(wildcards)
    if key not in GRID.cells:
        raise WorkflowError(
            f"cell {key} is not in the configured grid; add it to a table of the config "
            "or request one of the configured cells"
        )
    return GRID.cells[key]


def cell_spec_json(wildcards):
    """The cell's identity as the train command's --spec, a param: a change of it reruns the
    cell. The runtime and the evaluation-only settings are not in it (grid.identity_spec).
    """
    spec = grid.identity_spec(cell_spec(wildcards))
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def runtime_json(wildcards):
    """The runtime as the train/evaluate command's --runtime: a resource, not a param, so that a
    new runtime applies to the jobs still to run and retrains nothing."""
    return RUNTIME_JSON


def cell_evaluations():
    evaluation = layout.evaluation_record(REPORTED_CHECKPOINT)
    return [f"{RESULTS}/{key}/{evaluation}" for key in GRID.cells]


def cell_histories():
    return [f"{RESULTS}/{key}/{layout.HISTORY}" for key in GRID.cells]


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
    """The evaluation's settings (a param: a change of them re-evaluates the cell)."""
    autoattack = grid.evaluation_overrides(cell_spec(wildcards))
    n = config["evaluation"].get("n") or autoattack.get("n")
    options = [f"--n {int(n)}"] if n else []
    if cell_id(wildcards) not in AUTOATTACK_CELLS or autoattack.get("enabled") is False:
        options.append("--no-autoattack")
    else:
        options.append(f"--autoattack-version {AUTOATTACK_VARIANT.name}")
        if "batch_size" in autoattack:
            options.append(f"--autoattack-batch-size {int(autoattack['batch_size'])}")
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


# ---- start-up checks -------------------------------------------------------------------------


def check_tools():
    """Every job runs `autolora`: without it on the PATH each would fail on its own."""
    deployment = workflow.deployment_settings.deployment_method
    if any(method.name in ("CONDA", "APPTAINER") for method in deployment):
        return  # the jobs' environment or container provides it
    if shutil.which("autolora") is None:
        beside = os.path.join(os.path.dirname(sys.executable), "autolora")
        hint = (
            f"export PATH={os.path.dirname(sys.executable)}:$PATH"
            if os.path.exists(beside)
            else "make install"
        )
        raise WorkflowError(
            "`autolora` is not on the PATH, so every job would fail: activate the project's "
            f"environment (`source .venv/bin/activate`) or `{hint}`, then rerun"
        )


onstart:
    check_tools()
