"""The steps behind each cell of the grid, from its records: training (the run record),
evaluation (the evaluation record), and the prepared dataset (``dataset.json``) and backbone (the
weights record) the training used."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autolora.errors import ChecksumError, DataError
from autolora.files import parse_json, read_json, sha256_bytes
from autolora.planning import layout
from autolora.planning.cells import NOT_READ_BY_TRAINING
from autolora.reporting.crate.graph import CrateBuilder
from autolora.reporting.crate.vocabulary import OCTET_STREAM, STEP_PURPOSE, media_type


@dataclass
class DescribedCells:
    """What describing the cells found, for the workflow-level entities: the ids of the
    histories and evaluation records (the aggregation's inputs), of the datasets and backbones
    already described, and the counts of cells trained and without a run record."""

    histories: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # dataset.json record path -> id
    weights: dict[str, str] = field(default_factory=dict)  # weights record path -> id
    trained: int = 0
    missing: int = 0


def describe_cells(
    builder: CrateBuilder, cell_ids: list[str], results_root: str, checkpoint: str
) -> DescribedCells:
    """The training and evaluation of each cell that has a run record, with the datasets and
    backbones they used; a cell without one is counted as missing."""
    cells = DescribedCells()
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
    builder: CrateBuilder,
    cells: DescribedCells,
    cell_id: str,
    run_path: str,
    run: Mapping[str, Any],
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
            + (_null_choice_words(choice) if value is None else ""),
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
    results += _step_log(builder, log, "train", f"training log of {cell_id}")

    attempts = run.get("attempts") or [{"host": run.get("host"), "slurm": run.get("slurm")}]
    resumed = sum(1 for a in attempts if a.get("resumed_from_epoch") is not None)
    _job_action(
        builder,
        "train",
        cell_id,
        run,
        f"`autolora train` of cell {cell_id}: {run.get('epochs_run')} epoch(s) on "
        f"{run.get('device')}, {len(attempts)} attempt(s) ({resumed} resumed); "
        f"stopped: {run.get('stop_reason')}",
        objects=objects,
        results=results,
        attempts=attempts,
    )


def _describe_evaluation(
    builder: CrateBuilder, cells: DescribedCells, cell_id: str, eval_path: str
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
    results += _step_log(builder, log, "evaluate", f"evaluation log of {cell_id}")
    autoattack = evaluation.get("autoattack") or {}
    checkpoint = evaluation.get("checkpoint") or {}
    _job_action(
        builder,
        "evaluate",
        cell_id,
        evaluation,
        f"`autolora evaluate` of the {checkpoint.get('name')!r} checkpoint (epoch "
        f"{checkpoint.get('epoch')}) of cell {cell_id} on {evaluation.get('device')}: "
        f"{shown} (%), AutoAttack {_autoattack_words(autoattack)}",
        objects=objects,
        results=results,
    )


def _job_action(
    builder: CrateBuilder,
    rule: str,
    cell_id: str,
    record: Mapping[str, Any],
    summary: str,
    *,
    objects: list[str],
    results: list[str],
    attempts: Sequence[Mapping[str, Any]] = (),
) -> None:
    """The action of a cell's job (``rule``: train or evaluate) from the record it wrote: its
    times, software and command, and the hosts and SLURM jobs of its ``attempts`` and its own."""
    builder.action(
        rule,
        cell_id,
        name=f"{rule} {cell_id}",
        description=f"{summary}. Command: {record.get('command')}",
        objects=objects,
        results=results,
        start=record.get("started"),
        end=record.get("finished"),
        hosts=[*(a.get("host") for a in attempts), record.get("host")],
        jobs=[*(a.get("slurm") for a in attempts), record.get("slurm")],
        software=builder.environment(record),
    )


def _step_log(builder: CrateBuilder, log: str, rule: str, description: str) -> list[str]:
    """The log a step wrote beside its record (``log``, relative to the root), as a value of
    ``rule``'s ``log`` parameter; none when it lies outside the crate or was not written."""
    inside = builder.crate_path(log)
    if not inside or not (builder.root / log).is_file():
        return []
    log_id = builder.payload_file(inside, description=description)
    builder.example_of(log_id, rule, "log")
    return [log_id]


def _autoattack_words(autoattack: Mapping[str, Any]) -> str:
    """``standard (apgd-ce, apgd-t, ...)`` from an evaluation record's ``autoattack`` entry."""
    if not autoattack.get("version"):
        return "not run"
    attacks = autoattack.get("attacks") or [
        p.get("attack") for p in autoattack.get("progression") or []
    ]
    return f"{autoattack['version']}" + (f" ({', '.join(map(str, attacks))})" if attacks else "")


def _describe_dataset(
    builder: CrateBuilder, cells: DescribedCells, item: Mapping[str, Any]
) -> None:
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
    data = metadata_file.read_bytes()
    if item.get("sha256") and sha256_bytes(data) != item["sha256"]:
        raise ChecksumError(
            f"{metadata_file}: changed after the runs that used it recorded its sha256; rerun "
            "the workflow (snakemake) before writing the crate"
        )
    metadata = parse_json(data, metadata_file)
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
            description = f"settings of the generator of synthetic dataset {name}"
            pv = _settings_value(
                builder,
                f"#dataset/{name}/generator",
                "generator_settings",
                source,
                rule,
                description,
            )
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
    cells: DescribedCells,
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
    data = (builder.root / record_path).read_bytes()
    record = parse_json(data, builder.root / record_path)
    source = record.get("source") or {}
    pretrained = "pretrained_by" in source
    rule = "pretrain_backbone" if pretrained else "convert_weights"
    label = (
        f"{record.get('arch')}-eps{record.get('eps_pt'):g}"
        if record.get("eps_pt") is not None
        else Path(path).stem
    )
    weights = builder.record_file(path, item.get("sha256"))
    digest = sha256_bytes(data)
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
        description = f"settings of `autolora pretrain` for backbone {label}"
        pv = _settings_value(
            builder, f"#backbone/{label}/pretrain", "pretrain_settings", settings, rule, description
        )
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


def _settings_value(
    builder: CrateBuilder, node_id: str, name: str, value: Any, rule: str, description: str
) -> str:
    """The settings a job ran with as a PropertyValue, an example of its rule's parameter
    ``name`` (and of the workflow's)."""
    pv = builder.property_value(node_id, name, value, description=description)
    builder.example_of(pv, rule, name)
    builder.example_of(pv, "", name)
    return pv


def _null_choice_words(choice: str) -> str:
    if choice in NOT_READ_BY_TRAINING:
        return "; null: the evaluation's choice (see the evaluation record's checkpoint)"
    return "; null: the choice does not apply to this cell's method"
