"""Describing a results folder as a Workflow Run RO-Crate (``describe_results``), from the records
the workflow wrote: run and evaluation records, ``dataset.json``, weights records, the provenance
index; and copying the workflow's definition into the crate (``copy_workflow_source``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autolora import __version__
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.files import atomic_write, read_json, sha256_file
from autolora.planning import layout
from autolora.reporting.crate.graph import CrateBuilder, ref, rule_files
from autolora.reporting.crate.vocabulary import (
    COMPLETED,
    CONNECTIONS,
    LARGE_SUFFIXES,
    LICENSE_ID,
    MAIN_WORKFLOW,
    OCTET_STREAM,
    PAPER_AUTHORS,
    PAPER_ID,
    PROFILES,
    RO_CRATE,
    SKIPPED_SUFFIXES,
    SNAKEMAKE_LANGUAGE,
    STEP_ORDER,
    STEP_PURPOSE,
    WORKFLOW_INPUTS,
    WORKFLOW_PARAMETERS,
    WORKFLOW_SOURCES,
    media_type,
)

# --------------------------------------------------------------------------------------------
# The workflow definition, copied into the crate


def copy_workflow_source(
    folder: str | Path,
    workflow_dir: str | Path,
    *,
    configfiles: Sequence[str | Path] = (),
    paper_results: str | Path | None = None,
) -> None:
    """Replace ``folder/source/`` with a copy of the workflow definition (Snakefile, rules, report
    captions, schema, weights lock, conda environment) and the config files and paper numbers
    it ran with. Written beside its final name and moved into place whole."""
    folder, workflow_dir = Path(folder), Path(workflow_dir)
    if not (workflow_dir / "Snakefile").is_file():
        raise ConfigError(
            f"no Snakefile in {workflow_dir}: pass --workflow-dir <the folder holding the "
            "workflow's Snakefile>"
        )
    copies: dict[str, Path] = {}
    for name in WORKFLOW_SOURCES:
        path = workflow_dir / name
        if path.is_file():
            copies[name] = path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(workflow_dir)
                if file.is_file() and not _hidden(relative) and "__pycache__" not in relative.parts:
                    copies[relative.as_posix()] = file
    extra = [Path(p) for p in configfiles] + ([Path(paper_results)] if paper_results else [])
    for path in extra:
        if not path.is_file():
            raise ConfigError(f"{path}: not a file (--configfile / --paper)")
        name = f"config/{path.name}"
        if name in copies and copies[name].resolve() != path.resolve():
            raise ConfigError(
                f"{path}: a different file named {name} is already part of the workflow's "
                "source; rename the config file"
            )
        copies[name] = path
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{layout.CRATE_SOURCE_DIR}.", dir=folder))
    try:
        for name, path in sorted(copies.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide it from the group
        final = folder / layout.CRATE_SOURCE_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


# --------------------------------------------------------------------------------------------
# Describing a results folder


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

    paper_claim = load_claims(builder)
    source_files = _describe_source(builder, paper_claim)
    cells = _describe_cells(builder, sorted(grid.cells), results_root, checkpoint)
    aggregate = _describe_aggregate(builder)
    return _assemble(builder, source_files, cells, aggregate, authors)


def _describe_source(
    builder: CrateBuilder, paper_claim: Mapping[str, Any] | None
) -> dict[str, list[str]]:
    """The copied workflow definition; returns the config and paper-results copies. The copy of
    the paper's numbers must be the file the aggregation read (``paper_claim``)."""
    found: dict[str, list[str]] = {"config": [], "paper_results": []}
    source = builder.folder / layout.CRATE_SOURCE_DIR
    configured = {"schema.yaml", "weights.lock"}
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        path = file.relative_to(builder.folder).as_posix()
        inner = file.relative_to(source).as_posix()
        if path == MAIN_WORKFLOW:
            continue
        claim = {}
        if inner == "config/paper_results.csv" and paper_claim:
            claim = {
                "claimed": paper_claim["sha256"],
                "claimed_by": f"{paper_claim['claimed_by']} (as {paper_claim['path']}; pass "
                "--paper <the file the aggregation read>)",
            }
        builder.payload_file(path, **claim)
        if inner == "config/paper_results.csv":
            found["paper_results"].append(path)
            builder.graph.add({"@id": path, "description": "the paper's reported numbers"})
        elif inner.startswith("config/") and file.name not in configured:
            found["config"].append(path)
            builder.graph.add({"@id": path, "description": "workflow configuration file"})
    return found


