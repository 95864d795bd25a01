"""`autolora train` end to end on a tiny synthetic dataset: each method learns, λ follows the
measured LoRa accuracy, the AutoLR reload path runs, records are complete and re-runs are safe."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autolora.cli import main
from autolora.data.prepared import PreparedDataset
from autolora.data.synthetic import write_synthetic_dataset
from autolora.errors import ConfigError, DataError
from autolora.models import build_model
from autolora.planning.cells import resolve_cell
from autolora.train import parse_runtime, parse_spec, train_cell
from autolora.weights import write_backbone

NUM_CLASSES = 4
TRAIN_SIZE = 120  # 114 train + 6 validation images (5% held out)
HYPER = {
    "vanilla": {"lr": 0.03, "weight_decay": 1e-4},
    "twins": {"lr": 0.03, "weight_decay": 1e-4, "twins_gamma": 1.0},
}


def make_inputs(root: Path, num_classes: int = NUM_CLASSES) -> tuple[Path, Path]:
    """A tiny synthetic dataset and random tiny-backbone weights (torchvision key names) with
    the record beside them that `autolora train` checks them against."""
    data = write_synthetic_dataset(
        root / "data",
        name="synth",
        num_classes=num_classes,
        train_size=TRAIN_SIZE,
        test_size=40,
        image_size=16,
        seed=3,
    )
    torch.manual_seed(123)
    backbone = build_model("tiny", 10).backbone.state_dict()
    weights = root / "weights.safetensors"
    write_backbone(backbone, weights, arch="tiny", eps_pt_255=0, source={"random_init_seed": 123})
    return Path(data), weights


def make_spec(method: str, *, epochs: int = 3, **overrides) -> dict:
    base = {
        "epochs": epochs,
        "batch_size": 24,
        "attack": {"train_steps": 2, "eval_steps": 3},
        "runtime": {"device": "cpu", "deterministic": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {
        "protocol": "paper",
        "arch": "tiny",
        "eps_pt": 0,
        "dataset": "synth",
        "method": method,
        "seed": 0,
        "hyper": HYPER,
        "overrides": base,
    }


def read_history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_from(path: Path, method_options: dict):
    model = build_model("tiny", NUM_CLASSES, **method_options)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def plain_test_accuracy(model, data: Path) -> float:
    view = PreparedDataset.open(data).split("paper", "test")
    images = torch.stack([view[i][0] for i in range(len(view))]).float() / 255
    labels = torch.tensor([view[i][1] for i in range(len(view))])
    with torch.no_grad():
        return 100.0 * float((model(images).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("train-inputs"))


MODEL_OPTIONS = {"vanilla": {}, "twins": {"dual_bn": True}, "autolora": {"lora_rank": 8}}


@pytest.mark.parametrize("method", ["vanilla", "twins", "autolora"])
def test_each_method_learns_and_records_the_run(method, inputs, tmp_path):
    data, weights = inputs
    spec = make_spec(method)
    out = tmp_path / "cell"
    result = train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    assert result.status == "complete"

    history = read_history(out)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    losses = [float(row["train_loss"]) for row in history]
    assert losses[-1] < losses[0], losses
    test_sa = [float(row["test_sa"]) for row in history]
    assert max(test_sa) > 100 / NUM_CLASSES + 15, test_sa

    # The last epoch's test SA is real: recompute it from final.safetensors with a plain loop.
    final = model_from(out / "final.safetensors", MODEL_OPTIONS[method])
    assert plain_test_accuracy(final, data) == pytest.approx(test_sa[-1])

    # Best checkpoints are the argmax epochs of their metric (first one on ties).
    record = json.loads((out / "run.json").read_text())
    for name, column in (("best_val", "val_pgd10"), ("best_test", "test_pgd10")):
        values = [float(row[column]) for row in history]
        best_epoch = values.index(max(values)) + 1
        entry = record["checkpoints"][name]
        assert (entry["epoch"], entry["value"], entry["metric"]) == (
            best_epoch,
            max(values),
            column,
        )
        assert entry["sha256"] == sha256(out / f"{name}.safetensors")
    assert record["checkpoints"]["final"]["epoch"] == 3

    assert record["kind"] == "training_run"
    assert record["config"] == json.loads(json.dumps(resolve_cell(spec).to_dict()))
    assert record["cell_id"] == f"paper/runs/tiny-eps0/synth/{method}/seed0"
    assert record["epochs_run"] == 3 and len(record["attempts"]) == 1
    assert record["protocol"]["name"] == "paper"
    assert record["protocol"]["choices"]["selection"] is None  # the evaluation's choice
    roles = {item["role"]: item for item in record["inputs"]}
    assert roles["weights"]["sha256"] == sha256(weights)
    assert roles["dataset"]["sha256"] == sha256(data / "dataset.json")
    assert roles["split_manifest"]["sha256"] == sha256(data / "splits" / "paper.csv")
    for output in record["outputs"]:
        assert output["sha256"] == sha256(Path(output["path"]))
    for key in ("code", "packages", "python", "host", "device", "started", "finished", "command"):
        assert record[key] is not None, key
    assert record["device"] == "cpu"
    assert record["packages"]["torch"] is not None
    assert not (out / "state").exists()

    if method == "autolora":
        # λ1 = 1 − A, λ2 = 6·A with A the LoRa accuracy measured before each epoch (Eq. 6–7).
        train_count = len(PreparedDataset.open(data).split("paper", "train"))
        accuracies = [float(row["lora_train_sa"]) for row in history]
        for row, accuracy in zip(history, accuracies, strict=True):
            fraction = accuracy / 100
            assert float(row["lambda1"]) == pytest.approx(1 - fraction, abs=1e-12)
            assert float(row["lambda2"]) == pytest.approx(6 * fraction, abs=1e-12)
            # a full pass over the training split: a whole number of correct images
            correct = accuracy * train_count / 100
            assert correct == pytest.approx(round(correct), abs=1e-6)
        assert len(set(accuracies)) > 1, "λ never changed: the λ pass did not follow training"
        # SPEC 4.3 (paper: lora_blocks last); the tiny backbone has one block per stage
        assert record["protocol"]["choices"]["lora_blocks"] == "last"
        lora = record["lora"]
        assert lora["lora_blocks"] == "last" and lora["rank"] == 8
        assert lora["update_blocks"] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
        model = build_model("tiny", NUM_CLASSES, lora_rank=8)
        assert (
            lora["parameters_created"]
            == lora["parameters_used"]
            == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        )
    else:
        assert all(row["lambda1"] == "" for row in history)
        assert record["lora"] is None and record["protocol"]["choices"]["lora_blocks"] is None
    gamma_on = record["protocol"]["choices"]["twins_gamma_on"]
    assert gamma_on == ("fixed" if method == "twins" else None)


def test_autolr_reload_path(inputs, tmp_path):
    """Checkpoints every epoch with rho = 1: the first epoch whose validation robust accuracy does
    not rise halves the LR and reloads the best weights; min_lr just below the initial LR makes
    that same decision stop the run, so the final weights must be the best-validation ones."""
    data, weights = inputs
    spec = make_spec(
        "autolora",
        epochs=4,
        autolr={"checkpoints": [0, 1, 2, 3], "rho": 1.0, "min_lr": 0.009},
        attack={"eps": 0.5, "step": 0.25},  # a strong attack keeps robust accuracy flat
    )
    out = tmp_path / "cell"
    train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    history = read_history(out)
    val = [float(row["val_pgd10"]) for row in history]
    expected_stop = next(e for e in range(2, 5) if val[e - 1] <= val[e - 2])  # 1-based epoch
    assert len(history) == expected_stop, val
    assert [row["reloaded_best"] == "True" for row in history] == [
        e == expected_stop for e in range(1, expected_stop + 1)
    ]
    assert all(float(row["lr"]) == 0.01 for row in history)
    assert float(history[-1]["next_lr"]) == 0.005
    record = json.loads((out / "run.json").read_text())
    assert "below the minimum" in record["stop_reason"]
    best_epoch = record["checkpoints"]["best_val"]["epoch"]
    assert best_epoch == val.index(max(val)) + 1 < expected_stop
    # The last epoch trained at a non-zero LR, yet the final weights are the best-validation
    # weights of an earlier epoch, tensor for tensor: the reload happened.
    final = load_file(str(out / "final.safetensors"))
    best_val = load_file(str(out / "best_val.safetensors"))
    assert final.keys() == best_val.keys()
    assert all(torch.equal(final[k], best_val[k]) for k in final)


def test_gradient_similarity_does_not_change_training(inputs, tmp_path):
    data, weights = inputs
    plain, measured = tmp_path / "plain", tmp_path / "measured"
    train_cell(make_spec("vanilla", epochs=1), data_dir=data, weights=weights, out_dir=plain)
    spec = make_spec("vanilla", epochs=1, grad_similarity_batches=2)
    train_cell(spec, data_dir=data, weights=weights, out_dir=measured)
    similarity = float(read_history(measured)[0]["grad_similarity"])
    assert -1.0 <= similarity <= 1.0 and similarity != 0.0
    assert read_history(plain)[0]["grad_similarity"] == ""
    a = load_file(str(plain / "final.safetensors"))
    b = load_file(str(measured / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_is_a_no_op_and_another_identity_supersedes_the_finished_run(
    inputs, tmp_path, capsys
):
    data, weights = inputs
    out = tmp_path / "cell"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec("vanilla", epochs=1)))
    argv = ["train", "--spec", str(spec_file), "--data", str(data), "--weights", str(weights)]
    assert main([*argv, "--out", str(out)]) == 0
    before = sha256(out / "run.json")
    first = json.loads((out / "run.json").read_text())
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert sha256(out / "run.json") == before
    spec_input = next(item for item in first["inputs"] if item["role"] == "spec")
    assert spec_input["sha256"] == sha256(spec_file)

    # Another identity (epochs 2): the finished run is kept aside, not refused nor overwritten,
    # and the cell trains again.
    result = train_cell(make_spec("vanilla", epochs=2), data_dir=data, weights=weights, out_dir=out)
    assert result.status == "complete" and result.record.epochs_run == 2
    [superseded] = result.record.superseded
    assert superseded["path"].startswith("superseded/") and "identity" in superseded["path"]
    assert "epochs: 1 -> 2" in superseded["reason"]
    kept = out / superseded["path"]
    assert sha256(kept / "completed" / "run.json") == before
    assert json.loads((kept / "run.json").read_text()) == first  # the old declared outputs
    assert [int(row["epoch"]) for row in read_history(out)] == [1, 2]
    log = (out / result.record.attempts[0]["log"]).read_text()
    assert "superseded" in log and "epochs: 1 -> 2" in log


def replace_weights(weights: Path, seed: int) -> None:
    """Another backbone written to the same path (as a re-run pre-training or conversion does)."""
    torch.manual_seed(seed)
    backbone = build_model("tiny", 10).backbone.state_dict()
    write_backbone(backbone, weights, arch="tiny", eps_pt_255=0, source={"random_init_seed": seed})


def replace_data(data: Path, seed: int) -> None:
    """Another dataset prepared into the same folder (as a re-run preparation does)."""
    write_synthetic_dataset(
        data,
        name="synth",
        num_classes=NUM_CLASSES,
        train_size=TRAIN_SIZE,
        test_size=40,
        image_size=16,
        seed=seed,
        overwrite=True,
    )


OUTPUTS = ("run.json", "history.csv", "best_val.safetensors", "best_test.safetensors")
REPLACE = {"weights": lambda d, w: replace_weights(w, 7), "data": lambda d, w: replace_data(d, 9)}
ROLE = {"weights": "weights", "data": "dataset"}


@pytest.mark.parametrize("changed", ["weights", "data"])
def test_a_finished_run_of_other_inputs_is_superseded_not_restored(tmp_path, changed):
    """New --weights (or --data) at the same path: Snakemake deletes the outputs and reruns the
    job; the kept run was computed from the old files, so it must not be restored."""
    data, weights = make_inputs(tmp_path)
    out = tmp_path / "cell"
    spec = make_spec("vanilla", epochs=1)
    first = train_cell(spec, data_dir=data, weights=weights, out_dir=out).record.to_json()
    REPLACE[changed](data, weights)
    for name in (*OUTPUTS, "final.safetensors"):
        (out / name).unlink()  # what Snakemake does before it reruns the job

    result = train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    assert result.status == "complete"
    record = result.record.to_json()
    role = ROLE[changed]
    now = {item["role"]: item["sha256"] for item in record["inputs"]}
    was = {item["role"]: item["sha256"] for item in first["inputs"]}
    current = weights if changed == "weights" else data / "dataset.json"
    assert now[role] == sha256(current) != was[role]
    [superseded] = record["superseded"]
    assert "inputs" in superseded["path"] and role in superseded["reason"]
    assert was[role][:12] in superseded["reason"] and now[role][:12] in superseded["reason"]
    old = json.loads((out / superseded["path"] / "completed" / "run.json").read_text())
    assert old["record_sha256"] == first["record_sha256"]
    assert len(record["attempts"]) == 1 and record["attempts"][0]["resumed_from_epoch"] is None

    # Unchanged identity and inputs: a retry restores the new run in seconds, as before.
    for name in OUTPUTS:
        (out / name).unlink()
    again = train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    assert again.status == "restored" and again.record.superseded == record["superseded"]


@pytest.mark.parametrize("changed", ["weights", "data"])
def test_a_resume_state_of_other_inputs_is_superseded_not_resumed(tmp_path, changed, monkeypatch):
    """The run record's inputs are the files the run trained from: a state computed from other
    files is kept aside and the cell trains from scratch on the current ones."""
    data, weights = make_inputs(tmp_path)
    out = tmp_path / "cell"
    spec = make_spec("vanilla", epochs=2)
    monkeypatch.setenv("AUTOLORA_FAULT_FAIL_AT", "2:1:once")
    with pytest.raises(RuntimeError, match="injected failure"):
        train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    REPLACE[changed](data, weights)
    monkeypatch.delenv("AUTOLORA_FAULT_FAIL_AT")

    record = train_cell(spec, data_dir=data, weights=weights, out_dir=out).record.to_json()
    assert [a["resumed_from_epoch"] for a in record["attempts"]] == [None]
    now = {item["role"]: item["sha256"] for item in record["inputs"]}
    current = weights if changed == "weights" else data / "dataset.json"
    assert now[ROLE[changed]] == sha256(current)
    [superseded] = record["superseded"]
    kept = out / superseded["path"]
    assert (kept / "state" / "state.json").is_file() and not (kept / "completed").exists()
    assert [int(row["epoch"]) for row in read_history(out)] == [1, 2]


def test_a_changed_output_gets_the_advice_that_applies(inputs, tmp_path):
    """The declared outputs are hard links to completed/: a byte changed in place damages the
    kept copy too, so "delete it to have it restored" would not work; a replaced file (a new
    inode) leaves the kept copy intact, and then it does."""
    data, weights = inputs
    out = tmp_path / "cell"
    spec = make_spec("vanilla", epochs=1)
    train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    final = out / "final.safetensors"
    original = final.read_bytes()

    replaced = bytearray(original)
    replaced[len(replaced) // 2] ^= 1
    final.unlink()
    final.write_bytes(bytes(replaced))  # a new file under the output's name
    with pytest.raises(DataError, match="delete it to have it restored from .*completed") as error:
        train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    final.unlink()  # as advised
    assert train_cell(spec, data_dir=data, weights=weights, out_dir=out).status == "restored"
    assert final.read_bytes() == original

    with open(final, "r+b") as handle:  # in place: the kept copy is the same file
        handle.seek(len(original) // 2)
        handle.write(bytes([original[len(original) // 2] ^ 1]))
    with pytest.raises(DataError) as error:
        train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    message = str(error.value)
    assert "have it restored" not in message and "cannot be restored" in message
    assert f"delete {out}" in message and "train the cell again" in message


def test_parse_spec_accepts_json_text_and_yaml_files(tmp_path):
    spec = make_spec("vanilla")
    assert parse_spec(json.dumps(spec)) == (spec, None)
    yaml_file = tmp_path / "cell.yaml"
    yaml_file.write_text("dataset: synth\nmethod: twins\nseed: 6\n")
    assert parse_spec(str(yaml_file)) == (
        {"dataset": "synth", "method": "twins", "seed": 6},
        yaml_file,
    )
    with pytest.raises(ConfigError, match="--spec"):
        parse_spec(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="JSON"):
        parse_spec("{not json")


def test_user_mistakes_are_config_errors(inputs, tmp_path, monkeypatch):
    data, weights = inputs
    with pytest.raises(ConfigError, match="overrides.epoch"):
        train_cell(
            {**make_spec("vanilla"), "overrides": {"epoch": 3}},
            data_dir=data,
            weights=weights,
            out_dir=tmp_path / "a",
        )
    monkeypatch.setenv("AUTOLORA_FAULT_NAN_AT", "two:1")
    with pytest.raises(ConfigError, match="AUTOLORA_FAULT_NAN_AT"):
        train_cell(make_spec("vanilla"), data_dir=data, weights=weights, out_dir=tmp_path / "b")


def test_device_side_augmentation_trains_bit_identically_to_the_cpu_path(inputs, tmp_path):
    """pad_crop on the device uses the CPU path's random parameters: same weights, bit for bit."""
    data, weights = inputs
    cpu_path, device_path = tmp_path / "cpu", tmp_path / "device"
    train_cell(make_spec("autolora", epochs=1), data_dir=data, weights=weights, out_dir=cpu_path)
    spec = make_spec("autolora", epochs=1, runtime={"gpu_augment": True})
    train_cell(spec, data_dir=data, weights=weights, out_dir=device_path)
    assert read_history(cpu_path)[0]["lambda1"] == read_history(device_path)[0]["lambda1"]
    a = load_file(str(cpu_path / "final.safetensors"))
    b = load_file(str(device_path / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_runtime_change_resumes_instead_of_refusing_and_is_recorded(inputs, tmp_path):
    """Workers, device and fast paths say how a run is computed, not what it is: a retry with
    another runtime resumes the saved state, and each attempt records its own runtime."""
    data, weights = inputs
    out = tmp_path / "cell"
    spec = make_spec("vanilla", epochs=2)
    os.environ["AUTOLORA_FAULT_FAIL_AT"] = "2:1"
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    finally:
        del os.environ["AUTOLORA_FAULT_FAIL_AT"]
    retry = make_spec("vanilla", epochs=2, runtime={"num_workers": 1})
    train_cell(retry, data_dir=data, weights=weights, out_dir=out)
    record = json.loads((out / "run.json").read_text())
    attempts = record["attempts"]
    assert [a["resumed_from_epoch"] for a in attempts] == [None, 1]
    assert [a["runtime"]["num_workers"] for a in attempts] == [0, 1]


def test_parse_runtime_checks_every_key(tmp_path):
    assert parse_runtime('{"device": "cpu", "num_workers": 2}') == {
        "device": "cpu",
        "num_workers": 2,
    }
    path = tmp_path / "runtime.yaml"
    path.write_text("bf16: true\n")
    assert parse_runtime(str(path)) == {"bf16": True}
    with pytest.raises(ConfigError, match=r"--runtime\.workers"):
        parse_runtime('{"workers": 2}')
    with pytest.raises(ConfigError, match="--runtime is not valid JSON"):
        parse_runtime("{workers")
