"""The GPU check (scripts/gpu-check): its CPU dry run walks every step through the script as the
GPU run would, a failing step is recorded and the next one runs, the time budget skips the steps
that no longer fit (with an injected clock), a step's process that errs, dies or hangs is
recorded, and --prepare makes pyautoattack ready to travel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from autolora.cli import main
from autolora.errors import ConfigError
from autolora.gpucheck.carry import prepare_carry
from autolora.gpucheck.plan import INJECTED, PLAN, Step, select
from autolora.gpucheck.report import OUTPUT_FILES
from autolora.gpucheck.runner import ContextFactory, Outcome, ProcessExecutor, run_plan

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check"
DEVICE_TOOL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run through the script, with an injected failing step after the first."""
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT" and not k.startswith("AUTOLORA_")}
    env["AUTOLORA_PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--threads", "1", "--out", str(out),
         "--inject-failure", "error"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = json.loads((out / "gpu-check.json").read_text())
    return done, out, {step["step"]: step for step in report["steps"]}, report


def test_dry_run_walks_every_step_and_goes_on_after_a_failure(dry_run):
    done, out, steps, report = dry_run
    assert done.returncode == 1, done.stderr[-3000:]  # 1: a step (the injected one) failed
    assert list(steps) == ["environment", "injected-error", *(s.name for s in PLAN[1:])]
    failed = steps["injected-error"]
    assert failed["status"] == "error" and "injected failure" in failed["note"]
    assert failed["figures"] == {"before_the_failure": 1} and "RuntimeError" in failed["traceback"]
    for name, step in steps.items():
        if name != "injected-error":
            assert step["status"] == "passed", (name, step["note"], step["checks"])
            assert step["figures"] and step["headline"] and step["seconds"] > 0, name
    assert report["mode"] == "dry-run" and report["isolation"] == "inline"


def test_dry_run_figures(dry_run):
    _, _, steps, _ = dry_run
    environment = steps["environment"]["figures"]
    assert environment["device"] == "cpu" and environment["matmul_peak_tflops"] > 0

    for name in ("cuda-step-224", "cuda-step-32to224"):
        figures = steps[name]["figures"]
        for method in ("vanilla", "twins", "autolora"):
            # "the device" is the CPU: the same computation, exactly; another start differs
            assert figures[method]["fp32"]["loss_rel_error"] == 0.0
            assert figures[method]["fp32_without_attack"]["loss_rel_error"] == 0.0
            assert figures[method]["fp32"]["grad_cosine"] == pytest.approx(1.0, abs=1e-12)
            assert figures[method]["random_start_deviation"] > 0
    assert steps["cuda-step-32to224"]["figures"]["case"] == "tiny 16px->32 b4"

    attacks = steps["cuda-attacks"]["figures"]
    assert attacks["pgd10"]["identical_pixel_fraction"] == 1.0
    assert attacks["pgd10"]["linf_distance_device"] <= 8 / 255 + 1e-6
    assert attacks["autoattack"]["n"] == 8 and attacks["autoattack"]["clean_accuracy"] == 100.0

    demo = steps["demo-cell"]["figures"]
    assert demo["exit_codes"] == {
        "uninterrupted": 0, "sigterm": 75, "resume": 0, "evaluate": 0, "fast_paths": 0
    }  # fmt: skip
    assert demo["state_after_sigterm"]["in_epoch"]["epoch"] == 2
    assert demo["state_after_sigterm"]["in_epoch"]["next_batch"] == 1
    assert demo["resume_vs_uninterrupted"] == {
        "identical": True, "history_identical": True, "max_abs_difference": 0.0
    }  # fmt: skip
    assert demo["evaluation"]["device"] == "cpu" and demo["evaluation"]["n"] == 16

    timings = steps["bench-resnet18"]["figures"]["timings"]
    assert {(t["fast_path"], t["method"]) for t in timings} == {
        (path, method)
        for path in ("plain fp32 eager", "channels_last")
        for method in ("standard", "vanilla", "twins", "autolora")
    }
    assert all(t["images_per_s"] > 0 for t in timings)
    checks = [c for c in steps["bench-resnet18"]["checks"] if c["name"].startswith("fast path")]
    assert len(checks) == 3 and all(c["ok"] for c in checks)  # channels_last x 3 methods
    assert steps["bench-resnet18"]["figures"]["complete"] is True
    checks = [c for c in steps["bench-resnet50"]["checks"] if c["name"].startswith("fast path")]
    assert len(checks) == 3 and all(c["ok"] for c in checks)  # 2 flags and both, vanilla

    projections = steps["bench-projection"]["figures"]["projections"]
    # the two bench steps' rows together: plain from the first (same case), both fast variants
    assert [p["fast_path"] for p in projections] == [
        "plain fp32 eager", "channels_last", "channels_last+bf16"
    ]  # fmt: skip
    for projection in projections:
        assert projection["cells"] == 21 and projection["gpu_hours"] > 0
        assert projection["cost"]["backbone"] == {"tiny": 1.0}
        assert projection["cost"]["train_images_per_s"] > 0

    data = steps["data-path"]["figures"]
    for name in ("resized-32", "cifar-16to32"):
        assert data[name]["supply_gpu_augment_images_per_s"] > 0
        assert data[name]["supply_cpu_transform_images_per_s"] > 0
        assert all(v > 0 for v in data[name]["demand_vanilla_images_per_s"].values())
        assert 0 <= data[name]["wait_fraction_gpu_augment_fast"] <= 1
    augment = {c["name"]: c["value"] for c in steps["data-path"]["checks"]}
    assert augment["cifar-16to32: device augmentation vs the CPU transform (pad_crop)"] == 0.0

    assert steps["bench-compile"]["figures"]["timings"]
    assert steps["bench-equivalence"]["figures"]["summary"][0]["method"] == "vanilla"


def test_dry_run_outputs_fit_the_device_tool_and_end_with_the_table(dry_run):
    done, out, steps, _ = dry_run
    files = sorted(path.name for path in out.iterdir())
    assert files == sorted(OUTPUT_FILES) and len(files) <= 8
    assert all(path.is_file() and DEVICE_TOOL_NAME.match(path.name) for path in out.iterdir())
    printed = done.stdout.rstrip().splitlines()
    table = printed[-len(steps) :]
    assert [row.split()[0] for row in table] == list(steps)
    assert [row.split()[1] for row in table] == [s["status"] for s in steps.values()]
    assert printed[-len(steps) - 2].startswith("step ") and "status" in printed[-len(steps) - 2]
    assert (out / "summary.txt").read_text().rstrip().splitlines()[-len(steps) :] == table
    assert "train_images_per_s:" in done.stdout  # the calibrated cost: block is printed
    with tarfile.open(out / "steps.tar.gz") as archive:
        names = set(archive.getnames())
    assert "demo-cell/resumed/run.json" in names and "bench-resnet50/bench.json" in names
    assert all(f"{name}/log.txt" in names and f"{name}/result.json" in names for name in steps)


# ---- the runner, without torch -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_skips_the_steps_that_no_longer_fit():
    clock = FakeClock()
    takes = {"a": 30, "b": 50, "c": 40, "d": 5}
    steps = [
        Step("a", "injected:error", "", budget_s=60, min_s=10),
        Step("b", "injected:error", "", budget_s=60, min_s=10),
        Step("c", "injected:error", "", budget_s=60, min_s=25),
        Step("d", "injected:error", "", budget_s=60, min_s=5),
    ]
    limits = {}

    def execute(step: Step, timeout_s: float) -> Outcome:
        limits[step.name] = timeout_s
        clock.now += min(takes[step.name], timeout_s)
        return Outcome(step.name, "passed", 0.0, {"checks": []})

    outcomes = run_plan(steps, budget_s=100, execute=execute, clock=clock, reserve_s=0)
    assert [o.status for o in outcomes] == ["passed", "passed", "skipped", "passed"]
    assert limits == {"a": 60, "b": 60, "d": 20}  # d gets what is left, not its 60 s
    assert outcomes[2].note == "time budget: 20 s left, the step needs 25 s"
    assert [o.seconds for o in outcomes] == [30, 50, 0, 5]


def test_an_essential_step_that_errs_stops_the_rest():
    clock = FakeClock()
    steps = [Step("env", "x:y", "", 60, 1, essential=True), Step("next", "x:y", "", 60, 1)]

    def execute(step: Step, timeout_s: float) -> Outcome:
        return Outcome(step.name, "error", 0.0, {"error": "no CUDA"}, "no CUDA")

    outcomes = run_plan(steps, budget_s=100, execute=execute, clock=clock)
    assert [o.status for o in outcomes] == ["error", "skipped"]
    assert outcomes[1].note == "not run: step env did not complete"


def test_a_step_process_that_errs_dies_or_hangs_is_recorded(tmp_path):
    execute = ProcessExecutor(ContextFactory(dry_run=True, repo=REPO, work_root=tmp_path))
    error = execute(INJECTED["error"], 60)
    assert error.status == "error" and "injected failure" in error.note
    assert error.record["figures"] == {"before_the_failure": 1}
    assert "Traceback" in (tmp_path / "injected-error" / "log.txt").read_text()
    crash = execute(INJECTED["crash"], 60)
    assert crash.status == "crashed" and crash.note == f"killed by {signal.SIGKILL.name}"
    assert crash.record["figures"] == {"before_the_crash": 1}
    hang = execute(INJECTED["hang"], 1)  # never returns by itself: stopped at its limit
    assert hang.status == "timeout"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_a_step_process_dies_with_its_runner(tmp_path):
    """The worker has its own session (so its group can be killed at its limit); when the runner
    itself is killed (the device tool's time limit), the worker must not run on."""
    runner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from autolora.gpucheck.plan import INJECTED; "
         "from autolora.gpucheck.runner import ContextFactory, ProcessExecutor; "
         "ProcessExecutor(ContextFactory(dry_run=True, repo=Path(sys.argv[1]), "
         "work_root=Path(sys.argv[2])))(INJECTED['hang'], 600)", str(REPO), str(tmp_path)],
    )  # fmt: skip
    result = tmp_path / "injected-hang" / "result.json"
    pid = None
    while pid is None:  # until the worker has started and recorded its pid
        assert runner.poll() is None
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = json.loads(result.read_text())["figures"].get("pid")
        time.sleep(0.02)
    runner.kill()
    runner.wait()
    while _alive(pid):  # PR_SET_PDEATHSIG: the kernel kills it once its parent is gone
        time.sleep(0.05)