@dataclass
class _Cells:
    histories: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # dataset.json record path -> id
    weights: dict[str, str] = field(default_factory=dict)  # weights record path -> id
    trained: int = 0
    missing: int = 0


def _describe_cells(
    builder: CrateBuilder, cell_ids: list[str], results_root: str, checkpoint: str
) -> _Cells:
    cells = _Cells()
    for cell_id in cell_ids:
        directory = f"{results_root}/{cell_id}"
        run_path = f"{directory}/{layout.RUN_RECORD}"
        if not (builder.root / run_path).is_file():
            cells.missing += 1
            continue
        run = read_json(builder.root / run_path)
        _describe_training(builder, cells, cell_id, run_path, run)
        cells.trained += 1
        eval_path = f"{directory}/{layout.evaluation_record(checkpoint)}"
        if (builder.root / eval_path).is_file():
            _describe_evaluation(builder, cells, cell_id, eval_path)
    return cells


def _inputs_by_role(record: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in record.get("inputs") or []:
        found.setdefault(item.get("role", "input"), []).append(item)
    return found


def _describe_training(
    builder: CrateBuilder, cells: _Cells, cell_id: str, run_path: str, run: Mapping[str, Any]
) -> None:
    builder.note_code(run)
    inputs = _inputs_by_role(run)
    objects: list[str] = []
    data_files: list[str] = []
    for role in ("dataset", "split_manifest", "split_info"):
        for item in inputs.get(role, []):
            if role == "dataset":
                _describe_dataset(builder, cells, item)
            file = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
            data_files.append(file)
            builder.example_of(file, "train", "prepared_dataset")
    objects += data_files
    weights_records = inputs.get("weights_record", [])
    for item in inputs.get("weights", []):
        _describe_weights(builder, cells, item, weights_records[0] if weights_records else None)
        file = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
        builder.example_of(file, "train", "backbone")
        objects.append(file)
    for item in weights_records:
        file = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
        builder.example_of(file, "train", "backbone")
        objects.append(file)
    protocol = run.get("protocol") or {}
    for choice, value in sorted((protocol.get("choices") or {}).items()):
        token = value if isinstance(value, str) else json.dumps(value)
        pv = builder.property_value(
            f"#protocol/{protocol.get('name')}/{choice}/{quote(token, safe='')}",
            choice,
            value,
            description=f"resolved choice of protocol {protocol.get('name')!r} (SPEC §7)"
            + ("; null: the choice does not apply to this cell's method" if value is None else ""),
        )
        builder.example_of(pv, "train", "protocol_choice")
        builder.example_of(pv, "", "protocol_choice")
        objects.append(pv)

    results = []
    record = builder.payload_file(
        builder.crate_path(run_path) or run_path,
        description=f"run record of cell {cell_id}: resolved configuration, protocol, code "
        "version, packages, host, device, SLURM job, attempts, inputs and outputs with sha256",
    )
    builder.example_of(record, "train", "run_record")
    builder.example_of(record, "", "run_records")
    results.append(record)
    for item in run.get("outputs") or []:
        if item.get("role") == "history":
            history = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
            builder.graph.add({"@id": history, "description": f"per-epoch history of {cell_id}"})
            builder.example_of(history, "train", "history")
            builder.example_of(history, "", "run_records")
            builder.example_of(history, "aggregate", "histories")
            cells.histories.append(history)
            results.append(history)
    for name, info in sorted((run.get("checkpoints") or {}).items()):
        file = builder.record_file(
            info["path"],
            info.get("sha256"),
            description=f"checkpoint {name!r} of cell {cell_id}: epoch {info.get('epoch')}, "
            f"selected by {info.get('selected_by')}; referenced, not copied",
        )
        builder.example_of(file, "train", "checkpoints")
        builder.example_of(file, "", "checkpoints")
        results.append(file)
    log = Path(run_path).with_name(layout.TRAIN_LOG).as_posix()
    if builder.crate_path(log) and (builder.root / log).is_file():
        log_id = builder.payload_file(
            builder.crate_path(log), description=f"training log of {cell_id}"
        )
        builder.example_of(log_id, "train", "log")
        results.append(log_id)

    attempts = run.get("attempts") or [{"host": run.get("host"), "slurm": run.get("slurm")}]
    resumed = sum(1 for a in attempts if a.get("resumed_from_epoch") is not None)
    builder.action(
        "train",
        cell_id,
        name=f"train {cell_id}",
        description=(
            f"`autolora train` of cell {cell_id}: {run.get('epochs_run')} epoch(s) on "
            f"{run.get('device')}, {len(attempts)} attempt(s) ({resumed} resumed); "
            f"stopped: {run.get('stop_reason')}. Command: {run.get('command')}"
        ),
        objects=objects,
        results=results,
        start=run.get("started"),
        end=run.get("finished"),
        hosts=[*(a.get("host") for a in attempts), run.get("host")],
        jobs=[*(a.get("slurm") for a in attempts), run.get("slurm")],
        software=builder.environment(run),
    )


def _describe_evaluation(
    builder: CrateBuilder, cells: _Cells, cell_id: str, eval_path: str
) -> None:
    evaluation = read_json(builder.root / eval_path)
    builder.note_code(evaluation)
    objects: list[str] = []
    run_ref = evaluation.get("run_record") or {}
    if run_ref.get("path"):
        record = builder.record_file(run_ref["path"], run_ref.get("sha256"), claimed_by=eval_path)
        builder.example_of(record, "evaluate", "run_record")
        objects.append(record)
    for item in evaluation.get("inputs") or []:
        file = builder.record_file(item["path"], item.get("sha256"), claimed_by=eval_path)
        role = item.get("role")
        builder.example_of(
            file, "evaluate", "checkpoint" if role == "checkpoint" else "prepared_dataset"
        )
        objects.append(file)
    crate_path = builder.crate_path(eval_path) or eval_path
    metrics = evaluation.get("metrics") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(metrics.items()))
    record = builder.payload_file(
        crate_path,
        description=f"evaluation record of cell {cell_id}: {shown} (%) on {evaluation.get('n')} "
        "test images; checkpoint, run record and inputs with sha256",
    )
    builder.example_of(record, "evaluate", "evaluation_record")
    builder.example_of(record, "", "evaluation_records")
    builder.example_of(record, "aggregate", "evaluation_records")
    cells.evaluations.append(record)
    results = [record]
    log = Path(eval_path).with_suffix(".log").as_posix()
    if builder.crate_path(log) and (builder.root / log).is_file():
        log_id = builder.payload_file(
            builder.crate_path(log), description=f"evaluation log of {cell_id}"
        )
        builder.example_of(log_id, "evaluate", "log")
        results.append(log_id)
    autoattack = evaluation.get("autoattack") or {}
    checkpoint = evaluation.get("checkpoint") or {}
    builder.action(
        "evaluate",
        cell_id,
        name=f"evaluate {cell_id}",
        description=(
            f"`autolora evaluate` of the {checkpoint.get('name')!r} checkpoint (epoch "
            f"{checkpoint.get('epoch')}) of cell {cell_id} on {evaluation.get('device')}: "
            f"{shown} (%), AutoAttack {_autoattack_words(autoattack)}. "
            f"Command: {evaluation.get('command')}"
        ),
        objects=objects,
        results=results,
        start=evaluation.get("started"),
        end=evaluation.get("finished"),
        hosts=[evaluation.get("host")],
        jobs=[evaluation.get("slurm")],
        software=builder.environment(evaluation),
    )


