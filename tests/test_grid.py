"""The grid of the workflow config, the cost model and `autolora plan` (all torch-free)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import yaml

from autolora.autoattack_variants import autoattack_variant, configured_variant
from autolora.cli import main as cli_main
from autolora.commands.plan import planned_jobs
from autolora.errors import ConfigError
from autolora.planning import costmodel
from autolora.planning.grid import (
    check_config,
    evaluation_overrides,
    expand_grid,
    identity_spec,
    job_threads,
    load_config,
    reported_checkpoint,
    result_config,
    runtime,
    train_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "config" / "config.yaml"
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
DATASETS = ["cifar10", "cifar100", "dtd", "dogs", "cub", "caltech256"]
SEEDS = [0, 6, 66]
METHODS = ["vanilla", "twins", "autolora"]


@pytest.fixture(scope="module")
def paper():
    return load_config(PAPER_CONFIG)


@pytest.fixture(scope="module")
def paper_grid(paper):
    return expand_grid(paper)


def paper_cells_by_hand() -> set[tuple]:
    """The paper's cells as (arch, eps_pt, dataset, method, variant, seed), written out from the
    issue's description; a default value (r = 8, α = 1) is the main cell (variant None)."""
    cells = set()
    for arch, dataset, method, seed in itertools.product(
        ["resnet18", "resnet50"], DATASETS, METHODS, SEEDS
    ):
        cells.add((arch, 4, dataset, method, None, seed))
    for rank, dataset, seed in itertools.product(
        [2, 4, 8, 16], ["cifar10", "cifar100", "dtd", "cub"], SEEDS
    ):
        cells.add(("resnet18", 4, dataset, "autolora", None if rank == 8 else f"r{rank}", seed))
    for eps, dataset, method, seed in itertools.product(
        [0, 1, 2, 4, 8], ["cifar100", "dtd"], METHODS, SEEDS
    ):
        cells.add(("resnet18", eps, dataset, method, None, seed))
    for variant, dataset, seed in itertools.product(
        [None, "autolr"], ["cifar10", "cifar100", "dtd", "caltech256"], SEEDS
    ):
        cells.add(("resnet18", 4, dataset, "twins", variant, seed))
    for alpha, dataset, seed in itertools.product(
        ["0.2", "0.5", "0.8", "1", "2", "3", "5"], ["cifar10", "cifar100"], SEEDS
    ):
        variant = None if alpha == "1" else f"alpha{alpha}"
        cells.add(("resnet18", 4, dataset, "autolora", variant, seed))
    return cells


def test_paper_grid_has_every_cell_once(paper_grid):
    by_hand = paper_cells_by_hand()
    # 108 main + 36 ranks + 72 pre-training ε + 12 TWINS-autolr + 36 α = 264
    assert len(by_hand) == 108 + 36 + 72 + 12 + 36 == 264
    ours = {
        (s["arch"], s["eps_pt"], s["dataset"], s["method"], s["variant"], s["seed"])
        for s in paper_grid.cells.values()
    }
    assert ours == by_hand
    assert len(paper_grid.cells) == 264


def test_paper_cell_ids_follow_the_documented_layout(paper_grid):
    assert "paper/runs/resnet18-eps4/cifar10/autolora-r2/seed6" in paper_grid.cells
    assert "paper/runs/resnet18-eps4/cifar10/autolora-alpha0.5/seed0" in paper_grid.cells
    assert "paper/runs/resnet18-eps4/dtd/twins-autolr/seed66" in paper_grid.cells
    assert "paper/runs/resnet18-eps0/dtd/vanilla/seed0" in paper_grid.cells
    assert "paper/runs/resnet50-eps4/dogs/twins/seed6" in paper_grid.cells
    # the defaults coincide with the main cells and never get their own directory
    assert not any("-r8/" in key or "-alpha1/" in key for key in paper_grid.cells)


