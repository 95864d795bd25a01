"""The paper's nouns are defined once (autolora.planning.vocabulary) and every registry keyed by
them agrees: the method classes, the backbone builders, the dataset and weights catalogues, the
cost model, the config schema and the workflow's wildcard constraints."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path

import pytest
import torch
import yaml

from autolora.errors import ConfigError
from autolora.planning import costmodel, vocabulary
from autolora.planning.grid import MAIN_TABLES, WEIGHTS_SOURCES, expand_grid
from autolora.planning.vocabulary import (
    ARCHS,
    DATASETS,
    METHODS,
    PUBLISHED_ARCHS,
    PUBLISHED_EPS_PT_255,
    alpha_variant,
    canonical_variant,
    method_folder,
    method_folder_pattern,
    parse_variant,
    rank_variant,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_method_registry_holds_a_class_for_every_method_name():
    from autolora.methods import METHODS as METHOD_CLASSES

    assert set(METHOD_CLASSES) == set(METHODS)
    assert all(cls.name == name for name, cls in METHOD_CLASSES.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_name_builds(arch):
    from autolora.models.resnet import build_backbone

    with torch.device("meta"):
        backbone = build_backbone(arch, 3)
    assert backbone.fc.out_features == 3


def test_the_dataset_and_weights_catalogues_are_keyed_by_the_vocabulary():
    from autolora.data.sources import CATALOGUE
    from autolora.weights import CATALOGUE as WEIGHTS

    assert list(CATALOGUE) == list(DATASETS)
    for key, source in CATALOGUE.items():
        facts = DATASETS[key]
        assert (source.paper_name, source.num_classes) == (facts.label, facts.num_classes)
        importlib.import_module(f"autolora.data.sources.{facts.family}")  # the family exists
    assert set(WEIGHTS) == {(a, float(e)) for a in PUBLISHED_ARCHS for e in PUBLISHED_EPS_PT_255}


def test_the_cost_model_sizes_are_the_papers_counts():
    for key, facts in DATASETS.items():
        counts = facts.paper_counts
        sizes = costmodel.dataset_sizes({"datasets": {key: {"source": key}}}, key)
        assert sizes == (counts["train"], counts["val"], counts["test"])
    assert set(vocabulary.TABLE7[vocabulary.VANILLA]) == set(DATASETS)
    assert set(vocabulary.TABLE7[vocabulary.TWINS]) == set(DATASETS)


@pytest.mark.parametrize(
    ("method", "variant", "parsed"),
    [
        ("autolora", rank_variant(4), ("lora_rank", 4)),
        ("autolora", alpha_variant(0.5), ("alpha", 0.5)),
        ("autolora", alpha_variant(2.0), ("alpha", 2)),
        ("twins", "autolr", ("lr_schedule", "autolr")),
        ("vanilla", None, None),
    ],
)
def test_variants_are_named_and_parsed_in_one_place(method, variant, parsed):
    assert parse_variant(variant, method) == parsed
    assert canonical_variant(variant, method) == variant
    assert re.fullmatch(method_folder_pattern(), method_folder(method, variant))


def test_default_rank_and_alpha_are_the_main_cell_and_bad_variants_are_refused():
    assert rank_variant(vocabulary.DEFAULT_LORA_RANK) is None
    assert alpha_variant(vocabulary.DEFAULT_ALPHA) is None
    assert canonical_variant("alpha0.50", "autolora") == "alpha0.5"
    for variant, method in (("r4", "twins"), ("autolr", "autolora"), ("beta2", "autolora")):
        with pytest.raises(ConfigError, match="invalid variant"):
            parse_variant(variant, method)
    assert not re.fullmatch(method_folder_pattern(), "autolora-beta2")


def test_every_method_folder_of_the_paper_grid_matches_the_wildcard_pattern():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    folders = {cell.split("/")[4] for cell in expand_grid(config).cells}
    assert {"autolora-r4", "autolora-alpha0.5", "twins-autolr", "vanilla"} <= folders
    assert all(re.fullmatch(method_folder_pattern(), folder) for folder in folders)


def _enums(node, path=""):
    if isinstance(node, dict):
        if "enum" in node:
            yield path, list(node["enum"])
        for key, value in node.items():
            yield from _enums(value, f"{path}/{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value, path)


def test_the_schema_repeats_no_name_list_of_the_vocabulary():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    enums = dict(_enums(schema))
    # the config-format switches it keeps are the grid's own constants
    assert enums == {
        "/properties/weights/properties/source": list(WEIGHTS_SOURCES),
        "/properties/tables/properties/table8/properties/tables/items": list(MAIN_TABLES),
    }
    names = {*METHODS, *ARCHS, *DATASETS}
    assert not names & {name for values in enums.values() for name in values}
    pattern = schema["properties"]["datasets"]["propertyNames"]["pattern"]
    assert pattern == f"^{vocabulary.DATASET_NAME_PATTERN}$"


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (
            ("tables", "table1", "methods"),
            ["vanilla", "lora"],
            "'tables.table1.methods' names 'lora'",
        ),
        (("tables", "table1", "arch"), "resnet34", "'tables.table1.arch' is 'resnet34'"),
        (("datasets", "cifar10", "source"), "svhn", "'datasets.cifar10.source' 'svhn'"),
    ],
)
def test_the_grid_refuses_a_name_the_vocabulary_lacks_and_names_the_key(path, value, named):
    config = copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=re.escape(named)):
        expand_grid(config)


def test_the_workflow_spells_no_method_or_backbone_list():
    rules = "".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    for names in (METHODS, ARCHS, PUBLISHED_ARCHS):
        for first, second in zip(names, names[1:], strict=False):
            assert f"{first}|{second}" not in rules
    assert '"tiny"' not in rules and "autolr" not in rules
