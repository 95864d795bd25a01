"""Every file and folder name is defined once (autolora.planning.layout): the workflow's rules, the
writers and the readers take it from there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autolora.planning import layout
from autolora.planning.cells import cell_id, resolve_cell

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("identity", "method_folder"),
    [
        ({"dataset": "cifar10", "method": "autolora", "variant": "r4"}, "autolora-r4"),
        ({"dataset": "dtd", "method": "twins", "variant": "autolr", "eps_pt": 0.5}, "twins-autolr"),
        ({"dataset": "cub", "method": "vanilla", "seed": 66, "arch": "resnet50"}, "vanilla"),
    ],
)
def test_a_cells_id_is_the_workflows_cell_pattern_with_its_wildcards(identity, method_folder):
    config = resolve_cell(identity)
    wildcards = {
        "protocol": config.protocol,
        "arch": config.arch,
        "eps": f"{config.eps_pt:g}",
        "dataset": config.dataset,
        "method": method_folder,
        "seed": config.seed,
    }
    expected = layout.cell_pattern("results").format(**wildcards)
    assert f"results/{config.cell_id}" == expected == f"results/{cell_id(config.identity)}"
    assert layout.CELL_ID_TEMPLATE.format(**wildcards) == config.cell_id


def test_names_of_a_cells_files():
    assert [layout.checkpoint_file(n) for n in layout.CHECKPOINT_NAMES] == [
        "best_test.safetensors",
        "best_val.safetensors",
        "final.safetensors",
    ]
    assert layout.evaluation_record("best_test") == "eval-best_test.json"
    assert layout.evaluation_log("final") == "eval-final.log"
    assert layout.attempt_log("20240101T000000Z", 42, 2) == "train-20240101T000000Z-42-2.log"
    assert layout.split_manifest("paper") == "splits/paper.csv"
    assert (
        layout.backbone("resources", "resnet18", "4")
        == "resources/weights/resnet18-eps4.safetensors"
    )
    assert layout.backbone_record("x/resnet18-eps4.safetensors") == Path("x/resnet18-eps4.json")
    assert layout.downloads_beside("resources/data/x", "cifar10") == Path(
        "resources/downloads/cifar10"
    )
    assert layout.table_values("table1") == "tables/table1_values.csv"
    assert layout.report_log("crate") == layout.CRATE_LOG == "logs/crate.log"


FILE_NAMES = (
    "run.json",
    "history.csv",
    "safetensors",
    "eval-",
    "train.log",
    "dataset.json",
    "/downloads/",
    "/data/",
    "/weights/",
    "/runs/",
    "report.md",
    "report.html",
    "missing.txt",
    "comparison.csv",
    "claims.csv",
    "config.resolved.yaml",
    "ro-crate-metadata.json",
    "/tables",
    "/figures",
    "/provenance",
    "/logs/",
)


def test_the_workflow_spells_no_file_name():
    for rules in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        code = "\n".join(
            line
            for line in rules.read_text().splitlines()
            if not line.lstrip().startswith("#") and "caption=" not in line  # report captions
        )
        found = [name for name in FILE_NAMES if name in code]
        assert not found, f"{rules.name} spells {found}: take them from autolora.planning.layout"
    snakefile = (ROOT / "Snakefile").read_text()
    assert not re.search(r"\.json|\.csv|results/", snakefile)


def test_the_rule_names_the_code_counts_are_the_workflows():
    from autolora.planning import rules
    from autolora.reporting.crate.vocabulary import PARAMETERS, STEP_ORDER, STEP_PURPOSE

    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    defined = {
        name for path in sources for name in re.findall(r"^rule (\w+):", path.read_text(), re.M)
    }
    assert defined == set(rules.RULES)
    described = {*STEP_ORDER, *STEP_PURPOSE, *(rule for rule, _ in PARAMETERS)}
    assert described <= set(rules.RULES)
