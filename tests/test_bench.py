"""`autolora bench` at its tiniest size through the CLI, and its arithmetic on hand-made rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from autolora import bench
from autolora.bench import (
    INHERENT_ROBUST_MULTIPLE,
    BenchCase,
    RunAccuracy,
    StepTiming,
    calibration,
    equivalence_summary,
    fast_path_speedups,
    project_grid,
)
from autolora.cli import main
from autolora.errors import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
PLAIN = "plain fp32 eager"


def test_inherent_multiple_is_26_forwards_over_3():
    # 10 attack steps x (forward + input-gradient backward = 2 forwards)
    # + natural and adversarial training passes x (forward + full backward = 3 forwards)
    forwards_robust = 10 * 2 + 2 * 3
    assert forwards_robust == 26
    assert math.isclose(INHERENT_ROBUST_MULTIPLE, 26 / 3)
    assert abs(INHERENT_ROBUST_MULTIPLE - 8.6667) < 1e-4


def _row(method, seconds, *, case="r18", arch="resnet18", path=PLAIN, standard=None, batch=128):
    return bench.step_timing(
        BenchCase(arch, 224, batch),
        bench.FastPaths() if path == PLAIN else bench.FastPaths(bf16=True),
        method,
        seconds,
        standard,
        {"standard": 3e9, method: 27e9},
    )


def test_step_ratios_by_hand():
    standard = _row("standard", 0.1)
    vanilla = _row("vanilla", 0.95, standard=0.1)
    assert standard.multiple_of_standard is None and standard.overhead_vs_inherent is None
    assert standard.images_per_s == pytest.approx(1280.0)
    assert vanilla.images_per_s == pytest.approx(128 / 0.95)
    assert vanilla.multiple_of_standard == pytest.approx(9.5)
    assert vanilla.overhead_vs_inherent == pytest.approx(9.5 * 3 / 26)  # 1.096: meets 1.15
    assert vanilla.counted_multiple == pytest.approx(9.0)
    assert vanilla.tflops == pytest.approx(27e9 / 0.95 / 1e12)
    lines = bench.targets_met([standard, vanilla], [])
    assert lines == [f"{vanilla.case} {PLAIN} vanilla: overhead 1.10 meets the <= 1.15 target"]


def test_fast_path_speedups_by_hand():
    rows = [
        _row("vanilla", 1.0),
        _row("vanilla", 0.25, path="bf16"),
        _row("twins", 2.0, path="bf16"),  # no plain twins row: no speed-up
    ]
    (speedup,) = fast_path_speedups(rows)
    assert (speedup.method, speedup.fast_path) == ("vanilla", "bf16")
    assert speedup.speedup == pytest.approx(4.0)
    assert "meets the >= 3x" in bench.targets_met([], [speedup])[0]


def _timing(arch, method, images_per_s, case=None):
    return StepTiming(
        case=case or arch,
        arch=arch,
        fast_path=PLAIN,
        method=method,
        images_per_s=images_per_s,
        seconds_per_step=128 / images_per_s,
        flops_per_step=1.0,
        multiple_of_standard=None,
        overhead_vs_inherent=None,
        counted_multiple=None,
    )


def test_calibration_by_hand():
    rows = [
        _timing("resnet18", "vanilla", 100.0, case="r18 224"),
        _timing("resnet18", "vanilla", 300.0, case="r18 32->224"),  # mean s/img: (1/100+1/300)/2
        _timing("resnet18", "autolora", 75.0),
        _timing("resnet50", "vanilla", 50.0),
        _timing("resnet50", "autolora", 25.0),
    ]
    evaluation = [
        {"arch": "resnet18", "pgd10_images_per_s": 600.0, "autoattack_images_per_s": 10.0},
        {"arch": "resnet50", "pgd10_images_per_s": 200.0},
    ]
    section = calibration(rows, evaluation, PLAIN)
    r18 = 1 / ((1 / 100 + 1 / 300) / 2)  # 150 img/s
    assert section["train_images_per_s"] == pytest.approx(150.0)
    assert section["backbone"] == pytest.approx({"resnet18": 1.0, "resnet50": r18 / 50})
    # autolora: vanilla/autolora = 150/75 = 2 on resnet18, 50/25 = 2 on resnet50
    assert section["method"] == pytest.approx({"vanilla": 1.0, "autolora": 2.0})
    assert section["eval_images_per_s"] == 600.0
    assert section["autoattack_images_per_s"] == 10.0
    text = bench.format_cost_section(section)
    pasted = yaml.safe_load(text)["cost"]
    assert pasted["train_images_per_s"] == 150
    assert pasted["backbone"]["resnet50"] == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="vanilla"):
        calibration([_timing("resnet18", "autolora", 75.0)], [], PLAIN)


def test_project_grid_by_hand(tmp_path):
    """One synthetic dataset (train 200 -> 190 + 10 validation, test 60), 2 epochs, vanilla,
    one seed; measured 10 img/s training, 20 img/s PGD-10, 2 img/s AutoAttack."""
    config = {
        "protocol": "paper",
        "seeds": [0],
        "datasets": {
            "synth": {
                "source": "synthetic",
                "num_classes": 10,
                "train": 200,
                "test": 60,
                "image_size": 16,
                "seed": 1,
                "hyper": {"vanilla": {"lr": 0.01, "weight_decay": 1e-4}},
            }  # fmt: skip
        },
        "weights": {"source": "pretrain", "pretrain": {"epochs": 1}},
        "training": {"epochs": 2},
        "evaluation": {"autoattack": True, "n": None},
        "tables": {
            "table1": {"arch": "tiny", "eps_pt": 4, "datasets": ["synth"], "methods": ["vanilla"]}
        },  # fmt: skip
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    rows = [_timing("tiny", "vanilla", 10.0)]
    evaluation = [
        {"arch": "tiny", "pgd10_images_per_s": 20.0, "autoattack_images_per_s": 2.0},
    ]
    projection = project_grid(path, rows, evaluation)
    (entry,) = projection["projections"]
    train_min = 2 * (190 / 10 + (10 + 60) / 20) / 60  # epochs x (train + val/test evaluation)
    evaluate_min = 60 * (2 / 20 + 1 / 2) / 60  # SA + PGD-10 passes + AutoAttack
    assert entry["cells"] == 1 and entry["unprojected_cells"] == 0
    assert entry["train_gpu_hours"] == pytest.approx(train_min / 60)
    assert entry["evaluate_gpu_hours"] == pytest.approx(evaluate_min / 60)
    assert "train_images_per_s: 10" in projection["summary"]


def test_project_grid_matches_the_plan_when_measured_equals_configured():
    """Rows whose throughputs are the demo config's cost section reproduce `autolora plan`."""
    from autolora.planning.costmodel import CostModel

    configured = CostModel.from_config(yaml.safe_load(DEMO_CONFIG.read_text()))
    base = configured.train_images_per_s
    rows = [
        _timing("tiny", m, base / configured.method[m]) for m in ("vanilla", "twins", "autolora")
    ]
    evaluation = [
        {
            "arch": "tiny",
            "pgd10_images_per_s": configured.eval_images_per_s,
            "autoattack_images_per_s": configured.autoattack_images_per_s,
        }
    ]
    projection = project_grid(DEMO_CONFIG, rows, evaluation)
    (entry,) = projection["projections"]
    assert entry["gpu_hours"] == pytest.approx(projection["configured_gpu_hours"])
    doubled = [_timing(r.arch, r.method, 2 * r.images_per_s) for r in rows]
    evaluation2 = [{k: (2 * v if k != "arch" else v) for k, v in evaluation[0].items()}]
    (faster,) = project_grid(DEMO_CONFIG, doubled, evaluation2)["projections"]
    assert faster["gpu_hours"] == pytest.approx(entry["gpu_hours"] / 2)