def _autoattack_words(autoattack: Mapping[str, Any]) -> str:
    """``standard (apgd-ce, apgd-t, ...)`` from an evaluation record's ``autoattack`` entry."""
    if not autoattack.get("version"):
        return "not run"
    attacks = autoattack.get("attacks") or [
        p.get("attack") for p in autoattack.get("progression") or []
    ]
    return f"{autoattack['version']}" + (f" ({', '.join(map(str, attacks))})" if attacks else "")


def _describe_dataset(builder: CrateBuilder, cells: _Cells, item: Mapping[str, Any]) -> None:
    """The prepare/synthesize step behind a prepared dataset, from its ``dataset.json``."""
    from autolora.data.sources import CATALOGUE

    path = item["path"]
    if path in cells.datasets:
        return
    metadata_file = builder.root / path
    if not metadata_file.is_file():
        raise DataError(
            f"{metadata_file}: missing, though run records name it; rerun the workflow "
            "(snakemake) before writing the crate"
        )
    if item.get("sha256") and sha256_file(metadata_file) != item["sha256"]:
        raise ChecksumError(
            f"{metadata_file}: changed after the runs that used it recorded its sha256; rerun "
            "the workflow (snakemake) before writing the crate"
        )
    metadata = read_json(metadata_file)
    name = metadata.get("name") or Path(path).parent.name
    directory = Path(path).parent.as_posix()
    where = "referenced, not copied: the file at localPath (relative to the crate) has this sha256"
    metadata_id = builder.record_file(
        path, item.get("sha256"), description=f"metadata of prepared dataset {name}; {where}"
    )
    results = [metadata_id]
    for file, digest in sorted((metadata.get("files") or {}).items()):
        results.append(
            builder.record_file(
                f"{directory}/{file}", digest, description=f"prepared dataset {name}; {where}"
            )
        )
    sources = metadata.get("sources") or []
    synthetic = any("generator" in source for source in sources)
    rule = "synthesize_dataset" if synthetic else "prepare_dataset"
    for result in results:
        builder.example_of(result, rule, "prepared_dataset")
    objects = []
    catalogue = CATALOGUE.get(name)
    urls = {a.name: a.url for a in catalogue.files} if catalogue else {}
    for index, source in enumerate(sources):
        if synthetic:
            pv = builder.property_value(
                f"#dataset/{name}/generator",
                "generator_settings",
                source,
                description=f"settings of the generator of synthetic dataset {name}",
            )
            builder.example_of(pv, rule, "generator_settings")
            builder.example_of(pv, "", "generator_settings")
            objects.append(pv)
            continue
        file = source.get("file", f"archive-{index}")
        digest = {k: source[k] for k in ("sha256", "md5") if source.get(k)}
        archive = builder.graph.add(
            {
                "@id": urls.get(file, f"#download/{name}/{file}"),
                "@type": "File",
                "name": file,
                "encodingFormat": media_type(file),
                "sha256": digest.get("sha256"),
                "identifier": f"md5:{digest['md5']}" if "md5" in digest else None,
                "description": f"archive of dataset {name} as published; checked against its "
                "published checksum when downloaded",
            }
        )
        builder.payload[archive] = None
        builder.example_of(archive, rule, "archives")
        builder.example_of(archive, "", "dataset_sources")
        objects.append(archive)
    builder.action(
        rule,
        name,
        name=f"{'synthesize' if synthetic else 'prepare'} dataset {name}",
        description=f"{STEP_PURPOSE[rule]}: {metadata.get('num_examples')} images, "
        f"{metadata.get('num_classes')} classes, split schemes {', '.join(metadata.get('schemes') or [])}; "
        "no time or host is recorded for this step",
        objects=objects,
        results=results,
    )
    cells.datasets[path] = metadata_id


