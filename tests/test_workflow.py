"""The Snakemake workflow: the full DAG, lint and format, config validation, resources from the
cost model, the SLURM profile, and a partial rerun on a real (tiny) run."""

from __future__ import annotations

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

from autolora import costmodel
from autolora.grid import expand_grid, load_config

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
    workdir = tmp_path_factory.mktemp("paper")
    (workdir / "config").mkdir()  # the workflow runs from a folder holding config/
    shutil.copy(ROOT / "config" / "paper_results.csv", workdir / "config")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = snakemake("-n", "-p", "--configfile", str(PAPER_CONFIG), workdir=workdir)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout + result.stderr, cpu, wall


def test_full_grid_dag_has_the_exact_jobs_per_rule(paper_dry_run):
    output, cpu, wall = paper_dry_run
    assert job_counts(output) == PAPER_JOBS
    # CPU time, since the wall time on a shared CI machine depends on its other load
    assert cpu < 10, f"building the paper's DAG took {cpu:.1f} s of CPU ({wall:.1f} s wall)"


def test_train_and_evaluate_resources_come_from_the_cost_model(paper_dry_run):
    output, _, _ = paper_dry_run
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
    assert "eval-best_test.json" in evaluate  # protocol paper reports the best-test checkpoint


def evaluate_commands(output: str, results: str) -> dict[str, str]:
    """Cell id -> the `autolora evaluate` command a dry run (-p) prints for it."""
    found = re.finditer(r"^Shell command: (.*autolora evaluate --run (\S+) .*)$", output, re.M)
    return {m.group(2).removeprefix(f"{results}/"): m.group(1) for m in found}


def test_the_paper_grid_runs_standard_autoattack_on_tables_1_and_2(paper_dry_run):
    output, _, _ = paper_dry_run
    config = load_config(PAPER_CONFIG)
    grid = expand_grid(config)
    commands = evaluate_commands(output, "results")
    assert set(commands) == set(grid.cells)
    aa_cells = set(grid.cells_of("table1")) | set(grid.cells_of("table2"))
    for cell, command in commands.items():
        expected = "--autoattack-version standard" if cell in aa_cells else "--no-autoattack"
        assert expected in command, command


def test_the_demo_runs_reduced_autoattack_on_every_table1_cell(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "paper_results.csv", tmp_path / "config")
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

TINY = {
    "protocol": "paper",
    "seeds": [0, 1],
    "results": "results",
    "resources": "resources",
    "datasets": {
        "synth": {
            "source": "synthetic",
            "num_classes": 10,  # standard AutoAttack needs 10 classes (9 targets)
            "train": 60,
            "test": 24,
            "image_size": 8,
            "seed": 5,
            "hyper": {"vanilla": {"lr": 0.01, "weight_decay": 1.0e-4}},
        }
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
        "table1": {"arch": "tiny", "eps_pt": 4, "datasets": ["synth"], "methods": ["vanilla"]}
    },
}
REQUIRED_VERBS = ("train", "evaluate", "aggregate", "pretrain", "data")


def verbs_available() -> bool:
    commands = ROOT / "src" / "autolora" / "commands"
    return all((commands / f"{verb}.py").is_file() for verb in REQUIRED_VERBS)


@pytest.mark.slow
@pytest.mark.skipif(not verbs_available(), reason="the autolora verbs are not all present yet")
def test_deleting_one_evaluation_reruns_only_it_and_the_aggregation(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    (tmp_path / "config").mkdir()  # the workflow runs from a folder holding config/
    shutil.copy(ROOT / "config" / "paper_results.csv", tmp_path / "config")
    run = snakemake(
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--set-threads",
        "train=1",
        "evaluate=1",
        workdir=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    cell = tmp_path / "results/paper/runs/tiny-eps4/synth/vanilla/seed1"
    assert (tmp_path / "results/paper/report.md").is_file()

    up_to_date = snakemake("-n", "--configfile", str(config), workdir=tmp_path)
    assert "Nothing to be done" in up_to_date.stdout + up_to_date.stderr

    # another AutoAttack variant re-evaluates every AA cell; it retrains nothing
    with_aa = tmp_path / "with-aa.yaml"
    evaluation = {"autoattack": True, "autoattack_version": "apgd-ce+apgd-t", "n": 8}
    with_aa.write_text(yaml.safe_dump({**TINY, "evaluation": evaluation}))
    variant = snakemake("-n", "--configfile", str(with_aa), workdir=tmp_path)
    assert job_counts(variant.stdout + variant.stderr) == {
        "evaluate": 2,
        "resolve_config": 1,
        "aggregate": 1,
        "crate": 1,
        "all": 1,
    }

    (cell / "eval-best_test.json").unlink()
    rerun = snakemake("-n", "--configfile", str(config), workdir=tmp_path)
    assert job_counts(rerun.stdout + rerun.stderr) == {
        "evaluate": 1,
        "aggregate": 1,
        "crate": 1,
        "all": 1,
    }
    assert "synth/vanilla/seed1/eval-best_test.json" in rerun.stdout

    forced = snakemake(
        "-n",
        "--configfile",
        str(config),
        "--forcerun",
        "results/paper/runs/tiny-eps4/synth/vanilla/seed1/run.json",
        workdir=tmp_path,
    )
    assert job_counts(forced.stdout + forced.stderr) == {
        "train": 1,
        "evaluate": 1,
        "aggregate": 1,
        "crate": 1,
        "all": 1,
    }
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