def test_every_step_has_the_same_options_on_the_gpu_and_in_the_dry_run():
    """The dry run walks the GPU run's code with the same option keys (a key only the GPU run
    read would first fail on the GPU)."""
    for step in PLAN:
        assert set(step.gpu) == set(step.dry), step.name
        for key, value in step.gpu.items():
            if isinstance(value, dict):
                assert set(value) == set(step.dry[key]) or not step.dry[key] or not value, key


def test_bench_arguments_of_every_plan_step_parse():
    from autolora.cli import build_parser

    parser = build_parser()
    for step in PLAN:
        for dry_run in (False, True):
            args = step.options(dry_run).get("args")
            if args:
                parsed = parser.parse_args(["bench", *args, "--json", "x.json", "--budget-s", "1"])
                assert parsed.device == ("cpu" if dry_run else "cuda"), step.name


def test_select_puts_injected_steps_second_and_refuses_unknown_names():
    steps = select(PLAN, only=["environment", "data-path"], inject=["crash"])
    assert [s.name for s in steps] == ["environment", "injected-crash", "data-path"]
    with pytest.raises(ConfigError, match="unknown step 'bench'"):
        select(PLAN, skip=["bench"])


def test_user_errors(tmp_path, capsys):
    (tmp_path / "summary.txt").write_text("an earlier run\n")
    assert main(["gpu-check", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "already holds the outputs of a GPU check" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["gpu-check", "--dry-run", "--out", str(other), "--inject-failure", "hang"]) == 2
    assert "--isolation process" in capsys.readouterr().err
    assert not other.exists()
    assert main(["gpu-check", "--budget-s", "0"]) == 2


def test_fault_signal_name(monkeypatch):
    from autolora.train import fault_signal_from_env

    monkeypatch.delenv("AUTOLORA_FAULT_SIGNAL", raising=False)
    assert fault_signal_from_env() == signal.SIGUSR1
    monkeypatch.setenv("AUTOLORA_FAULT_SIGNAL", "SIGTERM")
    assert fault_signal_from_env() == signal.SIGTERM
    monkeypatch.setenv("AUTOLORA_FAULT_SIGNAL", "SIGKILL")
    with pytest.raises(ConfigError, match="AUTOLORA_FAULT_SIGNAL='SIGKILL'"):
        fault_signal_from_env()


def test_prepare_copies_pyautoattack_modules_without_its_example_model(tmp_path):
    carry = prepare_carry(tmp_path)
    site = carry / "site"
    manifest = json.loads((carry / "MANIFEST.json").read_text())
    assert manifest["packages"]["pyautoattack"].startswith("0.2.0")
    assert (site / "pyautoattack" / "autoattack.py").is_file()
    assert not (site / "pyautoattack" / "examples").exists()
    metadata = next(site.glob("pyautoattack-*.dist-info")) / "METADATA"
    assert "Version: 0.2.0" in metadata.read_text()
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((carry / name).read_bytes()).hexdigest() == digest
    assert sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) < 1 << 20