def _describe_weights(
    builder: CrateBuilder,
    cells: _Cells,
    item: Mapping[str, Any],
    record_item: Mapping[str, Any] | None,
) -> None:
    """The convert/pre-train step behind a backbone, from the JSON record beside it (whose
    sha256 the run record claims, ``record_item``, in runs since the records were sealed)."""
    from autolora.weights import lookup

    path = item["path"]
    if path in cells.weights:
        return
    record_path = record_item["path"] if record_item else Path(path).with_suffix(".json").as_posix()
    if not (builder.root / record_path).is_file():
        raise DataError(
            f"{builder.root / record_path}: the record of backbone {path} is missing; rerun the "
            "workflow (snakemake) before writing the crate"
        )
    record = read_json(builder.root / record_path)
    source = record.get("source") or {}
    pretrained = "pretrained_by" in source
    rule = "pretrain_backbone" if pretrained else "convert_weights"
    label = (
        f"{record.get('arch')}-eps{record.get('eps_pt'):g}"
        if record.get("eps_pt") is not None
        else Path(path).stem
    )
    weights = builder.record_file(path, item.get("sha256"))
    digest = sha256_file(builder.root / record_path)
    if record_item and record_item.get("sha256") and digest != record_item["sha256"]:
        raise ChecksumError(
            f"{builder.root / record_path}: changed after the runs that used backbone {path} "
            "recorded its sha256; rerun the workflow (snakemake) before writing the crate"
        )
    record_id = builder.record_file(record_path, digest)
    builder.example_of(weights, rule, "backbone")
    builder.example_of(record_id, rule, "backbone_record")
    if pretrained:
        settings = record.get("settings") or {}
        pv = builder.property_value(
            f"#backbone/{label}/pretrain",
            "pretrain_settings",
            settings,
            description=f"settings of `autolora pretrain` for backbone {label}",
        )
        builder.example_of(pv, rule, "pretrain_settings")
        builder.example_of(pv, "", "pretrain_settings")
        objects = [pv]
        metrics = record.get("metrics") or {}
        detail = (
            f"clean accuracy {metrics.get('clean_accuracy')} %, robust accuracy "
            f"{metrics.get('robust_accuracy')} % on its synthetic source task"
        )
    else:
        entry = lookup(record["arch"], record["eps_pt"])
        checkpoint = builder.graph.add(
            {
                "@id": entry.url,
                "@type": "File",
                "name": entry.file,
                "encodingFormat": OCTET_STREAM,
                "sha256": source.get("sha256"),
                "description": "pre-trained checkpoint of Salman et al. (2020) as published; "
                "verified against its published or pinned sha256 (config/weights.lock)",
            }
        )
        builder.payload[checkpoint] = None
        builder.example_of(checkpoint, rule, "checkpoint")
        builder.example_of(checkpoint, "", "backbone_checkpoints")
        objects = [checkpoint]
        detail = f"{record.get('num_tensors')} tensors"
    builder.action(
        rule,
        label,
        name=f"{'pre-train' if pretrained else 'convert'} backbone {label}",
        description=f"{STEP_PURPOSE[rule]}: {detail}",
        objects=objects,
        results=[weights, record_id],
    )
    cells.weights[path] = weights


