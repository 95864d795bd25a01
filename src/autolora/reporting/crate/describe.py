"""Describing a results folder as a Workflow Run RO-Crate (``describe_results``): the copied
workflow (``source``), the cells' steps (``cells``) and the aggregation (``aggregate``) put
together with the workflow, its run and the root dataset; and writing it (``write_crate``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ConfigError, DataError
from autolora.files import atomic_write
from autolora.planning import layout
from autolora.reporting.crate.aggregate import (
    RESOLVE_CONFIG_LOG,
    DescribedAggregate,
    describe_aggregate,
    load_claims,
    table_indices,
)
from autolora.reporting.crate.cells import DescribedCells, describe_cells
from autolora.reporting.crate.graph import CrateBuilder, ref, rule_files
from autolora.reporting.crate.source import describe_source
from autolora.reporting.crate.vocabulary import (
    COMPLETED,
    CONNECTIONS,
    LICENSE_ID,
    MAIN_WORKFLOW,
    PAPER_AUTHORS,
    PAPER_ID,
    PROFILES,
    RO_CRATE,
    SNAKEMAKE_LANGUAGE,
    STEP_ORDER,
    STEP_PURPOSE,
    WORKFLOW_INPUTS,
    WORKFLOW_PARAMETERS,
)


def describe_results(
    folder: str | Path, *, root: str | Path = ".", authors: Sequence[str] = ()
) -> dict[str, Any]:
    """The RO-Crate JSON-LD of a finished results folder (``results/<protocol>/``).

    ``root``: the folder the records' paths are relative to (where the workflow ran).
    ``authors``: people who ran the reproduction, ``Name`` or ``Name <https://orcid.org/...>``.
    """
    from autolora.planning.grid import expand_grid, load_config, reported_checkpoint

    folder, root = Path(folder), Path(root)
    config_file = folder / layout.RESOLVED_CONFIG
    if not config_file.is_file():
        raise ConfigError(
            f"{config_file} missing: the crate describes a results folder the workflow (or "
            "`autolora aggregate`) has written; run it first"
        )
    if not (folder / MAIN_WORKFLOW).is_file():
        raise ConfigError(
            f"{folder / MAIN_WORKFLOW} missing: copy the workflow first (`autolora crate` does)"
        )
    config = load_config(config_file)
    expected = root / config.get("results", "results") / config.get("protocol", "paper")
    if expected.resolve() != folder.resolve():
        raise ConfigError(
            f"{folder}: its {layout.RESOLVED_CONFIG} puts the results at {expected} relative to "
            f"{root.resolve()}; pass --root <the folder the workflow ran from>"
        )
    builder = CrateBuilder(folder=folder, root=root, config=config)
    builder.rule_files = rule_files(folder / layout.CRATE_SOURCE_DIR)
    grid = expand_grid(config)
    checkpoint = reported_checkpoint(config)
    results_root = str(config.get("results", "results"))

    indices = table_indices(folder)
    paper_claim = load_claims(builder, indices)
    source_files = describe_source(builder, paper_claim)
    cells = describe_cells(builder, sorted(grid.cells), results_root, checkpoint)
    aggregate = describe_aggregate(builder, indices)
    return _assemble(builder, source_files, cells, aggregate, authors)


def _code_words(versions: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
    """The workflow's version (commit, ``-dirty`` when uncommitted changes ran) and a sentence."""
    if not versions:
        return None, "no run or evaluation record names the code version"
    labels = []
    for code in versions:
        commit = code.get("commit") or "unknown commit"
        labels.append(f"{commit}{'-dirty' if code.get('dirty') else ''}")
    words = "; ".join(
        f"git commit {code.get('commit') or 'unknown'}"
        + (" with uncommitted changes" if code.get("dirty") else "")
        + f" (autolora {code.get('version')})"
        for code in versions
    )
    return ", ".join(dict.fromkeys(labels)), f"the runs used {words}"


