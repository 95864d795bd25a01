"""`autolora pretrain`: adversarial pre-training of the tiny backbone on a synthetic source task."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from autolora import cli
from autolora.data.synthetic import generate_synthetic_arrays
from autolora.models import build_model, load_backbone_state
from autolora.pretrain import SOURCE_SEED

SMALL = ["--classes", "5", "--train-size", "500", "--test-size", "200", "--image-size", "16"]


@pytest.mark.slow
def test_pretrain_reaches_robust_accuracy_well_above_chance(tmp_path, capsys):
    out = tmp_path / "tiny-eps8.safetensors"
    args = ["pretrain", "--arch", "tiny", "--eps", "8", "--out", str(out), "--epochs", "4"]
    assert cli.main([*args, *SMALL, "--attack-steps", "3", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    metrics = record["metrics"]
    with capsys.disabled():
        print(f"\n{printed.strip()}")
    assert metrics["chance_accuracy"] == 20.0
    assert metrics["robust_accuracy"] >= 2 * metrics["chance_accuracy"]
    assert metrics["robust_accuracy"] < metrics["clean_accuracy"]  # the attack does bite
    assert record["attack"]["eval"]["eps"] == pytest.approx(8 / 255)
    assert record["source"]["seed"] == SOURCE_SEED

    # The file is the converted format: torchvision keys, loadable into the tiny backbone.
    # With the pre-trained head it reproduces the recorded clean accuracy on the source task.
    state = load_file(str(out))
    model = build_model("tiny", 5)
    load_backbone_state(model, state)
    model.backbone.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    images, labels = generate_synthetic_arrays(
        num_classes=5, count=200, image_size=16, seed=SOURCE_SEED, part="test"
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        accuracy = 100.0 * float(
            (model.eval()(x).argmax(1) == torch.from_numpy(labels)).float().mean()
        )
    assert accuracy == pytest.approx(metrics["clean_accuracy"])


def test_pretrain_eps0_is_standard_training(tmp_path):
    out = tmp_path / "tiny-eps0.safetensors"
    args = ["pretrain", "--eps", "0", "--out", str(out), "--epochs", "1", *SMALL]
    assert cli.main([*args, "--train-size", "100", "--test-size", "50"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["eps_pt"] == 0 and record["attack"]["train"]["eps"] == 0
    # no attack at eps 0: robust accuracy is the clean accuracy
    assert record["metrics"]["robust_accuracy"] == record["metrics"]["clean_accuracy"]


def test_pretrain_refuses_the_real_backbones(tmp_path, capsys):
    args = [
        "pretrain",
        "--arch",
        "resnet18",
        "--eps",
        "4",
        "--out",
        str(tmp_path / "x.safetensors"),
    ]
    assert cli.main(args) == 2
    assert "weights download" in capsys.readouterr().err
