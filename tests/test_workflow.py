"""The Snakemake workflow: the full DAG, lint and format, config validation, resources from the
cost model, the SLURM profile, and a partial rerun on a real (tiny) run."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autolora.planning import costmodel
from autolora.planning.grid import expand_grid, load_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
PAPER_CONFIG = ROOT / "config" / "config.yaml"

# The paper's grid, counted from the issue: Tables 1/2: 3 methods × 2 backbones × 6 datasets ×
# 3 seeds = 108; Table 3 adds r = 2, 4, 16 on 4 datasets × 3 seeds = 36 (r = 8 is Table 1's);
# Table 4 adds ε_pt = 0, 1, 2, 8 × 2 datasets × 3 methods × 3 seeds = 72 (ε_pt = 4 is Table 1's);
# Table 5 adds TWINS-autolr × 4 datasets × 3 seeds = 12; Table 6 adds 6 α ≠ 1 × 2 datasets ×
# 3 seeds = 36. Weights: ResNet-18 at ε_pt 0, 1, 2, 4, 8 and ResNet-50 at 4.
PAPER_TRAIN_JOBS = 108 + 36 + 72 + 12 + 36
PAPER_JOBS = {
    "download_dataset": 6,
    "prepare_dataset": 6,
    "download_weights": 6,
    "convert_weights": 6,
    "train": PAPER_TRAIN_JOBS,
    "evaluate": PAPER_TRAIN_JOBS,
    "resolve_config": 1,
    "aggregate": 1,
    "crate": 1,
    "all": 1,
}


def snakemake(*args: str, workdir: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = output.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    return {rule: int(count) for rule, count in rows if rule != "total"}


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("paper")  # the workflow finds its config/ itself
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # --cores above the jobs' threads, so that the dry run shows each job's own
    result = snakemake(
        "-n", "-p", "--cores", "64", "--configfile", str(PAPER_CONFIG), workdir=workdir
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout + result.stderr, cpu, wall, workdir


def test_full_grid_dag_has_the_exact_jobs_per_rule(paper_dry_run):
    output, cpu, wall, _ = paper_dry_run
    assert job_counts(output) == PAPER_JOBS
    # CPU time, since the wall time on a shared CI machine depends on its other load
    assert cpu < 10, f"building the paper's DAG took {cpu:.1f} s of CPU ({wall:.1f} s wall)"


def test_train_and_evaluate_resources_come_from_the_cost_model(paper_dry_run):
    output, _, _, _ = paper_dry_run
    config = load_config(PAPER_CONFIG)
    cell = "paper/runs/resnet50-eps4/cifar10/autolora/seed6"
    spec = expand_grid(config).cells[cell]
    model = costmodel.CostModel.from_config(config)
    train_limit = costmodel.time_limit_min(costmodel.train_minutes(spec, config, model), model)
    eval_limit = costmodel.time_limit_min(costmodel.evaluate_minutes(spec, config, model), model)
    jobs = output.split("\nrule ")
    train = next(j for j in jobs if j.startswith("train:") and f"results/{cell}/run.json" in j)
    evaluate = next(j for j in jobs if j.startswith("evaluate:") and f"{cell}/eval-" in j)
    assert f"runtime={train_limit}," in train and "gpu=1" in train and "mem_mb=48000" in train
    assert f"runtime={eval_limit}," in evaluate and "gpu=1" in evaluate
    # CPUs from the config: 8 data-loader workers + the main process.
    assert "threads: 9" in train and "threads: 9" in evaluate
    assert 'autolora_runtime={"num_workers":8}' in train
    assert "eval-best_test.json" in evaluate  # protocol paper reports the best-test checkpoint


def evaluate_commands(output: str, results: str) -> dict[str, str]:
    """Cell id -> the `autolora evaluate` command a dry run (-p) prints for it."""
    found = re.finditer(r"^Shell command: (.*autolora evaluate --run (\S+) .*)$", output, re.M)
    return {m.group(2).removeprefix(f"{results}/"): m.group(1) for m in found}


def test_the_paper_grid_runs_standard_autoattack_on_tables_1_and_2(paper_dry_run):
    output, _, _, _ = paper_dry_run
    config = load_config(PAPER_CONFIG)
    grid = expand_grid(config)
    commands = evaluate_commands(output, "results")
    assert set(commands) == set(grid.cells)
    aa_cells = set(grid.cells_of("table1")) | set(grid.cells_of("table2"))
    for cell, command in commands.items():
        expected = "--autoattack-version standard" if cell in aa_cells else "--no-autoattack"
        assert expected in command, command


def test_every_job_uses_the_weights_lock_committed_with_the_workflow(paper_dry_run):
    """Run from another folder (--directory), the pins in the repository's config/weights.lock
    still apply: the jobs that download, convert, prepare or train from pinned files get its path
    (the crate copies that file)."""
    output, _, _, workdir = paper_dry_run
    lock = ROOT / "config" / "weights.lock"
    commands = [
        line
        for line in output.splitlines()
        if re.search(
            r"autolora (data download|data prepare|weights download|weights convert|train) ", line
        )
    ]
    assert len(commands) == 6 + 6 + 6 + 6 + PAPER_TRAIN_JOBS
    used = {re.search(r"--lock (\S+)", line).group(1).strip("'") for line in commands}
    assert {(workdir / path).resolve() for path in used} == {lock.resolve()}


def test_the_demo_runs_reduced_autoattack_on_every_table1_cell(tmp_path):
    config = load_config(ROOT / "config" / "demo.yaml")
    result = snakemake(
        "-n", "-p", "--configfile", str(ROOT / "config" / "demo.yaml"), workdir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    commands = evaluate_commands(result.stdout + result.stderr, config["results"])
    grid = expand_grid(config)
    assert set(commands) == set(grid.cells)
    for cell, command in commands.items():
        table1 = cell in grid.cells_of("table1")
        expected = "--autoattack-version apgd-ce+apgd-t" if table1 else "--no-autoattack"
        assert expected in command, command


def local_rules() -> set[str]:
    """Rules declaring `localrule: True` (they run on the submit host, which has internet)."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    blocks = re.split(r"^rule ", "\n".join(f.read_text() for f in files), flags=re.MULTILINE)
    return {b.split(":", 1)[0] for b in blocks[1:] if "localrule: True" in b.split("\n\n\n")[0]}