@dataclass
class _Aggregate:
    results: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    end: str | None = None


RESOLVE_CONFIG_LOG = layout.report_log("resolve_config")
TOP_LEVEL = {
    layout.REPORT_MD: ("report", "the reproduction report (Markdown)"),
    "report.html": ("report", "the reproduction report (HTML)"),
    layout.COMPARISON_CSV: ("report", "paper vs. reproduction, number by number"),
    layout.COMPARISON_MD: ("report", "paper vs. reproduction, number by number"),
    layout.CLAIMS: ("report", "the paper's qualitative claims, checked on the reproduction"),
    layout.MISSING_CELLS: ("report", "cells without an evaluation record and the command for each"),
}


def load_claims(builder: CrateBuilder) -> dict[str, Any] | None:
    """Register the sha256 the provenance indices claim for files of the folder (tables, report,
    figures, table indices, the resolved config); returns the claim on the paper's numbers."""
    from autolora.reporting.provenance import all_indices

    folder = builder.folder
    if not (folder / layout.PROVENANCE_DIR).is_dir():
        return None
    for index in all_indices(folder):
        for output in index.get("outputs") or []:
            inside = builder.crate_path(output["path"])
            if inside:
                builder.claims[inside] = (
                    output["sha256"],
                    f"{folder}/{layout.table_index(index['table'])}",
                )
    paper = None
    results_index = folder / layout.PROVENANCE_DIR / layout.RESULTS_INDEX
    if results_index.is_file():
        index = read_json(results_index)
        for item in [
            *(index.get("tables") or []),
            *(index.get("files") or []),
            *(index.get("inputs") or []),
        ]:
            inside = builder.crate_path(item["path"])
            if inside:
                builder.claims[inside] = (item["sha256"], str(results_index))
            elif item.get("role") == "paper results":
                paper = {**item, "claimed_by": str(results_index)}
    return paper