def test_entries_per_table(paper_grid):
    counts = {t: len(paper_grid.cells_of(t)) for t in paper_grid.tables}
    assert counts == {
        "table1": 6 * 3 * 3,
        "table2": 6 * 3 * 3,
        "table3": 4 * 4 * 3,
        "table4": 5 * 2 * 3 * 3,
        "table5": 4 * 2 * 3,
        "table6": 7 * 2 * 3,
        "figures": 2 * 3 * 3,
        "table8": 2 * 6 * 3 * 3,
    }
    factors = {e.factor for e in paper_grid.entries if e.table == "table3"}
    assert factors == {2, 4, 8, 16}
    assert {e.factor for e in paper_grid.entries if e.table == "table4"} == {0, 1, 2, 4, 8}
    assert {e.factor for e in paper_grid.entries if e.table == "table5"} == {True, False}
    assert {e.factor for e in paper_grid.entries if e.table == "table6"} == {
        0.2, 0.5, 0.8, 1, 2, 3, 5
    }  # fmt: skip
    main_rank = [e for e in paper_grid.entries if e.table == "table3" and e.factor == 8]
    assert all(e.cell_id in paper_grid.cells_of("table1") for e in main_rank)


def test_figures_add_gradient_similarity_to_baseline_cells_only(paper_grid):
    cells = paper_grid.cells
    assert (
        cells["paper/runs/resnet18-eps4/cifar10/vanilla/seed0"]["overrides"][
            "grad_similarity_batches"
        ]
        == 10
    )
    assert (
        cells["paper/runs/resnet18-eps4/cifar100/twins/seed66"]["overrides"][
            "grad_similarity_batches"
        ]
        == 10
    )
    assert (
        "grad_similarity_batches"
        not in cells["paper/runs/resnet18-eps4/cifar10/autolora/seed0"]["overrides"]
    )
    assert (
        "grad_similarity_batches"
        not in cells["paper/runs/resnet18-eps4/dtd/vanilla/seed0"]["overrides"]
    )


def test_training_overrides_reach_every_cell(paper_grid):
    assert all(s["overrides"]["runtime"] == {"num_workers": 8} for s in paper_grid.cells.values())


def test_a_cells_identity_leaves_out_its_runtime_and_evaluation_settings(paper):
    config = broken(paper, "training", {"epochs": 5, "runtime": {"bf16": True, "num_workers": 3}})
    config["training"]["autoattack"] = {"batch_size": 100}
    spec = expand_grid(config).cells["paper/runs/resnet18-eps4/dtd/twins/seed0"]
    assert identity_spec(spec)["overrides"] == {"epochs": 5}
    assert {k: v for k, v in identity_spec(spec).items() if k != "overrides"} == {
        k: v for k, v in spec.items() if k != "overrides"
    }
    assert evaluation_overrides(spec) == {"batch_size": 100}
    assert runtime(config) == {"bf16": True, "num_workers": 3} and job_threads(config) == 4
    kept = result_config(config)
    assert "cost" not in kept and kept["training"] == {
        "epochs": 5,
        "autoattack": {"batch_size": 100},
    }
    assert config["training"]["runtime"] and config["cost"]  # the config itself is unchanged


def test_demo_grid():
    config = load_config(DEMO_CONFIG)
    grid = expand_grid(config)
    # table1: 2 datasets × 3 methods × 3 seeds; table3 adds r = 2 on one dataset × 3 seeds
    assert len(grid.cells) == 18 + 3
    spec = grid.cells["paper/runs/tiny-eps4/synth-a/twins/seed0"]
    # only the cell's own method's settings: another method's change leaves its spec alone
    assert spec["hyper"] == {"lr": 0.01, "weight_decay": 1.0e-4, "twins_gamma": 1.0}
    assert spec["overrides"]["epochs"] == 3
    assert planned_jobs(config, grid.cells) == {
        "synthesize_dataset": 2,
        "pretrain_backbone": 1,
        "train": 21,
        "evaluate": 21,
        "resolve_config": 1,
        "aggregate": 1,
        "all": 1,
    }