def _authors(builder: CrateBuilder, authors: Sequence[str]) -> list[str]:
    found = []
    for author in authors:
        match = re.fullmatch(r"\s*(.+?)\s*(?:<\s*(https?://\S+)\s*>)?\s*", author)
        if not match:
            raise ConfigError(f"--author {author!r}: give 'Name' or 'Name <https://orcid.org/...>'")
        name, orcid = match.group(1), match.group(2)
        identifier = orcid or f"#person/{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
        found.append(builder.graph.add({"@id": identifier, "@type": "Person", "name": name}))
    return found


def _assemble(
    builder: CrateBuilder,
    source_files: Mapping[str, list[str]],
    cells: DescribedCells,
    aggregate: DescribedAggregate,
    authors: Sequence[str],
) -> dict[str, Any]:
    protocol = builder.config.get("protocol", "paper")
    people = _authors(builder, authors)
    autolora = _describe_final_steps(builder, source_files, cells, aggregate, protocol)
    main_workflow, engine = _describe_workflow(builder, autolora)
    run, organize, end = _describe_run(builder, cells, main_workflow, engine, people, protocol)
    _describe_root(builder, main_workflow, [run, organize], people, protocol, end)
    return builder.graph.jsonld(first=[layout.CRATE_METADATA, "./"])


def _describe_final_steps(
    builder: CrateBuilder,
    source_files: Mapping[str, list[str]],
    cells: DescribedCells,
    aggregate: DescribedAggregate,
    protocol: str,
) -> list[str]:
    """resolve_config and aggregate, whose records are the files they wrote; returns the
    software entities of the autolora versions the records name."""
    resolved = builder.payload_file(
        layout.RESOLVED_CONFIG,
        description="the configuration the tables were built from (all of Snakemake's config, "
        "as JSON)",
    )
    builder.example_of(resolved, "resolve_config", "resolved_config")
    builder.example_of(resolved, "aggregate", "resolved_config")
    resolve_results = [resolved]
    if (builder.folder / RESOLVE_CONFIG_LOG).is_file():
        resolve_results.append(builder.payload_file(RESOLVE_CONFIG_LOG))
    for path in source_files["config"]:
        builder.example_of(path, "resolve_config", "config")
        builder.example_of(path, "", "config")
    builder.action(
        "resolve_config",
        protocol,
        name="resolve the configuration",
        description=STEP_PURPOSE["resolve_config"],
        objects=source_files["config"],
        results=resolve_results,
    )
    for path in source_files["paper_results"]:
        builder.example_of(path, "aggregate", "paper_results")
        builder.example_of(path, "", "paper_results")
    versions = sorted({code["version"] for code in builder.code_versions if code.get("version")})
    autolora = [builder.software("autolora", v) for v in versions]
    builder.action(
        "aggregate",
        protocol,
        name="aggregate the tables, figures and report",
        description=STEP_PURPOSE["aggregate"],
        objects=[resolved, *source_files["paper_results"], *cells.evaluations, *cells.histories],
        results=aggregate.results + aggregate.numbers,
        end=aggregate.end,
        software=autolora,
    )
    for rule in ("synthesize_dataset", "prepare_dataset", "pretrain_backbone", "convert_weights"):
        if rule in builder.used_rules and autolora:
            builder.graph.link(builder.used_rules[rule], "softwareRequirements", *autolora)
    return autolora