def test_downloads_are_local_rules():
    local = local_rules()
    assert {"download_dataset", "download_weights", "resolve_config", "all"} <= local
    assert not {"train", "evaluate", "prepare_dataset", "convert_weights"} & local


def test_lint_is_clean(tmp_path):
    for config in ("config.yaml", "demo.yaml"):
        result = snakemake(
            "--lint", "--configfile", str(ROOT / "config" / config), workdir=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_snakefmt_check_passes():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["tables"]["table1"].update(method=["vanilla"]), "'method' was unexpected"),
        (lambda c: c["tables"]["table6"].update(datasets=["svhn"]), "tables.table6.datasets"),
        (lambda c: c.update(results=""), "results"),
        (lambda c: c.update(resources="//"), "resources"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, named):
    config = yaml.safe_load(PAPER_CONFIG.read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(path), workdir=tmp_path)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert "Job stats" not in result.stdout + result.stderr


def test_slurm_profile():
    profile = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1 and profile["keep-going"] is True
    assert profile["latency-wait"] >= 10 and profile["slurm-logdir"]
    assert profile["rerun-incomplete"] is True
    text = (ROOT / "slurm" / "config.yaml").read_text()
    assert "slurm-status-command: squeue" in text  # documented for sites without accounting


# ---- a real run of a tiny grid ------------------------------------------------------------------

# Four cells (two datasets x two methods, one seed), with a space in both output roots: every path
# reaches the shell quoted.
RESULTS, RESOURCES = "out dir", "res dir"
SYNTH = {
    "source": "synthetic",
    "num_classes": 10,  # standard AutoAttack needs 10 classes (9 targets)
    "train": 60,
    "test": 24,
    "image_size": 8,
    "hyper": {
        "vanilla": {"lr": 0.01, "weight_decay": 1.0e-4},
        "twins": {"lr": 0.01, "weight_decay": 1.0e-4, "twins_gamma": 1.0},
    },
}
TINY = {
    "protocol": "paper",
    "seeds": [0],
    "results": RESULTS,
    "resources": RESOURCES,
    "datasets": {
        "synth-a": {**copy.deepcopy(SYNTH), "seed": 5},
        "synth-b": {**copy.deepcopy(SYNTH), "seed": 6},
    },
    "weights": {
        "source": "pretrain",
        "pretrain": {"epochs": 1, "train_size": 100, "test_size": 20, "image_size": 8},
    },
    "training": {
        "epochs": 1,
        "batch_size": 16,
        "attack": {"train_steps": 2},
        "runtime": {"device": "cpu", "deterministic": True},
    },
    "evaluation": {"autoattack": False, "n": 8},  # SA and PGD-10 only: a fast test
    "tables": {
        "table1": {
            "arch": "tiny",
            "eps_pt": 4,
            "datasets": ["synth-a", "synth-b"],
            "methods": ["vanilla", "twins"],
        }
    },
}
CELL = f"{RESULTS}/paper/runs/tiny-eps4/synth-b/twins/seed0"