def test_planned_jobs_of_the_paper(paper, paper_grid):
    jobs = planned_jobs(paper, paper_grid.cells)
    # weights: ResNet-18 at ε_pt 0, 1, 2, 4, 8 and ResNet-50 at 4
    assert jobs["download_weights"] == jobs["convert_weights"] == 6
    assert jobs["download_dataset"] == jobs["prepare_dataset"] == 6
    assert jobs["train"] == jobs["evaluate"] == 264


def test_reported_checkpoint_and_checkpoints_follow_the_protocol(paper):
    assert reported_checkpoint(paper) == "best_test"
    assert train_checkpoints(paper) == ["best_test", "best_val", "final"]
    clean = {**paper, "protocol": "clean"}
    assert reported_checkpoint(clean) == "best_val"
    no_test = {**paper, "training": {"test_each_epoch": False, "selection": "best_val"}}
    assert train_checkpoints(no_test) == ["best_val", "final"]
    # the protocol's best_test without a test pass each epoch: refused when the config is read
    with pytest.raises(ConfigError, match="training.selection: best_val"):
        check_config({**paper, "training": {"test_each_epoch": False}})


def test_the_selection_is_the_evaluations_not_part_of_a_cells_identity(paper):
    chosen = {**paper, "training": {"selection": "best_val"}}
    cells, defaults = expand_grid(chosen).cells, expand_grid(paper).cells
    assert cells.keys() == defaults.keys()
    for cell_id, spec in cells.items():
        assert spec["overrides"]["selection"] == "best_val"  # the plan's full spec has it
        assert "selection" not in identity_spec(spec)["overrides"]  # the train job's has not
        assert identity_spec(spec) == identity_spec(defaults[cell_id])


