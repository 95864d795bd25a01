"""Robustness of `autolora train` as a process: SIGKILL and resume is bit-identical to an
uninterrupted run; SIGTERM / SIGUSR1 save state and exit 75; a NaN loss exits 3 and keeps the last
good state; an injected failure fires once and the retry completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autolora.checkpoints import load_state, read_state_info
from autolora.cli import main
from autolora.data.loaders import make_loader
from autolora.data.prepared import PreparedDataset
from autolora.models import build_model
from autolora.planning.layout import STATE_FILE as STATE_FILE_NAME

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parent))
from test_train import NUM_CLASSES, make_inputs, make_spec  # noqa: E402

CHECKPOINT_FILES = ("final", "best_val", "best_test")
POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 240


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """Inputs, a spec file and the uninterrupted reference run (AutoLoRa: λ, AutoLR with a
    decision after every epoch, best-weight reloads — the most state to resume)."""
    root = tmp_path_factory.mktemp("resume")
    data, weights = make_inputs(root)
    spec = make_spec("autolora", epochs=3, autolr={"checkpoints": [0, 1, 2], "rho": 1.0})
    spec["overrides"]["batch_size"] = 16  # 8 batches per epoch: room to land a signal mid-epoch
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    inputs = {"root": root, "data": data, "weights": weights, "spec": spec_file}
    reference = root / "reference"
    assert train_here(inputs, reference) == 0
    inputs["reference"] = reference
    return inputs


def command(inputs, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autolora.cli",
        "train",
        "--spec",
        str(inputs["spec"]),
        "--data",
        str(inputs["data"]),
        "--weights",
        str(inputs["weights"]),
        "--out",
        str(out),
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLORA_FAULT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def train_here(inputs, out: Path) -> int:
    """The same command through the CLI in this process (no interpreter start-up): resumes and
    fault-injection runs. Bit-identity across processes holds with the same thread count."""
    return main(command(inputs, out)[3:])


def wait_for_epoch(process: subprocess.Popen, state_dir: Path, epoch: int) -> int:
    """Poll the committed state until ``epoch`` epochs are finished; return the epoch seen."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        try:
            info = read_state_info(state_dir)
        except (ValueError, FileNotFoundError):  # replaced between listing and reading
            info = None
        if info is not None and info["epoch"] >= epoch:
            return info["epoch"]
        time.sleep(POLL_SECONDS)
    raise AssertionError("no epoch state appeared in time")


def assert_same_weights(out: Path, reference: Path, where: str = "") -> None:
    for name in CHECKPOINT_FILES:
        ours = load_file(str(out / f"{name}.safetensors"))
        theirs = load_file(str(reference / f"{name}.safetensors"))
        assert ours.keys() == theirs.keys()
        different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not different, f"{name}: tensors differ after resume {where}: {different[:5]}"