def _describe_workflow(builder: CrateBuilder, autolora: Sequence[str]) -> tuple[str, str]:
    """The main workflow: its rules, steps, parameters and their connections; returns its id and
    the Snakemake that ran it."""
    graph = builder.graph
    version, code_sentence = _code_words(builder.code_versions)
    steps = [r for r in STEP_ORDER if r in builder.used_rules]
    for position, rule in enumerate(steps):
        graph.add(
            {
                "@id": f"{MAIN_WORKFLOW}#step/{rule}",
                "@type": "HowToStep",
                "name": rule,
                "position": str(position),
                "workExample": ref(builder.used_rules[rule]),
            }
        )
        graph.add({"@id": builder.used_rules[rule], "version": version or __version__})
    connections = []
    for (source_rule, source_name), (target_rule, target_name) in CONNECTIONS:
        if not all(r == "" or r in builder.used_rules for r in (source_rule, target_rule)):
            continue
        source = builder.parameter(source_rule, source_name)
        target = builder.parameter(target_rule, target_name)
        identifier = (
            f"{MAIN_WORKFLOW}#connection/{source.split('#param/')[1]}--{target.split('#param/')[1]}"
        )
        graph.add(
            {
                "@id": identifier,
                "@type": "ParameterConnection",
                "sourceParameter": ref(source),
                "targetParameter": ref(target),
            }
        )
        connections.append(identifier)
        if target_rule:
            graph.link(f"{MAIN_WORKFLOW}#step/{target_rule}", "connection", identifier)
    parameters = [n for n in WORKFLOW_PARAMETERS if builder.has_parameter("", n)]
    engines = sorted(
        i for i in graph.entities if i.startswith("https://pypi.org/project/snakemake/")
    )
    engine = engines[0] if engines else builder.software("snakemake", None)
    graph.add(
        {
            "@id": SNAKEMAKE_LANGUAGE,
            "@type": "ComputerLanguage",
            "name": "Snakemake",
            "identifier": ref("https://snakemake.readthedocs.io"),
            "url": ref("https://snakemake.readthedocs.io"),
        }
    )
    main_workflow = builder.payload_file(
        MAIN_WORKFLOW,
        **{
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": "AutoLoRa reproduction workflow",
            "description": "Snakemake workflow reproducing AutoLoRa (ICLR 2024) and its baselines: "
            "the grid of training cells from the config, their evaluations, and every table, "
            f"figure and report built from them; {code_sentence}. The files under {layout.CRATE_SOURCE_DIR}/ "
            "are copies taken when the crate was written.",
            "programmingLanguage": ref(SNAKEMAKE_LANGUAGE),
            "conformsTo": ref("https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"),
            "version": version,
            "license": ref(LICENSE_ID),
            "citation": ref(PAPER_ID),
            "hasPart": [ref(builder.used_rules[r]) for r in steps],
            "step": [ref(f"{MAIN_WORKFLOW}#step/{r}") for r in steps],
            "connection": [ref(c) for c in connections],
            "input": [ref(builder.parameter("", n)) for n in parameters if n in WORKFLOW_INPUTS],
            "output": [
                ref(builder.parameter("", n)) for n in parameters if n not in WORKFLOW_INPUTS
            ],
            "softwareRequirements": [ref(engine), *[ref(a) for a in autolora]],
        },
    )
    return main_workflow, engine


def _describe_run(
    builder: CrateBuilder,
    cells: DescribedCells,
    main_workflow: str,
    engine: str,
    people: Sequence[str],
    protocol: str,
) -> tuple[str, str, str]:
    """The run of the whole workflow and Snakemake orchestrating its steps; returns their ids
    and the run's end time."""
    graph = builder.graph
    times = sorted(builder.times)
    if not times:
        raise DataError(
            f"{builder.folder}: no run or evaluation record and no provenance index with a time "
            "stamp; run the workflow before writing the crate"
        )
    start, end = times[0], times[-1]
    _, code_sentence = _code_words(builder.code_versions)
    outputs = [n for n in WORKFLOW_PARAMETERS if n not in WORKFLOW_INPUTS]
    run = graph.add(
        {
            "@id": "#run",
            "@type": "CreateAction",
            "name": f"run of the AutoLoRa reproduction workflow, protocol {protocol}",
            "description": (
                f"{cells.trained} cell(s) trained, {len(cells.evaluations)} evaluated, "
                f"{cells.missing} of the configured cells without a run record; {code_sentence}"
            ),
            "instrument": ref(main_workflow),
            "object": [ref(o) for o in builder.examples("", WORKFLOW_INPUTS)],
            "result": [ref(r) for r in builder.examples("", outputs)],
            "startTime": start,
            "endTime": end,
            "actionStatus": COMPLETED,
            "agent": [ref(p) for p in people],
        }
    )
    organize = graph.add(
        {
            "@id": "#orchestration",
            "@type": "OrganizeAction",
            "name": "Snakemake orchestrating the run",
            "instrument": ref(engine),
            "object": [ref(f"#control/{m.removeprefix('#action/')}") for m in builder.mentions],
            "result": ref(run),
            "startTime": start,
            "endTime": end,
            "actionStatus": COMPLETED,
        }
    )
    return run, organize, end