def broken(paper, path: str, value) -> dict:
    config = copy.deepcopy(paper)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("tables.table1.datasets", ["cifar10", "imagenet"], "tables.table1.datasets"),
        ("tables.table9", {"datasets": ["cifar10"]}, "tables.table9"),
        ("tables.table3.alphas", [1], "tables.table3.alphas"),
        ("tables.table8.tables", ["table3"], "tables.table8.tables"),
        ("weights", {"source": "pretrain"}, "weights.source"),
        ("datasets.cifar10", {"source": "cifar100"}, "datasets.cifar10.source"),
        ("datasets.cifar10", {"source": "synthetic", "num_classes": 3}, "train"),
        ("seeds", [0, 0], "seeds"),
        ("protocol", "leaky", "protocol"),
        ("shards", 3, "shards"),
        ("training", {"epochz": 3}, "epochz"),
        ("tables.table4.eps_pt", [3], "eps_pt"),
        ("evaluation", {"autoattack_seeds": [1]}, "evaluation.autoattack_seeds"),
        ("evaluation", {"aa": True}, "evaluation.aa"),
        ("results", "", "'results' must name a folder"),
        ("resources", "/", "'resources' is '/', the file system's root"),
        ("results", "//.", "the file system's root"),
        ("datasets.cifar10", {"source": "cifar10", "hyper": {"twinz": {}, "twins": {}}}, "twinz"),
        ("evaluation", {"autoattack_version": "plus"}, "evaluation.autoattack_version"),
    ],
)
def test_bad_config_names_the_key(paper, path, value, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        expand_grid(broken(paper, path, value))


def test_conflicting_settings_of_a_shared_cell_are_rejected(paper):
    config = broken(paper, "training", {"grad_similarity_batches": 3})
    with pytest.raises(ConfigError, match="grad_similarity_batches"):
        expand_grid(config)


def test_load_config_reports_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("tables: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_check_config_accepts_both_shipped_configs():
    for path in (PAPER_CONFIG, DEMO_CONFIG):
        config = yaml.safe_load(path.read_text())
        assert check_config(config) == config


# ---- cost model ------------------------------------------------------------------------------

SMALL = {
    "protocol": "paper",
    "seeds": [0],
    "datasets": {"cifar10": {"source": "cifar10"}},
    "tables": {"table1": {"arch": "resnet50", "datasets": ["cifar10"], "methods": ["twins"]}},
    "training": {"epochs": 10},
    "cost": {
        "train_images_per_s": 100,
        "eval_images_per_s": 500,
        "autoattack_images_per_s": 10,
        "backbone": {"resnet50": 2.0},
        "method": {"twins": 1.5},
        "margin": 2.0,
        "overhead_min": 4,
        "max_runtime_min": 600,
    },
}


def test_train_and_evaluate_minutes_by_hand():
    grid = expand_grid(SMALL)
    (spec,) = grid.cells.values()
    model = costmodel.CostModel.from_config(SMALL)
    # per epoch: 2.0 × (47,500 × 1.5 / 100 + (2,500 val + 10,000 test) / 500) = 1,475 s; 10 epochs
    expected_train = 10 * 2.0 * (47_500 * 1.5 / 100 + 12_500 / 500) / 60
    assert costmodel.train_minutes(spec, SMALL, model) == pytest.approx(expected_train)
    assert expected_train == pytest.approx(245.8333, rel=1e-4)
    # evaluate: 10,000 test images × 2.0 × (2 / 500 + 1 / 10) s
    expected_eval = 10_000 * 2.0 * (2 / 500 + 1 / 10) / 60
    assert costmodel.evaluate_minutes(spec, SMALL, model) == pytest.approx(expected_eval)
    assert costmodel.evaluate_minutes(spec, SMALL, model, n=1000) == pytest.approx(
        expected_eval / 10
    )
    # time limit: ceil(245.83 × 2 + 4) = 496, inside [10, 600]
    assert costmodel.time_limit_min(expected_train, model) == 496
    assert costmodel.time_limit_min(1000.0, model) == 600
    assert costmodel.time_limit_min(0.1, model) == model.min_runtime_min
    total = costmodel.estimate(grid.cells, SMALL)
    assert total.gpu_hours == pytest.approx((expected_train + expected_eval) / 60)


def test_cost_model_defaults_are_merged_and_unknown_keys_rejected():
    model = costmodel.CostModel.from_config({"cost": {"backbone": {"tiny": 0.1}}})
    assert model.backbone["tiny"] == 0.1 and model.backbone["resnet18"] == 1.0
    with pytest.raises(ConfigError, match="cost.speed"):
        costmodel.CostModel.from_config({"cost": {"speed": 1}})
    with pytest.raises(ConfigError, match="cost.method"):
        model.factor("method", "sgd")


def test_autoattack_only_on_the_configured_seeds():
    config = {**SMALL, "seeds": [0, 1], "evaluation": {"autoattack_seeds": [0]}}
    grid = expand_grid(config)
    model = costmodel.CostModel.from_config(config)
    aa_cells = grid.autoattack_cells(config)
    assert aa_cells == {key for key in grid.cells if key.endswith("seed0")} and len(aa_cells) == 1
    with_aa, without_aa = (
        costmodel.evaluate_minutes(grid.cells[key], config, model, autoattack=key in aa_cells)
        for key in sorted(grid.cells)
    )
    assert with_aa == pytest.approx(10_000 * 2.0 * (2 / 500 + 1 / 10) / 60)
    assert without_aa == pytest.approx(10_000 * 2.0 * (2 / 500) / 60)
    assert not grid.autoattack_cells({**config, "evaluation": {"autoattack": False}})
    assert not grid.autoattack_cells({**config, "evaluation": {"autoattack_datasets": ["other"]}})
    with pytest.raises(ConfigError, match="evaluation.autoattack_datasets"):
        check_config({**config, "evaluation": {"autoattack_datasets": ["other"]}})


def test_autoattack_by_default_only_on_the_tables_that_report_it():
    config = load_config(PAPER_CONFIG)
    grid = expand_grid(config)
    aa_cells = grid.autoattack_cells(config)
    # Tables 1 and 2: 3 methods x 2 backbones x 6 datasets x 3 seeds; the ablation-only cells
    # of Tables 3-6 report SA and PGD-10 in the paper and skip AutoAttack.
    assert len(aa_cells) == 3 * 2 * 6 * 3
    assert aa_cells == set(grid.cells_of("table1")) | set(grid.cells_of("table2"))
    table5 = expand_grid({**config, "evaluation": {"autoattack_tables": ["table5"]}})
    assert table5.autoattack_cells({"evaluation": {"autoattack_tables": ["table5"]}}) == set(
        table5.cells_of("table5")
    )
    with pytest.raises(ConfigError, match="evaluation.autoattack_tables"):
        check_config({**config, "evaluation": {"autoattack_tables": ["table9"]}})


def test_the_paper_runs_standard_autoattack_and_the_demo_the_reduced_one_on_every_table1_cell():
    paper = load_config(PAPER_CONFIG)
    assert configured_variant(paper).name == "standard"
    assert paper["evaluation"]["autoattack_version"] == "standard"  # said, not only defaulted
    assert configured_variant({"evaluation": {}}).name == "standard"
    demo = load_config(DEMO_CONFIG)
    assert configured_variant(demo).name == "apgd-ce+apgd-t"
    grid = expand_grid(demo)
    assert grid.autoattack_cells(demo) == set(grid.cells_of("table1"))
    # what is left without AA (Table 3's r = 2 cells) is explained by the key that decides it
    assert set(grid.autoattack_skip_reasons(demo).values()) == {
        "`evaluation.autoattack_tables` = [table1, table2] (default)"
    }


def test_skip_reasons_name_every_config_key_that_excludes_a_cell():
    config = {
        **SMALL,
        "seeds": [0, 1],
        "datasets": {"cifar10": {"source": "cifar10"}, "dtd": {"source": "dtd"}},
        "tables": {"table1": {"arch": "resnet50", "datasets": ["cifar10", "dtd"]}},
        "evaluation": {"autoattack_seeds": [0], "autoattack_datasets": ["cifar10"]},
    }
    grid = expand_grid(config)
    reasons = grid.autoattack_skip_reasons(config)
    assert set(reasons) == set(grid.cells) - grid.autoattack_cells(config)
    seeds, datasets = (
        "`evaluation.autoattack_seeds` = [0]",
        "`evaluation.autoattack_datasets` = [cifar10]",
    )
    cell = "paper/runs/resnet50-eps4/{}/twins/seed{}"
    assert reasons[cell.format("cifar10", 1)] == seeds
    assert reasons[cell.format("dtd", 0)] == datasets
    assert reasons[cell.format("dtd", 1)] == f"{seeds} and {datasets}"
    off = {**config, "evaluation": {"autoattack": False}}
    assert set(grid.autoattack_skip_reasons(off).values()) == {"`evaluation.autoattack` = false"}


def test_reduced_autoattack_costs_its_share_of_standard():
    config = {**SMALL, "evaluation": {"autoattack_version": "apgd-ce+apgd-t"}}
    (spec,) = expand_grid(config).cells.values()
    model = costmodel.CostModel.from_config(config)
    share = autoattack_variant("apgd-ce+apgd-t").relative_cost
    assert 0 < share < 1
    assert costmodel.evaluate_minutes(spec, config, model) == pytest.approx(
        10_000 * 2.0 * (2 / 500 + share / 10) / 60
    )


def test_synthetic_dataset_sizes_come_from_the_config():
    config = load_config(DEMO_CONFIG)
    declared = config["datasets"]["synth-a"]
    train, validation, test = costmodel.dataset_sizes(config, "synth-a")
    assert (train + validation, test) == (declared["train"], declared["test"])
    # the released code's draw keeps int(0.95 N) for training
    assert validation == declared["train"] - int(declared["train"] * 0.95)


# ---- autolora plan -----------------------------------------------------------------------------


def test_plan_prints_cells_jobs_and_gpu_hours(capsys):
    assert cli_main(["plan", "--config", str(PAPER_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "264 unique cells" in out
    assert "train                  264" in out
    assert "total                  555" in out
    assert "AutoAttack: standard AutoAttack on 108 of 264 cells" in out
    assert "estimated GPU-hours" in out


def test_plan_reports_a_bad_config_as_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {}, "tables": {"table1": {"datasets": ["x"]}}}))
    assert cli_main(["plan", "--config", str(bad)]) == 2
    assert "tables.table1.datasets" in capsys.readouterr().err