def history_without_time(out: Path) -> list[dict]:
    lines = (out / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "seconds"]
    return [[row.split(",")[i] for i in keep] for row in lines]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(cell):
    out = cell["root"] / "killed"
    process = subprocess.Popen(
        command(cell, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment()
    )
    seen = wait_for_epoch(process, out / "state", 1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists()
    assert read_state_info(out / "state")["epoch"] < 3

    assert train_here(cell, out) == 0
    assert_same_weights(out, cell["reference"])
    assert history_without_time(out) == history_without_time(cell["reference"])
    record = json.loads((out / "run.json").read_text())
    assert [a["resumed_from_epoch"] for a in record["attempts"]][0] is None
    assert record["attempts"][1]["resumed_from_epoch"] >= seen
    assert not (out / "state").exists()


def test_sigterm_saves_state_exits_75_and_resumes_bit_identically(cell):
    out = cell["root"] / "terminated"
    process = subprocess.Popen(
        command(cell, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
        text=True,
    )
    wait_for_epoch(process, out / "state", 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 75, stderr
    assert "SIGTERM" in stderr and "rerun" in stderr
    info = read_state_info(out / "state")
    assert not (out / "run.json").exists()

    assert train_here(cell, out) == 0
    where = f"from epoch {info['epoch']}, mid-epoch position {info['in_epoch']}"
    assert_same_weights(out, cell["reference"], where)


def test_signal_at_a_batch_boundary_saves_the_position_in_the_epoch(cell, monkeypatch, capsys):
    out = cell["root"] / "usr1"
    monkeypatch.setenv("AUTOLORA_FAULT_SIGNAL_AT", "2:3:once")
    assert train_here(cell, out) == 75
    stderr = capsys.readouterr().err
    assert "SIGUSR1" in stderr and "epoch 2 before batch 4" in stderr
    info = read_state_info(out / "state")
    assert info["epoch"] == 1
    assert info["in_epoch"]["epoch"] == 2 and info["in_epoch"]["next_batch"] == 3

    assert train_here(cell, out) == 0
    assert_same_weights(out, cell["reference"])
    assert history_without_time(out) == history_without_time(cell["reference"])
    record = json.loads((out / "run.json").read_text())
    assert record["attempts"][1]["resumed_at_batch"] == 3


def test_non_finite_loss_exits_3_and_keeps_the_last_good_state(cell, monkeypatch, capsys):
    out = cell["root"] / "nan"
    monkeypatch.setenv("AUTOLORA_FAULT_NAN_AT", "2:2")
    assert train_here(cell, out) == 3
    stderr = capsys.readouterr().err
    assert "non-finite loss" in stderr and "epoch 2, batch 2" in stderr
    assert not (out / "run.json").exists()
    info, groups = load_state(out / "state")
    assert info["epoch"] == 1 and info["in_epoch"] is None

    # The kept state is usable, and its λ come from the LoRa accuracy of its own weights on the
    # augmented training split (recomputed here with a plain loop, eval mode).
    model = build_model("tiny", NUM_CLASSES, lora_rank=8)
    model.load_state_dict(groups["model"])
    model.eval()
    view = PreparedDataset.open(cell["data"]).split("paper", "train")
    loader = make_loader(
        view, train=True, seed=0, epoch=1, batch_size=16, stream="lambda", shuffle=False
    )
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x, branch="lora").argmax(1) == y).sum())
    accuracy = 100.0 * correct / len(view)
    assert info["lora_train_sa"] == pytest.approx(accuracy)
    assert info["lambdas"] == pytest.approx([1 - accuracy / 100, 6 * accuracy / 100])


def test_injected_failure_fires_once_and_the_retry_completes(cell, monkeypatch):
    out = cell["root"] / "failed"
    monkeypatch.setenv("AUTOLORA_FAULT_FAIL_AT", "3:1:once")
    with pytest.raises(RuntimeError, match="injected failure"):
        train_here(cell, out)
    assert read_state_info(out / "state")["epoch"] == 2
    assert train_here(cell, out) == 0
    assert_same_weights(out, cell["reference"])


def start_waiting(cell, out: Path, fault: str) -> subprocess.Popen:
    """`autolora train` with AUTOLORA_FAULT_WAIT_SIGNAL_AT=fault, returned once it says it is
    waiting for the stop signal (an event, whatever the machine's speed)."""
    process = subprocess.Popen(
        command(cell, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(AUTOLORA_FAULT_WAIT_SIGNAL_AT=fault),
        text=True,
    )
    for line in process.stderr:
        if "waiting for a stop signal" in line:
            return process
    process.wait(timeout=60)
    raise AssertionError(f"training ended (exit {process.returncode}) without waiting")


def test_a_fault_point_waits_at_a_batch_for_the_stop_signal(cell):
    out = cell["root"] / "wait-batch"
    process = start_waiting(cell, out, "2:3:once")
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 75, stderr
    info = read_state_info(out / "state")
    assert info["in_epoch"]["epoch"] == 2 and info["in_epoch"]["next_batch"] == 3

    assert train_here(cell, out) == 0  # ":once": the resumed attempt does not wait
    assert_same_weights(out, cell["reference"])


def test_a_signal_before_the_wait_point_is_held_until_it(cell):
    out = cell["root"] / "wait-held"
    process = subprocess.Popen(
        command(cell, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(AUTOLORA_FAULT_WAIT_SIGNAL_AT="3:end"),
        text=True,
    )
    wait_for_epoch(process, out / "state", 1)  # the handler is installed, epoch 3 is ahead
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 0, stderr  # it ran to the wait point, then completed
    assert len(json.loads((out / "run.json").read_text())["attempts"]) == 1
    assert_same_weights(out, cell["reference"])


def test_a_retry_after_a_late_signal_restores_the_outputs_without_training(cell):
    """SIGTERM after the last epoch's state is committed: the run completes (exit 0). A scheduler
    that counts the job as failed deletes its outputs; the retry restores them from the cell's
    completed/, byte for byte, and records the attempt, without training."""
    out = cell["root"] / "wait-end"
    process = start_waiting(cell, out, "3:end")
    assert read_state_info(out / "state")["epoch"] == 3
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 0, stderr
    assert_same_weights(out, cell["reference"])
    outputs = ["run.json", "history.csv", *(f"{name}.safetensors" for name in CHECKPOINT_FILES)]
    finished = {name: (out / name).read_bytes() for name in outputs}
    for name in outputs:  # what Snakemake does with the outputs of a job it counts as failed
        (out / name).unlink()

    started = time.monotonic()
    assert train_here(cell, out) == 0
    seconds = time.monotonic() - started
    for name in outputs[1:]:
        assert (out / name).read_bytes() == finished[name], name
    record = json.loads((out / "run.json").read_text())
    before = json.loads(finished["run.json"])
    assert record["attempts"][:-1] == before["attempts"]
    restore = record["attempts"][-1]
    assert restore["restored_outputs"] is True and restore["resumed_from_epoch"] == 3
    resealed = ("attempts", "record_sha256")  # the new attempt changes the record's seal
    assert {k: v for k, v in record.items() if k not in resealed} == {
        k: v for k, v in before.items() if k not in resealed
    }
    log = (out / restore["log"]).read_text()
    assert "outputs are restored" in log and "epoch 1:" not in log
    assert not (out / "state").exists()
    print(f"restored in {seconds:.1f} s")


def test_a_second_trainer_refuses_and_a_dead_trainers_lock_does_not_block(cell, capsys):
    out = cell["root"] / "locked"
    first = start_waiting(cell, out, "1:2")  # holds the cell's lock while it waits
    assert train_here(cell, out) == 2
    error = capsys.readouterr().err
    assert "being trained by another process" in error and f'"pid": {first.pid}' in error
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert train_here(cell, out) == 0  # the kernel released the dead process's lock
    assert_same_weights(out, cell["reference"])


def test_each_attempt_keeps_its_own_log(cell, monkeypatch):
    out = cell["root"] / "logs"
    monkeypatch.setenv("AUTOLORA_FAULT_FAIL_AT", "2:1:once")
    with pytest.raises(RuntimeError, match="injected failure"):
        train_here(cell, out)
    assert train_here(cell, out) == 0
    attempts = json.loads((out / "run.json").read_text())["attempts"]
    logs = [out / attempt["log"] for attempt in attempts]
    assert len(set(logs)) == 2 and sorted((out / "logs").iterdir()) == sorted(logs)
    failed, resumed = (log.read_text() for log in logs)
    assert "injected failure" in failed and "Traceback" in failed
    assert "resuming" in resumed and "injected failure" not in resumed


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only: CI runs as root for its SLURM cluster)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_state_save_on_a_full_disk_leaves_nothing_behind_and_resumes_once_space_is_back(
    cell, small_disk
):
    out = small_disk / "cell"
    process = start_waiting(cell, out, "2:3:once")  # epoch 1's state is committed
    state = out / "state"
    info = read_state_info(state)
    committed = sorted([STATE_FILE_NAME, *(entry["file"] for entry in info["files"].values())])
    sizes = {
        group: (state / entry["file"]).stat().st_size for group, entry in info["files"].items()
    }
    # Room for the new model file but not for the optimizer's: the save fails half-way.
    room = sizes["model"] + sizes["optimizer"] // 2 + 16 * 4096
    filler = small_disk / "filler"
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(small_disk).free - room)
    free_before = shutil.disk_usage(small_disk).free
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode not in (0, 75) and "No space left" in stderr, stderr[-2000:]
    assert sorted(path.name for path in state.iterdir()) == committed
    assert read_state_info(state) == info and load_state(state) is not None
    assert shutil.disk_usage(small_disk).free >= free_before - 4 * 4096  # only log lines added

    filler.unlink()
    assert train_here(cell, out) == 0
    assert_same_weights(out, cell["reference"])
    record = json.loads((out / "run.json").read_text())
    assert record["attempts"][1]["resumed_from_epoch"] == 1
