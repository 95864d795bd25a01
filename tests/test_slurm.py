"""`snakemake --profile slurm` against a real single-node SLURM cluster (scripts/slurm-local).

One campaign, three workflow runs, shared by the tests of this module:

- ``local``: the grid run without SLURM (``--cores 2``), the reference numbers;
- ``slurm``: the same grid through the repository's ``slurm`` profile plus local-cluster overrides
  (squeue status, short status intervals, one retry), with two faults injected by an ``autolora``
  stand-in on PATH: cell ``synth-b`` raises mid-epoch 2 (``AUTOLORA_FAULT_FAIL_AT``), and cell
  ``synth-c``, under a 3-minute time limit, stops after its first batch until the rule's
  ``--signal=TERM@120`` comes (``AUTOLORA_FAULT_WAIT_SIGNAL_AT``: a job still training when its
  time runs out, on any machine, however fast or busy); its retry gets 30 minutes;
- ``rerun``: the same SLURM command after the fault is removed.

The two runs go side by side (local and SLURM) to keep the wall time down. Without a cluster the
module fails (the fixture raises), it never skips: CI must run these tests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import yaml

# The campaign fixture runs three workflows (a few minutes); a hung cluster fails, it does not hang.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = ROOT / "scripts" / "slurm-local"
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--configfile", "test-config.yaml"]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "slurm", "envs")
RUN_TIMEOUT_S = 540

EPOCHS = 2
FAIL_AT = "2:2"  # epoch 2, batch 2: epoch 1 is committed, epoch 2 is lost
WAIT_AT = "1:1"  # the slow cell waits after epoch 1, batch 1 for the time-limit signal
CELL = "paper/runs/tiny-eps4/{dataset}/vanilla/seed0"
PLAIN, FAULTY, SLOW = "synth-a", "synth-b", "synth-c"
CELLS = {name: CELL.format(dataset=name) for name in (PLAIN, FAULTY, SLOW)}

# Local-cluster settings on top of the repository's profile: no accounting, so squeue; short
# status intervals (the executor waits init-seconds, then backs off by 10 s per check that finds
# nothing finished: with its default of 40 s a tiny run spends minutes waiting); one retry.
SLURM_OVERRIDES = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--seconds-between-status-checks",
    "3",
    "--slurm-no-account",
    "--jobs",
    "8",
    "--retries",
    "1",
    "--latency-wait",
    "5",
]
# The slow cell's first attempt gets 3 minutes: the rule's --signal=TERM@120 arrives after 60-90 s
# (slurmctld checks time limits every 30 s), while it waits for it. Its retry, and every other job,
# gets 30 minutes.
SLOW_RUNTIME = f"train:runtime=3 if wildcards.dataset == '{SLOW}' and attempt == 1 else 30"
# One thread per job in both runs: the same arithmetic, so the same numbers.
ONE_THREAD = ["--set-threads", "train=1", "evaluate=1", "pretrain_backbone=1"]


def synthetic(seed: int) -> dict:
    return {
        "source": "synthetic",
        "num_classes": 10,
        "train": 96,
        "test": 30,
        "image_size": 16,
        "seed": seed,
        "hyper": {"vanilla": {"lr": 0.01, "weight_decay": 1.0e-4}},
    }


CONFIG = {
    "protocol": "paper",
    "seeds": [0],
    "results": "results",
    "resources": "resources",
    "datasets": {PLAIN: synthetic(11), FAULTY: synthetic(12), SLOW: synthetic(13)},
    "weights": {
        "source": "pretrain",
        "pretrain": {"epochs": 1, "train_size": 64, "test_size": 20, "attack_steps": 1},
    },
    "training": {
        "epochs": EPOCHS,
        "batch_size": 32,
        "milestones": [1],
        "runtime": {"device": "cpu", "num_workers": 0, "deterministic": True},
    },
    "evaluation": {"autoattack": True, "n": 10},
    "tables": {
        "table1": {
            "arch": "tiny",
            "eps_pt": 4,
            "datasets": [PLAIN, FAULTY, SLOW],
            "methods": ["vanilla"],
        }
    },
    "cost": {
        "train_images_per_s": 100,
        "eval_images_per_s": 400,
        "autoattack_images_per_s": 20,
        "backbone": {"tiny": 1.0},
        "min_runtime_min": 10,
        "mem_mb": {"tiny": 1000},
    },
}

# The stand-in `autolora` the SLURM runs find first on PATH: the real command, with the faults of
# the cells named here. Bash, so that it can hold back and pass on a signal that comes too early.
WRAPPER = """#!/usr/bin/env bash
set -u
real={real}
out=""
previous=""
for arg in "$@"; do
    [[ $previous == --out ]] && out=$arg
    previous=$arg