def _describe_root(
    builder: CrateBuilder,
    main_workflow: str,
    runs: Sequence[str],
    people: Sequence[str],
    protocol: str,
    end: str,
) -> None:
    """The root dataset, the metadata descriptor, the profiles, the licence and the paper."""
    graph = builder.graph
    for identifier, name, profile_version in PROFILES:
        graph.add(
            {"@id": identifier, "@type": "CreativeWork", "name": name, "version": profile_version}
        )
    graph.add({"@id": RO_CRATE, "@type": "CreativeWork", "name": "RO-Crate", "version": "1.1"})
    graph.add(
        {"@id": LICENSE_ID, "@type": "CreativeWork", "name": "MIT License", "identifier": "MIT"}
    )
    paper_authors = [
        graph.add(
            {"@id": f"#person/{name.lower().replace(' ', '-')}", "@type": "Person", "name": name}
        )
        for name in PAPER_AUTHORS
    ]
    graph.add(
        {
            "@id": PAPER_ID,
            "@type": "ScholarlyArticle",
            "name": "AutoLoRa: An Automated Robust Fine-Tuning Framework",
            "alternateName": "AutoLoRa: A Parameter-Free Automated Robust Fine-Tuning Framework",
            "author": [ref(a) for a in paper_authors],
            "datePublished": "2024",
            "description": "The Twelfth International Conference on Learning Representations "
            "(ICLR 2024); on arXiv as 2310.01818 (its arXiv title is the alternateName)",
            "identifier": "arXiv:2310.01818",
            "url": ref(PAPER_ID),
        }
    )
    graph.add(
        {
            "@id": "./",
            "@type": "Dataset",
            "name": f"AutoLoRa reproduction: results of protocol {protocol}",
            "description": (
                "Results of a reproduction of AutoLoRa (Xu, Zhang, Kankanhalli, ICLR 2024) and "
                "its baselines (vanilla robust fine-tuning, TWINS) by the autolora Snakemake "
                f"workflow under protocol {protocol}: tables, figures, the reproduction report, "
                "the provenance index and every run and evaluation record, with the workflow "
                "definition and the provenance of every step. Checkpoints, prepared datasets "
                "and backbone weights are referenced by sha256 (localPath relative to this "
                "folder), not included."
            ),
            "datePublished": end,
            "license": ref(LICENSE_ID),
            "citation": ref(PAPER_ID),
            "conformsTo": [ref(p[0]) for p in PROFILES],
            "mainEntity": ref(main_workflow),
            "hasPart": [ref(p) for p in builder.payload],
            "mentions": [ref(m) for m in [*runs, *builder.mentions]],
            "author": [ref(p) for p in people],
            "keywords": ["adversarial robustness", "robust fine-tuning", "LoRa", "reproduction"],
        }
    )
    graph.add(
        {
            "@id": layout.CRATE_METADATA,
            "@type": "CreativeWork",
            "about": ref("./"),
            "conformsTo": [ref(RO_CRATE), ref(PROFILES[3][0])],
        }
    )


def write_crate(folder: str | Path, crate: Mapping[str, Any]) -> Path:
    """Write ``ro-crate-metadata.json`` atomically; same content, same bytes."""
    path = Path(folder) / layout.CRATE_METADATA
    with atomic_write(path) as handle:
        json.dump(crate, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path
