"""Cell resolution against SPEC §4, §6 (Table 7) and §7, typed here by hand from the SPEC."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autolora.errors import ConfigError
from autolora.planning.cells import CellConfig, cell_id, resolve_cell
from autolora.planning.protocol import PROTOCOL_CHOICES, PROTOCOLS, protocol_choices

# SPEC §6 Table 7, copied from the SPEC text: (lr, weight decay[, gamma]).
TABLE7_BY_HAND = {
    ("vanilla", "cifar10"): (1e-2, 1e-4),
    ("vanilla", "cifar100"): (1e-3, 1e-4),
    ("vanilla", "dtd"): (1e-2, 1e-4),
    ("vanilla", "dogs"): (1e-3, 1e-4),
    ("vanilla", "cub"): (1e-2, 1e-4),
    ("vanilla", "caltech256"): (1e-2, 1e-4),
    ("twins", "cifar10"): (1e-2, 1e-4, 1.0),
    ("twins", "cifar100"): (1e-2, 1e-4, 1.0),
    ("twins", "dtd"): (1e-3, 1e-4, 1.0),
    ("twins", "dogs"): (3e-3, 1e-4, 1.0),
    ("twins", "cub"): (1e-2, 1e-4, 3.0),
    ("twins", "caltech256"): (3e-3, 1e-4, 1.0),
}
DATASETS = ["cifar10", "cifar100", "dtd", "dogs", "cub", "caltech256"]


def cell(**spec):
    return resolve_cell({"dataset": "cifar10", "method": "vanilla", **spec})


@pytest.mark.parametrize(("method", "dataset"), sorted(TABLE7_BY_HAND))
def test_baselines_take_table7_values(method, dataset):
    config = cell(method=method, dataset=dataset)
    expected = TABLE7_BY_HAND[(method, dataset)]
    assert config.lr == pytest.approx(expected[0])
    assert config.weight_decay == pytest.approx(expected[1])
    assert config.twins_gamma == (expected[2] if method == "twins" else None)
    assert config.lr_schedule == "multistep"
    assert config.milestones == (30, 50)
    assert config.lr_factor == 0.1
    assert config.beta == 6
    assert config.lora_rank is None and config.alpha is None


@pytest.mark.parametrize("dataset", DATASETS)
def test_autolora_uses_its_own_untuned_settings(dataset):
    config = cell(method="autolora", dataset=dataset)
    assert config.lr == 0.01 and config.autolr.initial_lr == 0.01
    assert config.weight_decay == 1e-4
    assert config.lr_schedule == "autolr"
    assert config.lora_rank == 8 and config.alpha == 1.0 and config.lambda_scale == 6
    assert config.autolr.checkpoints == (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56)
    assert (config.autolr.rho, config.autolr.min_lr, config.autolr.decay) == (0.75, 1e-5, 0.5)
    assert config.beta is None and config.twins_gamma is None


def test_common_defaults():
    config = cell()
    assert (config.epochs, config.batch_size, config.momentum) == (60, 128, 0.9)
    assert (config.attack.train_steps, config.attack.eval_steps) == (10, 10)
    assert config.autoattack.enabled and config.autoattack.n is None
    assert config.autoattack.batch_size == 250
    assert config.runtime.device == "auto" and config.runtime.num_workers == 0
    assert not (config.runtime.bf16 or config.runtime.compile or config.runtime.deterministic)
    assert config.grad_similarity_batches == 0
    assert config.identity.to_dict() == {
        "protocol": "paper",
        "arch": "resnet18",
        "eps_pt": 4,
        "dataset": "cifar10",
        "method": "vanilla",
        "variant": None,
        "seed": 0,
    }


def test_protocols_differ_as_spec_section_7():
    paper = cell(protocol="paper")
    clean = cell(protocol="clean")
    assert (paper.attack.eps, paper.attack.step) == (0.0314, 0.00784)
    assert clean.attack.eps == pytest.approx(0.03137254901960784)
    assert clean.attack.step == pytest.approx(0.00784313725490196)
    assert (paper.split_scheme, paper.selection, paper.kl_divisor) == (
        "paper",
        "best_test",
        "configured",
    )
    assert (clean.split_scheme, clean.selection, clean.kl_divisor) == (
        "clean",
        "best_val",
        "actual",
    )
    assert paper.kl_divisor_value == 128 and clean.kl_divisor_value is None
    assert paper.test_each_epoch and clean.test_each_epoch
    assert paper.cell_id.startswith("paper/") and clean.cell_id.startswith("clean/")
    overridden = cell(protocol="clean", overrides={"attack.eps": 0.01})
    record = {"name": overridden.protocol, **overridden.resolved_choices()}
    assert record == {
        "name": "clean",
        "eps": 0.01,
        "step": clean.attack.step,
        "split_scheme": "clean",
        "selection": None,  # the evaluation's (training writes every checkpoint)
        "kl_divisor": "actual",
        "test_each_epoch": True,
        "lora_blocks": None,  # read by AutoLoRa only
        "twins_gamma_on": None,  # read by TWINS only
    }


@pytest.mark.parametrize(
    ("protocol", "lora_blocks", "gamma_on"),
    [("paper", "last", "fixed"), ("clean", "all", "adaptive")],
)
def test_lora_blocks_and_twins_gamma_on_follow_the_protocol(protocol, lora_blocks, gamma_on):
    assert cell(protocol=protocol, method="autolora").lora_blocks == lora_blocks
    assert cell(protocol=protocol, method="twins").twins_gamma_on == gamma_on
    assert cell(protocol=protocol, method="twins", variant="autolr").twins_gamma_on == gamma_on
    for method, absent in (("vanilla", "lora_blocks"), ("twins", "lora_blocks")):
        assert getattr(cell(protocol=protocol, method=method), absent) is None
    assert cell(protocol=protocol, method="autolora").twins_gamma_on is None
    record = cell(protocol=protocol, method="autolora").resolved_choices()
    assert record["lora_blocks"] == lora_blocks and record["twins_gamma_on"] is None


def test_lora_blocks_and_twins_gamma_on_are_overridable_per_cell():
    flipped = {"lora_blocks": "all", "twins_gamma_on": "adaptive"}
    assert cell(method="autolora", overrides=flipped).lora_blocks == "all"
    assert cell(method="twins", overrides=flipped).twins_gamma_on == "adaptive"
    # a workflow-wide override (`training:`) reaches every cell: the methods that do not read a
    # choice keep None, so their configuration (and a finished run of it) is unchanged
    assert cell(method="vanilla", overrides=flipped) == cell(method="vanilla")
    with pytest.raises(ConfigError, match="allowed: last, all"):
        cell(method="vanilla", overrides={"lora_blocks": "first"})
    with pytest.raises(ConfigError, match="this method needs it"):
        cell(method="autolora", overrides={"lora_blocks": None})
    with pytest.raises(ConfigError, match="allowed: fixed, adaptive"):
        cell(method="twins", overrides={"twins_gamma_on": "both"})


def test_protocol_choices_and_unknown_protocol():
    assert set(PROTOCOLS) == {"paper", "clean"}
    assert all(set(choices) == set(PROTOCOL_CHOICES) for choices in PROTOCOLS.values())
    choices = protocol_choices("paper")
    choices["eps"] = 1.0  # a copy: the bundle itself is unchanged
    assert PROTOCOLS["paper"]["eps"] == 0.0314
    with pytest.raises(ConfigError, match="allowed: clean, paper"):
        protocol_choices("leaky")
    with pytest.raises(ConfigError, match="'protocol'"):
        cell(protocol="leaky")


def test_rank_and_alpha_variants():
    rank = cell(method="autolora", variant="r4")
    assert rank.lora_rank == 4 and rank.alpha == 1.0
    assert rank.cell_id == "paper/runs/resnet18-eps4/cifar10/autolora-r4/seed0"
    alpha = cell(method="autolora", variant="alpha0.5", seed=6)
    assert alpha.alpha == 0.5 and alpha.lora_rank == 8
    assert alpha.cell_id == "paper/runs/resnet18-eps4/cifar10/autolora-alpha0.5/seed6"
    assert cell(method="autolora", variant="alpha2.0").variant == "alpha2"


@pytest.mark.parametrize(("dataset", "gamma"), [("dtd", 1.0), ("cub", 3.0)])
def test_autolr_variant_for_twins(dataset, gamma):
    config = cell(method="twins", dataset=dataset, variant="autolr")
    assert config.lr_schedule == "autolr"
    assert config.lr == 0.01  # η0 of the automated scheduler, not Table 7's initial LR
    assert config.weight_decay == 1e-4 and config.twins_gamma == gamma
    assert config.cell_id.endswith(f"/{dataset}/twins-autolr/seed0")


@pytest.mark.parametrize(
    ("method", "variant"),
    [
        ("vanilla", "r4"),
        ("twins", "alpha0.5"),
        ("autolora", "autolr"),
        ("autolora", "r0"),
        ("autolora", "big"),
    ],
)
def test_invalid_variants(method, variant):
    with pytest.raises(ConfigError, match="invalid variant"):
        cell(method=method, variant=variant)


def test_overrides_plain_dotted_and_nested():
    config = cell(
        overrides={
            "epochs": 3,
            "attack.eps": 0.1,
            "autolr.rho": 0.5,
            "runtime": {"bf16": True, "device": "cuda:1"},
            "weight_decay": "5e-4",  # PyYAML reads 5e-4 as text
            "autoattack.n": 100,
        }
    )
    assert config.epochs == 3 and config.attack.eps == 0.1 and config.autolr.rho == 0.5
    assert config.runtime.bf16 and config.runtime.device == "cuda:1"
    assert config.weight_decay == 5e-4 and config.autoattack.n == 100
    assert config.attack.step == 0.00784  # untouched choices keep the protocol's value


def test_lr_override_under_autolr_moves_initial_lr():
    config = cell(method="autolora", overrides={"lr": 0.02})
    assert config.lr == 0.02 and config.autolr.initial_lr == 0.02
    config = cell(method="autolora", overrides={"autolr.initial_lr": 0.05})
    assert config.lr == 0.05
    with pytest.raises(ConfigError, match="set only one"):
        cell(method="autolora", overrides={"lr": 0.02, "autolr.initial_lr": 0.05})


def test_unknown_override_names_allowed_keys():
    with pytest.raises(ConfigError) as error:
        cell(overrides={"lerning_rate": 0.1})
    message = str(error.value)
    assert "unknown key 'overrides.lerning_rate'" in message
    assert "allowed:" in message and "attack.eps" in message and "runtime.bf16" in message
    with pytest.raises(ConfigError, match="unknown key 'overrides.attack.radius'"):
        cell(overrides={"attack": {"radius": 1}})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"batch_size": 1}, "'overrides.batch_size'; allowed: an integer >= 2"),
        ({"epochs": 2.5}, "'overrides.epochs'"),
        ({"selection": "best"}, "allowed: best_test, best_val"),
        ({"kl_divisor": "sum"}, "allowed: configured, actual"),
        ({"split_scheme": "random"}, "allowed: paper, clean"),
        ({"lr": 0}, "'overrides.lr'; allowed: a number > 0"),
        ({"momentum": 1.0}, "'overrides.momentum'"),
        ({"runtime.bf16": "yes"}, "allowed: true, false"),
        ({"runtime.device": "gpu"}, "'overrides.runtime.device'"),
        ({"milestones": [50, 30]}, "strictly increasing"),
        ({"attack.train_steps": True}, "'overrides.attack.train_steps'"),
        ({"lr": "fast"}, "'overrides.lr'"),
    ],
)
def test_invalid_override_values(overrides, fragment):
    with pytest.raises(ConfigError, match="invalid value") as error:
        cell(overrides=overrides)
    assert fragment in str(error.value)


def test_method_specific_overrides_are_checked():
    with pytest.raises(ConfigError, match="'overrides.lora_rank' applies only to method autolora"):
        cell(method="vanilla", overrides={"lora_rank": 4})
    with pytest.raises(ConfigError, match="'overrides.twins_gamma' applies only to method twins"):
        cell(method="autolora", overrides={"twins_gamma": 2.0})
    with pytest.raises(ConfigError, match="grad_similarity_batches"):
        cell(method="autolora", overrides={"grad_similarity_batches": 5})
    assert (
        cell(method="twins", overrides={"grad_similarity_batches": 5}).grad_similarity_batches == 5
    )
    with pytest.raises(ConfigError, match="conflicts with variant 'r4'"):
        cell(method="autolora", variant="r4", overrides={"lora_rank": 8})


def test_identity_and_spec_errors():
    with pytest.raises(ConfigError, match="part of the cell identity"):
        cell(overrides={"seed": 1})
    with pytest.raises(ConfigError, match="'seed'; allowed: an integer >= 0"):
        cell(seed=-1)
    with pytest.raises(ConfigError, match="'seed'"):
        cell(seed=True)
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        cell(sed=1)
    with pytest.raises(ConfigError, match="lacks key 'method'"):
        resolve_cell({"dataset": "cifar10"})
    with pytest.raises(ConfigError, match="'arch'; allowed: resnet18, resnet50, tiny"):
        cell(arch="vgg16")
    with pytest.raises(ConfigError, match="'eps_pt'"):
        cell(eps_pt=3)
    with pytest.raises(ConfigError, match="test_each_epoch"):
        cell(overrides={"test_each_epoch": False, "selection": "best_test"})
    # a train job's spec carries no selection (the evaluation's): nothing to check then
    assert not cell(overrides={"test_each_epoch": False}).test_each_epoch
    assert (
        cell(overrides={"test_each_epoch": False, "selection": "best_val"}).selection == "best_val"
    )


def test_eps_pt_formats_and_tiny_backbone():
    assert cell(eps_pt=0.5).cell_id == "paper/runs/resnet18-eps0.5/cifar10/vanilla/seed0"
    assert cell(eps_pt=4.0).cell_id == "paper/runs/resnet18-eps4/cifar10/vanilla/seed0"
    assert cell(arch="tiny", eps_pt=3).cell_id == "paper/runs/tiny-eps3/cifar10/vanilla/seed0"


def test_datasets_outside_table7_need_hyper():
    spec = {"dataset": "synth-a", "method": "vanilla", "arch": "tiny"}
    with pytest.raises(ConfigError, match=r"'datasets\.synth-a\.hyper\.vanilla\.lr'"):
        resolve_cell(spec)
    flat = resolve_cell({**spec, "hyper": {"lr": 0.05, "weight_decay": 5e-4}})
    assert (flat.lr, flat.weight_decay) == (0.05, 5e-4)
    per_method = {
        "vanilla": {"lr": 0.03, "weight_decay": 0.0},
        "twins": {"lr": 0.02, "weight_decay": 1e-4},
    }
    assert resolve_cell({**spec, "hyper": per_method}).lr == 0.03
    with pytest.raises(ConfigError, match=r"'datasets\.synth-a\.hyper\.twins\.twins_gamma'"):
        resolve_cell({**spec, "method": "twins", "hyper": per_method})
    autolora = resolve_cell({**spec, "method": "autolora"})
    assert (autolora.lr, autolora.weight_decay) == (0.01, 1e-4)
    with pytest.raises(
        ConfigError, match=r"unknown key 'datasets\.synth-a\.hyper\.vanilla\.gamma'"
    ):
        resolve_cell({**spec, "hyper": {"lr": 0.1, "weight_decay": 0, "gamma": 1}})


IDENTITIES = [
    {
        "protocol": "paper",
        "arch": "resnet18",
        "eps_pt": 4,
        "dataset": "cifar10",
        "method": "autolora",
        "variant": None,
        "seed": 0,
    },
    {
        "protocol": "clean",
        "arch": "resnet50",
        "eps_pt": 0.5,
        "dataset": "dtd",
        "method": "twins",
        "variant": "autolr",
        "seed": 66,
    },
    {
        "protocol": "paper",
        "arch": "tiny",
        "eps_pt": 0,
        "dataset": "synth-a",
        "method": "autolora",
        "variant": "alpha0.2",
        "seed": 6,
    },
    {
        "protocol": "paper",
        "arch": "resnet18",
        "eps_pt": 8,
        "dataset": "cub",
        "method": "autolora",
        "variant": "r16",
        "seed": 0,
    },
]


@pytest.mark.parametrize("identity", IDENTITIES)
def test_cell_id_round_trip(identity):
    config = resolve_cell(identity)
    assert config.identity.to_dict() == identity
    assert config.cell_id == cell_id(identity) == config.identity.cell_id == cell_id(config)


def test_cell_id_layout():
    assert cell_id(IDENTITIES[1]) == "clean/runs/resnet50-eps0.5/dtd/twins-autolr/seed66"


@pytest.mark.parametrize("method", ["vanilla", "twins", "autolora"])
def test_config_json_round_trip(method):
    config = cell(method=method, protocol="clean", overrides={"runtime.bf16": True, "epochs": 7})
    data = json.loads(json.dumps(config.to_dict()))
    assert data["milestones"] == [30, 50] and data["attack"]["eps"] == config.attack.eps
    assert CellConfig.from_dict(data) == config
    data["epochs"] = 0
    with pytest.raises(ConfigError, match="'epochs'"):
        CellConfig.from_dict(data)
    data["epochs"] = 7
    key, value = {"autolora": ("twins_gamma_on", "fixed")}.get(method, ("lora_blocks", "all"))
    with pytest.raises(ConfigError, match=f"'{key}' of method"):
        CellConfig.from_dict({**data, key: value})
    data["cell_id"] = "paper/runs/resnet18-eps4/cifar10/vanilla/seed9"
    with pytest.raises(ConfigError, match="does not match"):
        CellConfig.from_dict(data)


def test_cells_and_protocol_do_not_import_torch_or_numpy():
    code = (
        "import sys, autolora.planning.cells, autolora.planning.protocol;"
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules];"
        "print(*bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_runtime_given_apart_from_the_spec_replaces_its_settings():
    config = resolve_cell({"dataset": "cifar10", "method": "vanilla"})
    faster = config.with_runtime({"bf16": True, "num_workers": 4})
    assert (faster.runtime.bf16, faster.runtime.num_workers) == (True, 4)
    assert faster.runtime.device == config.runtime.device
    assert {k: v for k, v in faster.to_dict().items() if k != "runtime"} == {
        k: v for k, v in config.to_dict().items() if k != "runtime"
    }
    with pytest.raises(ConfigError, match=r"runtime\.threads"):
        config.with_runtime({"threads": 4})
    with pytest.raises(ConfigError, match=r"runtime\.bf16"):
        config.with_runtime({"bf16": "yes"})