done
if [[ ${{1:-}} == train && $out == */{faulty} && -e {fault_flag} ]]; then
    export AUTOLORA_FAULT_FAIL_AT={fail_at}
fi
if [[ ${{1:-}} == train && $out == */{slow} && ! -e {slow_used} ]]; then
    : >{slow_used}
    # `autolora train` stops at this batch until a stop signal comes: SLURM's --signal=TERM@120.
    export AUTOLORA_FAULT_WAIT_SIGNAL_AT={wait_at}
    # The child ignores SIGTERM until `autolora train` installs its handler (an earlier signal
    # would just kill it); a signal that comes before is passed on once the handler is there
    # (SLURM signals every process of the job step, this one included).
    (trap '' TERM USR1 && exec "$real" "$@") &
    child=$!
    stopping=0
    trap 'stopping=1' TERM USR1
    handles_term() {{
        local mask
        mask=$(awk '/^SigCgt:/ {{print $2}}' "/proc/$child/status" 2>/dev/null) || return 1
        [[ -n $mask ]] && (((16#$mask >> 14) & 1))
    }}
    until ! kill -0 "$child" 2>/dev/null || handles_term; do sleep 0.2; done
    if ((stopping)); then
        kill -TERM "$child" 2>/dev/null
    fi
    wait "$child"
    status=$?
    while kill -0 "$child" 2>/dev/null; do  # `wait` returns early when a trapped signal comes
        wait "$child"
        status=$?
    done
    exit "$status"
fi
exec "$real" "$@"
"""


@dataclass
class WorkflowRun:
    workdir: Path
    returncode: int
    output: str
    seconds: float

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


@dataclass
class Campaign:
    local: WorkflowRun
    slurm: WorkflowRun
    rerun: WorkflowRun
    run_records_before_rerun: dict[str, bytes]  # cell name -> run.json after the first SLURM run
    evaluated_before_rerun: set[str]  # cells with an evaluation record after the first SLURM run


# ---- the cluster -------------------------------------------------------------------------------


def slurm_local(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SLURM_LOCAL), command], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    """Start the local cluster (install if needed); the environment its clients need."""
    was_running = slurm_local("status").returncode == 0
    for command in ("install", "start"):
        result = slurm_local(command)
        if result.returncode != 0:
            pytest.fail(
                f"scripts/slurm-local {command} failed (exit {result.returncode}); the SLURM tests "
                f"need the local cluster:\n{result.stdout}{result.stderr}",
                pytrace=False,
            )
    exports = dict(re.findall(r"^export (\w+)='([^']*)'$", slurm_local("env").stdout, re.M))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(exports, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    yield env
    if not was_running:
        slurm_local("stop")


def sbatch_wait(env: dict[str, str], *options: str, script: str, out: Path) -> str:
    """Submit `script` as a batch job, wait for it, return its output."""
    subprocess.run(
        ["sbatch", "--wait", "--quiet", f"--output={out}", *options, "--wrap", script],
        env=env,
        check=True,
        timeout=120,
    )
    return out.read_text()


def test_cluster_schedules_a_gpu_job_on_the_fake_gres(cluster_env, tmp_path):
    output = sbatch_wait(
        cluster_env,
        "--gpus=1",
        "--time=1",
        script='echo "node=$SLURMD_NODENAME gpus=${CUDA_VISIBLE_DEVICES:-none}"',
        out=tmp_path / "job.out",
    )
    assert re.fullmatch(r"node=localhost gpus=\d+\n", output), output
    # The executor's job step clears SLURM_CONF before its inner srun: the default path must work.
    plain = {key: value for key, value in cluster_env.items() if key != "SLURM_CONF"}
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%G"], env=plain, capture_output=True, text=True)
    assert sinfo.returncode == 0 and "gpu:" in sinfo.stdout, sinfo.stderr


# ---- the campaign ------------------------------------------------------------------------------


@dataclass
class RunningWorkflow:
    workdir: Path
    process: subprocess.Popen
    log: IO[str]
    started: float

    def finish(self) -> WorkflowRun:
        try:
            returncode = self.process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            returncode = self.process.wait(timeout=60)
        self.log.close()
        output = (self.workdir / "snakemake.out").read_text()
        return WorkflowRun(self.workdir, returncode, output, time.monotonic() - self.started)


def start_workflow(workdir: Path, args: list[str], env: dict[str, str]) -> RunningWorkflow:
    """Start Snakemake in a copy of the workflow, as a user runs it from the repository root."""
    if not workdir.exists():
        workdir.mkdir(parents=True)
        for name in WORKFLOW_FILES:
            source = ROOT / name
            if source.is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(source, workdir / name, ignore=ignore)
            elif source.exists():
                shutil.copy2(source, workdir / name)
        (workdir / "test-config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    log = (workdir / "snakemake.out").open("w")
    process = subprocess.Popen(
        [*SNAKEMAKE, *args], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    return RunningWorkflow(workdir, process, log, time.monotonic())


def slurm_args() -> list[str]:
    # The copied repository profile, found as users find it; the overrides fit the local cluster.
    return ["--profile", "slurm", *SLURM_OVERRIDES, *ONE_THREAD, "--set-resources", SLOW_RUNTIME]


@pytest.fixture(scope="module")
def campaign(cluster_env, tmp_path_factory) -> Campaign:
    base = tmp_path_factory.mktemp("slurm-campaign")
    local_dir, slurm_dir = base / "local", base / "slurm"
    tools = base / "bin"
    tools.mkdir()
    fault_flag, slow_used = base / "fault-on", base / "slow-used"
    fault_flag.touch()
    wrapper = tools / "autolora"
    wrapper.write_text(
        WRAPPER.format(
            real=BIN / "autolora",
            faulty=CELLS[FAULTY],
            slow=CELLS[SLOW],
            fault_flag=fault_flag,
            slow_used=slow_used,
            fail_at=FAIL_AT,
            wait_at=WAIT_AT,
        )
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    slurm_env = dict(cluster_env, PATH=os.pathsep.join([str(tools), cluster_env["PATH"]]))
    local_env = {key: value for key, value in cluster_env.items() if key != "SLURM_CONF"}

    local = start_workflow(local_dir, ["--cores", "2", *ONE_THREAD], local_env)
    slurm_run = start_workflow(slurm_dir, slurm_args(), slurm_env).finish()
    local_run = local.finish()
    (slurm_dir / "snakemake.out").rename(slurm_dir / "snakemake-first.out")

    run_records = {
        name: (slurm_dir / "results" / cell / "run.json").read_bytes()
        for name, cell in CELLS.items()
        if (slurm_dir / "results" / cell / "run.json").exists()
    }
    evaluated = {
        name for name, cell in CELLS.items() if any((slurm_dir / "results" / cell).glob("eval-*"))
    }
    fault_flag.unlink()
    rerun = start_workflow(slurm_dir, slurm_args(), slurm_env).finish()
    return Campaign(local_run, slurm_run, rerun, run_records, evaluated)


# ---- reading what the runs left ----------------------------------------------------------------


def submissions(output: str) -> list[tuple[str, str, str]]:
    """(rule, wildcard values joined by '_', SLURM job id) of every job a run submitted, read from
    the executor's log paths: <logdir>/rule_<rule>/[<wildcards>/]<job id>.log."""
    jobs = []
    for job_id, log in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+?)\)", output):
        parent = Path(log).parent
        if parent.name.startswith("rule_"):
            jobs.append((parent.name[len("rule_") :], "", job_id))
        else:
            jobs.append((parent.parent.name[len("rule_") :], parent.name, job_id))
    return jobs


def train_job_ids(output: str, dataset: str) -> list[str]:
    """SLURM job ids of the train jobs of the cell on `dataset`, in submission order."""
    return [
        job_id
        for rule, wildcards, job_id in submissions(output)
        if rule == "train" and dataset in wildcards.split("_")
    ]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def history(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def scontrol_job(env: dict[str, str], job_id: str) -> dict[str, str]:
    text = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def cell_dir(run: WorkflowRun, name: str) -> Path:
    return run.workdir / "results" / CELLS[name]


# ---- the tests ---------------------------------------------------------------------------------


def test_keep_going_finishes_every_cell_but_the_faulty_one_and_the_rerun_completes(campaign):
    assert campaign.local.returncode == 0, campaign.local.tail()
    assert campaign.slurm.returncode != 0, "the injected fault should fail the first SLURM run"
    assert set(campaign.run_records_before_rerun) == {PLAIN, SLOW}, campaign.slurm.tail()
    assert campaign.evaluated_before_rerun == {PLAIN, SLOW}, campaign.slurm.tail()
    assert campaign.rerun.returncode == 0, campaign.rerun.tail()
    assert (campaign.rerun.workdir / "results" / "paper" / "report.md").exists()
    print(
        f"seconds: local {campaign.local.seconds:.0f}, slurm {campaign.slurm.seconds:.0f}, "
        f"rerun {campaign.rerun.seconds:.0f}"
    )


def test_slurm_numbers_equal_local_numbers(campaign):
    """Same config, deterministic CPU arithmetic: SLURM (with a crash and a time-limit resume
    along the way) and the plain local run give identical histories and metrics."""
    for name in CELLS:
        local, slurm = cell_dir(campaign.local, name), cell_dir(campaign.rerun, name)
        local_evals = sorted(p.name for p in local.glob("eval-*.json"))
        assert local_evals, f"no evaluation for {name} in the local run"
        assert sorted(p.name for p in slurm.glob("eval-*.json")) == local_evals
        for eval_name in local_evals:
            expected, got = read_json(local / eval_name), read_json(slurm / eval_name)
            assert got["metrics"] == expected["metrics"], (name, eval_name)
            assert got["autoattack"]["progression"] == expected["autoattack"]["progression"]
        assert history(slurm / "history.csv") == history(local / "history.csv"), name


def test_train_and_evaluate_jobs_ran_on_slurm_with_a_gpu(campaign, cluster_env):
    jobs = submissions(campaign.slurm.output) + submissions(campaign.rerun.output)
    rules = {rule for rule, _, _ in jobs}
    assert {"train", "evaluate"} <= rules, jobs
    for rule, _, job_id in jobs:
        info = scontrol_job(cluster_env, job_id)
        assert info["NodeList"] == "localhost", info
        if rule in ("train", "evaluate"):
            assert "gres/gpu=1" in info.get("TRES", "") or "gpu:1" in info.get("TresPerJob", ""), (
                info
            )


def test_rerun_submits_only_the_failed_cell_and_its_dependants(campaign):
    rerun_jobs = submissions(campaign.rerun.output)
    train = [wildcards for rule, wildcards, _ in rerun_jobs if rule == "train"]
    evaluate = [wildcards for rule, wildcards, _ in rerun_jobs if rule == "evaluate"]
    assert len(train) == 1 and FAULTY in train[0], rerun_jobs
    assert len(evaluate) == 1 and FAULTY in evaluate[0], rerun_jobs
    assert {rule for rule, _, _ in rerun_jobs} == {"train", "evaluate", "aggregate"}, rerun_jobs
    for name in (PLAIN, SLOW):  # finished cells are left alone
        record = cell_dir(campaign.rerun, name) / "run.json"
        assert record.read_bytes() == campaign.run_records_before_rerun[name], name


def test_failed_cell_resumed_from_its_last_completed_epoch(campaign, cluster_env):
    cell = cell_dir(campaign.rerun, FAULTY)
    record = read_json(cell / "run.json")
    attempts = record["attempts"]
    assert attempts[0]["resumed_from_epoch"] is None
    assert len(attempts) >= 2 and all(a["resumed_from_epoch"] == 1 for a in attempts[1:]), attempts
    rerun_train = train_job_ids(campaign.rerun.output, FAULTY)
    assert attempts[-1]["slurm"]["job_id"] == rerun_train[-1]
    assert [int(row["epoch"]) for row in history(cell / "history.csv")] == list(
        range(1, EPOCHS + 1)
    )
    # The first run's attempts of this cell failed on SLURM (the injected RuntimeError).
    for job_id in train_job_ids(campaign.slurm.output, FAULTY):
        assert scontrol_job(cluster_env, job_id)["JobState"] == "FAILED"


def test_time_limit_signal_saves_state_and_the_retry_resumes(campaign, cluster_env):
    cell = cell_dir(campaign.rerun, SLOW)
    record = read_json(cell / "run.json")
    attempts = record["attempts"]
    first_job, retry_job = train_job_ids(campaign.slurm.output, SLOW)
    assert [a["slurm"]["job_id"] for a in attempts] == [first_job, retry_job], attempts
    assert attempts[0]["resumed_from_epoch"] is None
    # The first attempt waited after batch 1 for the signal and saved its position there (at
    # batch 0 if the signal came while `autolora train` was still starting: the stand-in passes
    # it on once the handler is installed, so the state is saved at the first batch boundary).
    resumed = attempts[1]
    assert resumed["resumed_from_epoch"] == 0 and resumed["resumed_at_batch"] in (0, 1), attempts
    first = scontrol_job(cluster_env, first_job)
    assert first["TimeLimit"] == "00:03:00", first
    # The rule's --signal=TERM@120 stops it: `autolora train` saves its state and exits 75, the
    # job fails. Should that signal not come, the time limit's SIGTERM does the same (the job
    # then ends in TIMEOUT).
    assert first["JobState"] in {"FAILED", "TIMEOUT"}, first
    assert scontrol_job(cluster_env, retry_job)["JobState"] == "COMPLETED"
    assert [int(row["epoch"]) for row in history(cell / "history.csv")] == list(
        range(1, EPOCHS + 1)
    )


def test_run_and_evaluation_records_carry_the_slurm_job_and_node(campaign, cluster_env):
    jobs = submissions(campaign.slurm.output) + submissions(campaign.rerun.output)
    for name in CELLS:
        cell = cell_dir(campaign.rerun, name)
        record = read_json(cell / "run.json")
        assert (
            record["slurm"]["job_id"]
            == train_job_ids(campaign.slurm.output + campaign.rerun.output, name)[-1]
        )
        assert record["slurm"]["node"] == "localhost"
        for evaluation in cell.glob("eval-*.json"):
            slurm = read_json(evaluation)["slurm"]
            assert slurm["node"] == "localhost"
            assert ("evaluate", slurm["job_id"]) in {(r, j) for r, _, j in jobs}
        local = read_json(cell_dir(campaign.local, name) / "run.json")
        assert local["slurm"] is None
    assert shutil.which("sbatch", path=cluster_env["PATH"])
