"""`autolora evaluate`: the record's SA and PGD-10 are recomputed here independently; AutoAttack
runs through the adapter; user mistakes are reported with the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autolora.attacks import pgd
from autolora.cli import main
from autolora.data.prepared import PreparedDataset
from autolora.data.synthetic import write_synthetic_dataset
from autolora.errors import ConfigError, DataError
from autolora.evaluate import evaluate_run, stratified_subset
from autolora.models import build_model
from autolora.train import train_cell

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_inputs, make_spec  # noqa: E402

# Standard AutoAttack runs APGD-T and FAB-T against 9 target classes: it needs >= 10 classes.
NUM_CLASSES = 10


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data, weights = make_inputs(root, NUM_CLASSES)
    out = root / "cell"
    # A wide eps lets APGD-CE break every point, so the slower attacks have nothing left to do.
    spec = make_spec("vanilla", epochs=2, attack={"eps": 0.1, "step": 0.025})
    train_cell(spec, data_dir=data, weights=weights, out_dir=out)
    return {"root": root, "data": data, "run": out}


def independent_accuracies(checkpoint: Path, data: Path, positions: list[int], config: dict):
    """SA with a plain forward loop, PGD-10 with ``attacks.pgd`` (no random start), in eval mode,
    on the test images at ``positions`` read straight from the prepared dataset."""
    model = build_model("tiny", NUM_CLASSES)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    view = PreparedDataset.open(data).split("paper", "test")
    n = len(positions)
    images = torch.stack([view[i][0] for i in positions]).float() / 255
    labels = torch.tensor([view[i][1] for i in positions])
    attack = config["attack"]
    clean = adversarial = 0
    for start in range(0, n, config["batch_size"]):
        x, y = (
            images[start : start + config["batch_size"]],
            labels[start : start + config["batch_size"]],
        )
        with torch.no_grad():
            clean += int((model(x).argmax(1) == y).sum())
        x_adv = pgd(
            model,
            x,
            y,
            eps=attack["eps"],
            step=attack["step"],
            steps=attack["eval_steps"],
            random_start=False,
        )
        assert float((x_adv - x).abs().max()) <= attack["eps"] + 1e-6
        with torch.no_grad():
            adversarial += int((model(x_adv).argmax(1) == y).sum())
    return 100.0 * clean / n, 100.0 * adversarial / n


def test_record_numbers_match_an_independent_recomputation(run, tmp_path):
    out = tmp_path / "eval-selected.json"
    record = evaluate_run(
        run["run"], run["data"], checkpoint="selected", n=30, autoattack=False, out=out
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    run_record = json.loads((run["run"] / "run.json").read_text())
    # paper protocol: the reported checkpoint is the best PGD-10 on the test set
    assert record["checkpoint"]["name"] == "best_test"
    assert record["checkpoint"]["requested"] == "selected"
    assert record["checkpoint"]["epoch"] == run_record["checkpoints"]["best_test"]["epoch"]
    assert record["checkpoint"]["sha256"] == sha256(run["run"] / "best_test.safetensors")
    assert record["run_record"]["sha256"] == sha256(run["run"] / "run.json")
    assert record["n"] == 30 and record["metrics"]["AA"] is None and record["autoattack"] is None
    positions = record["subset"]["test_positions"]
    assert len(positions) == 30 and record["subset"]["selection"] == "class-stratified"

    sa, pgd10 = independent_accuracies(
        run["run"] / "best_test.safetensors", run["data"], positions, run_record["config"]
    )
    assert record["metrics"]["SA"] == pytest.approx(sa)
    assert record["metrics"]["PGD10"] == pytest.approx(pgd10)
    assert record["metrics"]["PGD10"] <= record["metrics"]["SA"]
    assert record["kind"] == "evaluation" and record["cell_id"] == run_record["cell_id"]
    roles = {item["role"]: item["sha256"] for item in record["inputs"]}
    assert roles["dataset"] == sha256(run["data"] / "dataset.json")
    assert roles["checkpoint"] == record["checkpoint"]["sha256"]


def test_whole_test_set_pgd_matches_the_training_history(run, tmp_path):
    """Evaluating best_test on the whole test set reproduces the PGD-10 the training loop logged."""
    record = evaluate_run(
        run["run"],
        run["data"],
        checkpoint="best_test",
        autoattack=False,
        out=tmp_path / "eval.json",
    )
    run_record = json.loads((run["run"] / "run.json").read_text())
    assert record["n"] == 40 and record["subset"] is None
    assert record["metrics"]["PGD10"] == pytest.approx(
        run_record["checkpoints"]["best_test"]["value"]
    )


@pytest.mark.parametrize(
    ("option", "version", "attacks"),
    [
        ([], "standard", ["apgd-ce", "apgd-t", "fab-t", "square"]),
        (["--autoattack-version", "apgd-ce+apgd-t"], "apgd-ce+apgd-t", ["apgd-ce", "apgd-t"]),
    ],
)
def test_cli_runs_autoattack_through_the_adapter(run, tmp_path, capsys, option, version, attacks):
    out = tmp_path / "eval-final.json"
    argv = [
        "evaluate",
        "--run",
        str(run["run"]),
        "--data",
        str(run["data"]),
        "--checkpoint",
        "final",
        "--n",
        "8",
        "--device",
        "cpu",
        *option,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert f"({version})" in capsys.readouterr().out
    metrics, autoattack = record["metrics"], record["autoattack"]
    assert record["n"] == 8 and record["checkpoint"]["name"] == "final"
    # AutoAttack's own clean accuracy is the SA computed by the plain loop
    assert autoattack["clean_accuracy"] == pytest.approx(metrics["SA"])
    assert metrics["SA"] > 0, "nothing for AutoAttack to attack: pick more test images"
    assert 0 <= metrics["AA"] <= metrics["SA"]
    progression = [step["robust_accuracy"] for step in autoattack["progression"]]
    assert progression == sorted(progression, reverse=True)
    if progression:
        assert progression[-1] == pytest.approx(metrics["AA"])
    assert autoattack["version"] == version and autoattack["attacks"] == attacks
    assert {step["attack"] for step in autoattack["progression"]} <= set(attacks)


def test_the_subset_is_seeded_class_stratified_and_recorded(run, tmp_path):
    view = PreparedDataset.open(run["data"]).split("paper", "test")
    # a class-ordered split of 4 classes × 10: its first 12 images are one class and a bit
    ordered = [c for c in range(4) for _ in range(10)]
    chosen = stratified_subset(ordered, 12)
    assert [ordered[p] for p in chosen].count(0) == 3
    assert sorted(ordered[p] for p in chosen) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert chosen == sorted(set(chosen)) == stratified_subset(ordered, 12)  # seeded
    assert chosen != stratified_subset(ordered, 12, seed=1)
    assert set(ordered[:12]) == {0, 1}  # what "the first n" would have measured
    # uneven classes: largest remainders, ties to the lower class; all when n covers the set
    uneven = [0] * 5 + [1] * 3 + [2] * 2
    assert sorted(uneven[p] for p in stratified_subset(uneven, 5)) == [0, 0, 0, 1, 2]
    assert stratified_subset(uneven, 10) == list(range(10))

    record = evaluate_run(
        run["run"], run["data"], checkpoint="final", n=20, autoattack=False, out=tmp_path / "e.json"
    )
    subset = record["subset"]
    expected = stratified_subset(view.labels, 20)
    assert subset["test_positions"] == expected and subset["seed"] == 0
    assert subset["examples"] == [int(view.indices[p]) for p in expected]
    per_class = [int(view.labels[p]) for p in expected]
    assert max(per_class.count(c) for c in range(NUM_CLASSES)) <= 20 // NUM_CLASSES + 1


def test_user_mistakes_name_the_fix(run, tmp_path):
    with pytest.raises(DataError, match="run.json"):
        evaluate_run(tmp_path, run["data"], checkpoint="final", out=tmp_path / "x.json")
    with pytest.raises(ConfigError, match="--n"):
        evaluate_run(run["run"], run["data"], checkpoint="final", n=0, out=tmp_path / "x.json")
    tampered = tmp_path / "tampered"
    shutil.copytree(run["run"], tampered)
    weights = load_file(str(tampered / "final.safetensors"))
    from autolora.checkpoints import metadata_from_bytes, save_weights

    final = tampered / "final.safetensors"
    metadata = metadata_from_bytes(final.read_bytes(), final, "a test checkpoint")
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_weights(tampered / "final.safetensors", weights, metadata)
    with pytest.raises(DataError, match="sha256"):
        evaluate_run(tampered, run["data"], checkpoint="final", out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_evaluating_on_other_data_than_the_run_was_trained_on_is_refused(run, tmp_path):
    # Same format, same classes, different images: a re-prepared or swapped dataset.
    other = write_synthetic_dataset(
        tmp_path / "other",
        name="synth",
        num_classes=NUM_CLASSES,
        train_size=120,
        test_size=40,
        image_size=16,
        seed=99,
    )
    with pytest.raises(DataError, match=r"dataset.json \(sha256 \w+\) is not the dataset run"):
        evaluate_run(run["run"], other, checkpoint="final", out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_selected_is_the_specs_selection_else_the_protocols(run, tmp_path):
    """The selection is the evaluation's: a run trained without a test pass each epoch has no
    best_test, and `selected` (the paper protocol's best_test) says so and what to do."""
    data = run["data"]
    weights = run["root"] / "weights.safetensors"
    spec = make_spec("vanilla", epochs=1, test_each_epoch=False)
    train_cell(spec, data_dir=data, weights=weights, out_dir=tmp_path / "cell")
    out = tmp_path / "x.json"
    with pytest.raises(DataError, match="'selected' is the protocol's selection, best_test"):
        evaluate_run(tmp_path / "cell", data, checkpoint="selected", n=8, out=out)
    chosen = make_spec("vanilla", epochs=1, test_each_epoch=False, selection="best_val")
    train_cell(chosen, data_dir=data, weights=weights, out_dir=tmp_path / "chosen")
    record = evaluate_run(tmp_path / "chosen", data, checkpoint="selected", n=8, out=out)
    assert record["checkpoint"]["name"] == "best_val"