def write_config(workdir: Path, config: dict, name: str = "tiny.yaml") -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def edited(**changes) -> dict:
    """TINY with (dotted key -> value) changes."""
    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    """The tiny grid run to the end from an empty folder (no config/ there: the workflow finds
    its own files)."""
    workdir = tmp_path_factory.mktemp("tiny")
    config = write_config(workdir, TINY)
    run = snakemake("--configfile", config, "--cores", "2", workdir=workdir, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


def dry_run(workdir: Path, config: dict, *args: str) -> str:
    """A dry run after editing the grid's config file (as a user does), which is then put back."""
    path = workdir / "tiny.yaml"
    original = path.read_text()
    try:
        write_config(workdir, config)
        result = snakemake("-n", "--configfile", str(path), *args, workdir=workdir)
    finally:
        path.write_text(original)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_paths_with_spaces_reach_the_shell_quoted(finished_grid):
    assert (finished_grid / RESULTS / "paper" / "report.md").is_file()
    assert (finished_grid / RESOURCES / "data" / "synth-a" / "dataset.json").is_file()
    # nothing beside the two roots, the config and Snakemake's own folder (an unquoted path
    # would have left a file named after its first word here)
    assert sorted(p.name for p in finished_grid.iterdir()) == sorted(
        [".snakemake", RESULTS, RESOURCES, "tiny.yaml"]
    )


@pytest.mark.slow
def test_the_audit_of_a_finished_workflow_passes(finished_grid):
    """Every path the aggregation recorded must outlive the run (e.g. not point into Snakemake's
    temporary source cache), so the audit of a folder run elsewhere than the repository passes."""
    index = finished_grid / RESULTS / "paper" / "provenance"
    audit = subprocess.run(
        [sys.executable, "-m", "autolora.cli", "audit", "--index", str(index), "--all", "--quiet"],
        cwd=finished_grid,
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    assert "audit passed" in audit.stdout


@pytest.mark.slow
def test_a_finished_cell_keeps_its_outputs_once_and_one_log_per_attempt(finished_grid):
    cell = finished_grid / CELL
    record = json.loads((cell / "run.json").read_text())
    for name in ("run.json", "history.csv", "best_test.safetensors", "final.safetensors"):
        # the declared outputs are hard links to the kept copies: no second copy on disk
        assert os.path.samefile(cell / name, cell / "completed" / name), name
    [attempt] = record["attempts"]
    assert (cell / attempt["log"]).is_file() and attempt["log"].startswith("logs/")
    assert "trained" in (cell / "train.log").read_text()
    assert not (cell / "state").exists()


@pytest.mark.slow
def test_changing_the_runtime_reruns_nothing(finished_grid):
    runtime = {"device": "cpu", "num_workers": 1, "bf16": True, "channels_last": True}
    config = edited(**{"training.runtime": runtime, "cost": {"train_images_per_s": 5}})
    output = dry_run(finished_grid, config)
    assert "Nothing to be done" in output, output[-3000:]


@pytest.mark.slow
def test_changing_one_cells_identity_reruns_exactly_that_cell(finished_grid):
    config = edited(**{"datasets.synth-b.hyper.twins.lr": 0.02})
    output = dry_run(finished_grid, config)
    assert job_counts(output) == {
        "train": 1,
        "evaluate": 1,
        "resolve_config": 1,
        "aggregate": 1,
        "crate": 1,
        "all": 1,
    }
    train = next(j for j in output.split("\nrule ") if j.startswith("train:"))
    assert f"{CELL}/run.json" in train and "params have changed" in train.lower()


@pytest.mark.slow
def test_a_new_identity_for_one_cell_retrains_exactly_that_cell_for_real(finished_grid, tmp_path):
    """Not only planned: run. The train job of the changed cell finds the finished run of its old
    identity in the cell's completed/, keeps it aside (superseded/) and trains again; no other
    cell is touched, and the evaluation is redone from the new run."""
    workdir = tmp_path / "grid"
    shutil.copytree(finished_grid, workdir, symlinks=True)  # mtimes kept: the copy is up to date
    runs = sorted((workdir / RESULTS).glob("paper/runs/*/*/*/seed0/run.json"))
    assert len(runs) == 4
    before = {path: path.read_bytes() for path in runs}
    config = write_config(workdir, edited(**{"datasets.synth-b.hyper.twins.lr": 0.02}))
    run = snakemake("--configfile", config, "--cores", "2", workdir=workdir, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert job_counts(run.stdout + run.stderr)["train"] == 1

    cell = workdir / CELL
    for path in runs:
        if path.parent != cell:
            assert path.read_bytes() == before[path], path
    record = json.loads((cell / "run.json").read_text())
    assert record["config"]["lr"] == 0.02 and record["epochs_run"] == 1
    [superseded] = record["superseded"]
    assert "lr: 0.01 -> 0.02" in superseded["reason"]
    kept = cell / superseded["path"]
    assert (kept / "completed" / "run.json").read_bytes() == before[cell / "run.json"]
    # the old run's evaluation went with it, its log too
    assert (kept / "eval-best_test.json").is_file() and (kept / "eval-best_test.log").is_file()
    evaluation = json.loads((cell / "eval-best_test.json").read_text())
    run_sha256 = hashlib.sha256((cell / "run.json").read_bytes()).hexdigest()
    assert evaluation["run_record"]["sha256"] == run_sha256
    again = snakemake("-n", "--configfile", config, workdir=workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_new_pretrained_weights_retrain_every_cell(finished_grid):
    """Another backbone (weights.pretrain.*) reruns the pre-training and, its output being newer,
    every train job: each one supersedes its finished run (the recorded weights differ) instead
    of restoring it (tests/test_train.py runs that part)."""
    config = edited(**{"weights.pretrain": {**TINY["weights"]["pretrain"], "epochs": 2}})
    output = dry_run(finished_grid, config)
    counts = job_counts(output)
    assert (counts["pretrain_backbone"], counts["train"], counts["evaluate"]) == (1, 4, 4)


@pytest.mark.slow
def test_another_autoattack_setting_re_evaluates_and_retrains_nothing(finished_grid):
    # another AutoAttack variant re-evaluates every AA cell (all four: Table 1's)
    evaluation = {"autoattack": True, "autoattack_version": "apgd-ce+apgd-t", "n": 8}
    variant = dry_run(finished_grid, {**TINY, "evaluation": evaluation})
    expected = {"evaluate": 4, "resolve_config": 1, "aggregate": 1, "crate": 1, "all": 1}
    assert job_counts(variant) == expected
    # AutoAttack's batch size is the evaluation's too (it changes which examples share a batch,
    # hence the random starts): an option of the evaluations, not part of any cell's identity
    batch = edited(**{"evaluation": evaluation, "training.autoattack": {"batch_size": 4}})
    output = dry_run(finished_grid, batch, "-p")
    assert job_counts(output) == expected
    commands = [line for line in output.splitlines() if " autolora evaluate " in line]
    assert len(commands) == 4
    assert all("--autoattack-batch-size 4" in command for command in commands)


@pytest.mark.slow
def test_another_selection_evaluates_the_other_checkpoint_and_retrains_nothing(finished_grid):
    """Every run writes best_test, best_val and final: the selection picks the one the tables
    report, so choosing another evaluates that one in each cell and trains nothing."""
    output = dry_run(finished_grid, edited(**{"training.selection": "best_val"}))
    counts = job_counts(output)
    assert "train" not in counts and counts["evaluate"] == 4, counts
    evaluations = [j for j in output.split("\nrule ") if j.startswith("evaluate:")]
    assert all("eval-best_val.json" in job for job in evaluations)


@pytest.mark.slow
def test_deleting_one_evaluation_reruns_only_it_and_the_aggregation(finished_grid):
    config = str(finished_grid / "tiny.yaml")
    up_to_date = snakemake("-n", "--configfile", config, workdir=finished_grid)
    assert "Nothing to be done" in up_to_date.stdout + up_to_date.stderr

    evaluation = finished_grid / CELL / "eval-best_test.json"
    saved = evaluation.read_bytes()
    evaluation.unlink()
    try:
        rerun = snakemake("-n", "--configfile", config, workdir=finished_grid)
        assert job_counts(rerun.stdout + rerun.stderr) == {
            "evaluate": 1,
            "aggregate": 1,
            "crate": 1,
            "all": 1,
        }
        assert f"{CELL}/eval-best_test.json" in rerun.stdout
    finally:
        evaluation.write_bytes(saved)

    forced = snakemake(
        "-n", "--configfile", config, "--forcerun", f"{CELL}/run.json", workdir=finished_grid
    )
    assert job_counts(forced.stdout + forced.stderr) == {
        "train": 1,
        "evaluate": 1,
        "aggregate": 1,
        "crate": 1,
        "all": 1,
    }


def test_a_run_without_autolora_on_the_path_stops_before_any_job(tmp_path):
    config = write_config(tmp_path, TINY)
    env = dict(os.environ, PATH="/usr/bin:/bin")
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", config, "--cores", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "`autolora` is not on the PATH" in output and "source .venv/bin/activate" in output
    assert not (tmp_path / RESOURCES).exists() and not (tmp_path / RESULTS).exists()