def _describe_aggregate(builder: CrateBuilder) -> _Aggregate:
    from autolora.reporting.provenance import all_indices

    aggregate = _Aggregate()
    folder = builder.folder
    indices = all_indices(folder) if (folder / layout.PROVENANCE_DIR).is_dir() else []
    for index in indices:
        if index.get("created") and (aggregate.end is None or index["created"] > aggregate.end):
            aggregate.end = index["created"]

    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        path = file.relative_to(folder).as_posix()
        top = path.split("/", 1)[0]
        if (
            path
            in (layout.CRATE_METADATA, layout.RESOLVED_CONFIG, RESOLVE_CONFIG_LOG, layout.CRATE_LOG)
            or top in (layout.CRATE_SOURCE_DIR, layout.RUNS_DIR)
            or _hidden(Path(path))
            or path.endswith(LARGE_SUFFIXES + SKIPPED_SUFFIXES)
        ):
            continue
        entity = builder.payload_file(path)
        parameter, description = _aggregate_output(path)
        builder.graph.add({"@id": entity, "description": description})
        if parameter:
            builder.example_of(entity, "aggregate", parameter)
            if parameter in WORKFLOW_PARAMETERS:
                builder.example_of(entity, "", parameter)
        aggregate.results.append(entity)

    for index in indices:
        aggregate.numbers += _describe_numbers(builder, index)
    return aggregate


def _aggregate_output(path: str) -> tuple[str | None, str]:
    if path in TOP_LEVEL:
        return TOP_LEVEL[path]
    if path.startswith(f"{layout.TABLES_DIR}/"):
        return "tables", f"table {Path(path).stem} ({media_type(path)})"
    if path.startswith(f"{layout.FIGURES_DIR}/"):
        return "figures", f"figure {Path(path).stem}"
    if path == f"{layout.PROVENANCE_DIR}/{layout.RESULTS_INDEX}":
        return (
            "provenance_index",
            "results index: every other file of the folder with its sha256; its own sha256 is "
            "the folder's seal (`autolora audit --all --seal`)",
        )
    if path.startswith(f"{layout.PROVENANCE_DIR}/"):
        return (
            "provenance_index",
            f"provenance index of {Path(path).stem}: every number → the "
            "evaluation records of its seeds → checkpoints, run records and inputs with sha256",
        )
    if path.startswith(f"{layout.LOGS_DIR}/"):
        return None, f"log of rule {Path(path).stem}"
    return None, "written by the workflow"


def _describe_numbers(builder: CrateBuilder, index: Mapping[str, Any]) -> list[str]:
    table = index["table"]
    files = [
        f"tables/{table}{suffix}"
        for suffix in (".csv", ".md", ".tex", "_values.csv")
        if f"tables/{table}{suffix}" in builder.graph.entities
    ]
    index_file = layout.table_index(table)
    numbers = []
    for number in index.get("numbers") or []:
        identifier = f"#number/{table}/{number['row']}/{number['column']}"
        evaluations = []
        for seed in number.get("seeds") or []:
            inside = builder.crate_path(seed.get("evaluation") or "")
            if seed.get("status") == "ok" and inside in builder.graph.entities:
                evaluations.append(inside)
        kind = {
            "mean": f"mean over {number.get('n')} of {number.get('expected')} seeds",
            "p_value": f"p-value ({number.get('test')} t-test) over the seeds' values",
            "ratio": f"computed: {number.get('formula')}",
        }.get(number.get("kind"), number.get("kind"))
        builder.graph.add(
            {
                "@id": identifier,
                "@type": "PropertyValue",
                "name": f"{index.get('title') or table}: {number['row']} × {number['column']}",
                "propertyID": number.get("metric") or number["column"],
                "value": number.get("value"),
                "unitText": "%" if number.get("kind") in ("mean", "ratio") else None,
                "description": f"{number.get('display')}: {kind}",
                "wasDerivedFrom": [ref(e) for e in evaluations],
                "subjectOf": [ref(f) for f in files + [index_file] if f in builder.graph.entities],
            }
        )
        for file in files + [index_file]:
            if file in builder.graph.entities and file.endswith((".csv", ".json")):
                builder.graph.link(file, "about", identifier)
        builder.example_of(identifier, "aggregate", "numbers")
        numbers.append(identifier)
    return numbers


# --------------------------------------------------------------------------------------------
# Assembly


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
    cells: _Cells,
    aggregate: _Aggregate,
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
    cells: _Cells,
    aggregate: _Aggregate,
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
    cells: _Cells,
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