def test_equivalence_summary_by_hand():
    runs = [
        RunAccuracy(PLAIN, "vanilla", 0, 60.0, 30.0),
        RunAccuracy(PLAIN, "vanilla", 1, 70.0, 40.0),
        RunAccuracy("bf16", "vanilla", 0, 61.0, 30.0),
        RunAccuracy("bf16", "vanilla", 1, 71.0, 44.0),
    ]
    (entry,) = equivalence_summary(runs)
    clean, pgd = entry["clean_accuracy"], entry["pgd_accuracy"]
    assert clean["plain"] == pytest.approx([65.0, math.sqrt(50)])
    assert clean["paired_difference"] == pytest.approx(1.0)
    assert pgd["paired_difference"] == pytest.approx(2.0)
    assert clean["within_seed_noise"] and pgd["within_seed_noise"]
    far = runs[:2] + [RunAccuracy("bf16", "vanilla", s, 90.0, 35.0) for s in (0, 1)]
    (entry,) = equivalence_summary(far)
    assert not entry["clean_accuracy"]["within_seed_noise"]  # +25 points vs noise 2*sqrt(50/2)=10


def test_bench_cli_tiny(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(
        ["bench", "--device", "cpu", "--batch-size", "4", "--repeats", "1", "--warmup", "0",
         "--autoattack-n", "2", "--methods", "vanilla", "autolora", "--fast", "channels_last",
         "--config", str(DEMO_CONFIG), "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    timings = record["timings"]
    assert [(t["fast_path"], t["method"]) for t in timings] == [
        (path, method)
        for path in (PLAIN, "channels_last")
        for method in ("standard", "vanilla", "autolora")
    ]
    table = [line.split() for line in printed.splitlines() if line.startswith("tiny 32px b4 ")]
    for t in timings:
        assert any(t["method"] in words and f"{t['images_per_s']:.1f}" in words for words in table)
        assert math.isfinite(t["images_per_s"]) and t["images_per_s"] > 0
        if t["method"] == "standard":
            standard = t
            continue
        assert t["multiple_of_standard"] == pytest.approx(
            t["seconds_per_step"] / standard["seconds_per_step"]
        )
        assert t["overhead_vs_inherent"] == pytest.approx(t["multiple_of_standard"] * 3 / 26)
        # counted FLOPs check the derivation: ~26/3 plus the first layer's input gradients
        assert 8.0 < t["counted_multiple"] < 11.0
    speedups = record["speedups"]
    assert [sp["method"] for sp in speedups] == ["standard", "vanilla", "autolora"]
    for speedup, plain, fast in zip(speedups, timings[:3], timings[3:], strict=True):
        assert speedup["speedup"] == pytest.approx(fast["images_per_s"] / plain["images_per_s"])
        assert f"{speedup['speedup']:.2f}x plain fp32 eager" in printed
    (evaluation,) = record["evaluation"]
    assert evaluation["pgd10_images_per_s"] > 0 and evaluation["autoattack_images_per_s"] > 0
    assert "inherent robust/standard multiple: 8.67" in printed
    assert "projected GPU-hours of" in printed and "train_images_per_s:" in printed
    projection = record["projection"]["projections"]
    assert [p["fast_path"] for p in projection] == [PLAIN, "channels_last"]
    assert all(p["gpu_hours"] > 0 and p["cells"] == 21 for p in projection)


def test_bench_cli_user_errors(capsys):
    assert main(["bench", "--device", "cpu", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_bench_budget_stops_new_measurements_and_keeps_the_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--device", "cpu", "--budget-s", "0", "--check", "--config",
                 str(DEMO_CONFIG), "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    assert record["complete"] is False and record["timings"] == [] and record["checks"] == []
    assert record["projection"] is None  # nothing measured, nothing projected
    assert record["skipped"][0] == "timings of tiny 32px b16"
    assert "budget of 0 s reached; not measured: timings of tiny 32px b16" in printed


def test_budget_skips_once_its_time_is_up():
    now = [0.0]
    budget = bench.Budget(10.0, clock=lambda: now[0])
    assert not budget.skip("first")
    now[0] = 10.0
    assert budget.skip("second") and budget.skip("third")
    assert budget.skipped == ["second", "third"]
    assert not bench.Budget(None).skip("anything")


def test_bench_archs_and_methods_errors(capsys):
    assert main(["bench", "--device", "cpu", "--archs", "resnet18"]) == 2
    assert "--size tiny has cases of tiny only" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--methods", "twins", "--config", "x.yaml"]) == 2
    assert "needs the reference method 'vanilla'" in capsys.readouterr().err


def test_the_bench_times_the_methods_as_the_paper_grid_trains_them():
    """Where the LoRa update acts changes AutoLoRa's cost: the bench takes the paper protocol's
    choice (the last block of each stage), not the library default (every block)."""
    from autolora.bench.timing import bench_method
    from autolora.planning.protocol import protocol_choices

    paper = protocol_choices("paper")
    assert bench_method("autolora", 8).model_options()["lora_blocks"] == paper["lora_blocks"]
    assert bench_method("twins", 8).settings.twins_gamma_on == paper["twins_gamma_on"]
