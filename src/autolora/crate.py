"""A results folder as a Workflow Run RO-Crate: the research object a reproduction is deposited as.

``results/<protocol>/ro-crate-metadata.json`` describes, in RO-Crate 1.1 JSON-LD with the
Process Run, Workflow Run and Provenance Run Crate 0.5 profiles and Workflow RO-Crate 1.0:

- the workflow (``source/Snakefile``, a copy of the workflow definition taken when the crate is
  written) as a ``ComputationalWorkflow`` whose parts are the rules that ran, with their
  ``FormalParameter``\\ s and the connections between them;
- one ``CreateAction`` for the whole run and one per executed step (prepare or synthesize a
  dataset, convert or pre-train a backbone, train a cell, evaluate a cell, resolve the config,
  aggregate), each with its tool, inputs, outputs, times, host and SLURM job where the records
  hold them; a ``ControlAction`` per step and an ``OrganizeAction`` for Snakemake;
- every file of the folder (tables, figures, report, records, logs) as a ``File`` with its sha256
  and media type; every table number as a ``PropertyValue`` derived from the evaluation records
  behind it (the provenance index's link), so that the chain number → evaluation record →
  checkpoint → prepared data and weights can be followed in the crate alone;
- the software environment, the protocol's resolved choices, the licence and the paper.

Large files (checkpoints, prepared data, backbone weights) are referenced, not copied: ``File``
entities with a ``#`` identifier, the sha256 the records claim for them and their ``localPath``
relative to the crate. Every fact is taken from the records that already exist (run and evaluation
records, ``dataset.json``, the weights records, the provenance index); small files whose hash a
record claims are re-hashed and must agree, large ones are not re-read here (``autolora audit
--crate`` does that). The output is a function of the folder's content: writing it twice gives the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.io import HASH_CHUNK_BYTES, atomic_path, atomic_write, read_json, sha256_file

METADATA_FILE = "ro-crate-metadata.json"
SOURCE_DIR = "source"
RESOLVED_CONFIG = "config.resolved.yaml"
CRATE_LOG = "logs/crate.log"  # still being written while the crate is: not described

RO_CRATE = "https://w3id.org/ro/crate/1.1"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
# The RO-Crate 1.1 context lacks the workflow-run terms and two terms later RO-Crate versions
# define; they are declared inline (RO-Crate 1.1 appendix "Extending RO-Crate") with the IRIs the
# workflow-run vocabulary and RO-Crate 1.2+ use, so that the crate needs no other remote context.
CONTEXT: list[Any] = [
    f"{RO_CRATE}/context",
    {
        "sha256": "http://schema.org/sha256",
        "localPath": "https://w3id.org/ro/terms#localPath",
        "wfrun": WFRUN,
        "ParameterConnection": "wfrun:ParameterConnection",
        "connection": "wfrun:connection",
        "sourceParameter": "wfrun:sourceParameter",
        "targetParameter": "wfrun:targetParameter",
    },
]
PROFILES: tuple[tuple[str, str, str], ...] = (
    ("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/provenance/0.5", "Provenance Run Crate", "0.5"),
    ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate", "1.0"),
)
SNAKEMAKE_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"
LICENSE_ID = "https://spdx.org/licenses/MIT"
PAPER_ID = "https://arxiv.org/abs/2310.01818"
PAPER_AUTHORS = ("Xilie Xu", "Jingfeng Zhang", "Mohan Kankanhalli")
COMPLETED = "http://schema.org/CompletedActionStatus"

# What `copy_workflow_source` takes from the workflow's folder (files, or folders taken whole).
WORKFLOW_SOURCES = ("Snakefile", "workflow", "config/schema.yaml", "config/weights.lock", "envs")
MAIN_WORKFLOW = f"{SOURCE_DIR}/Snakefile"
# Files the crate does not describe: checkpoints are referenced through the run records instead,
# resume state is not a result, and a deposit archive is made from the crate, not part of it.
LARGE_SUFFIXES = (".safetensors",)
SKIPPED_SUFFIXES = (".zip",)

MEDIA_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".html": "text/html",
    ".tex": "application/x-tex",
    ".png": "image/png",
    ".pdf": "application/pdf",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".log": "text/plain",
    ".txt": "text/plain",
    ".lock": "text/plain",
    ".smk": "text/plain",
    ".rst": "text/x-rst",
    ".sh": "text/x-shellscript",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".tar": "application/x-tar",
    ".zip": "application/zip",
}
OCTET_STREAM = "application/octet-stream"
ARCHIVE_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: the same crate gives the same archive

# Steps in the order the workflow runs them (HowToStep positions).
STEP_ORDER = (
    "synthesize_dataset",
    "prepare_dataset",
    "pretrain_backbone",
    "convert_weights",
    "train",
    "evaluate",
    "resolve_config",
    "aggregate",
)
STEP_PURPOSE = {
    "synthesize_dataset": "generates a synthetic dataset and prepares it (`autolora data synthesize`)",
    "prepare_dataset": "verifies a dataset's downloaded archives and prepares the dataset and its "
    "splits (`autolora data prepare`)",
    "pretrain_backbone": "adversarially pre-trains the tiny demo backbone (`autolora pretrain`)",
    "convert_weights": "verifies a downloaded robustness-library checkpoint against its pinned "
    "sha256 and converts it to safetensors (`autolora weights convert`)",
    "train": "robust fine-tuning of one cell (`autolora train`)",
    "evaluate": "SA / PGD-10 / AutoAttack of a cell's reported checkpoint (`autolora evaluate`)",
    "resolve_config": "writes the configuration the tables are built from",
    "aggregate": "tables, p-values, figures, paper comparison, provenance index and report "
    "(`autolora aggregate`)",
}
# (rule, parameter) -> (additionalType, description)
PARAMETERS: dict[tuple[str, str], tuple[str, str]] = {
    ("synthesize_dataset", "generator_settings"): ("PropertyValue", "settings of the generator"),
    ("synthesize_dataset", "prepared_dataset"): ("File", "prepared dataset files"),
    ("prepare_dataset", "archives"): ("File", "downloaded archives (published checksums)"),
    ("prepare_dataset", "prepared_dataset"): ("File", "prepared dataset files"),
    ("pretrain_backbone", "pretrain_settings"): ("PropertyValue", "pre-training settings"),
    ("pretrain_backbone", "backbone"): ("File", "backbone weights (safetensors)"),
    ("pretrain_backbone", "backbone_record"): ("File", "record of the backbone"),
    ("convert_weights", "checkpoint"): ("File", "published checkpoint (pinned sha256)"),
    ("convert_weights", "backbone"): ("File", "backbone weights (safetensors)"),
    ("convert_weights", "backbone_record"): ("File", "record of the conversion"),
    ("train", "prepared_dataset"): ("File", "prepared dataset metadata and split files"),
    ("train", "backbone"): ("File", "pre-trained backbone weights"),
    ("train", "protocol_choice"): ("PropertyValue", "a resolved choice of the protocol"),
    ("train", "run_record"): ("File", "run record (run.json)"),
    ("train", "history"): ("File", "per-epoch history (history.csv)"),
    ("train", "checkpoints"): ("File", "checkpoints (best_val, best_test, final)"),
    ("train", "log"): ("File", "training log"),
    ("evaluate", "run_record"): ("File", "the cell's run record"),
    ("evaluate", "checkpoint"): ("File", "the reported checkpoint"),
    ("evaluate", "prepared_dataset"): ("File", "prepared dataset metadata and split files"),
    ("evaluate", "evaluation_record"): ("File", "evaluation record (eval-<checkpoint>.json)"),
    ("evaluate", "log"): ("File", "evaluation log"),
    ("resolve_config", "config"): ("File", "workflow configuration file"),
    ("resolve_config", "resolved_config"): ("File", "the resolved configuration"),
    ("aggregate", "resolved_config"): ("File", "the resolved configuration"),
    ("aggregate", "paper_results"): ("File", "the paper's reported numbers"),
    ("aggregate", "evaluation_records"): ("File", "every cell's evaluation record"),
    ("aggregate", "histories"): ("File", "every cell's history"),
    ("aggregate", "tables"): ("File", "tables (CSV, Markdown, LaTeX, per-seed values)"),
    ("aggregate", "numbers"): ("PropertyValue", "a number of a table"),
    ("aggregate", "figures"): ("File", "figures"),
    ("aggregate", "provenance_index"): ("File", "provenance index read by `autolora audit`"),
    ("aggregate", "report"): ("File", "reproduction report, comparison, claims, missing cells"),
}
WORKFLOW_PARAMETERS: dict[str, tuple[str, str]] = {
    "config": ("File", "workflow configuration file"),
    "paper_results": ("File", "the paper's reported numbers"),
    "dataset_sources": ("File", "dataset archives (published checksums)"),
    "generator_settings": ("PropertyValue", "settings of a synthetic dataset's generator"),
    "backbone_checkpoints": ("File", "pre-trained checkpoints (pinned sha256)"),
    "pretrain_settings": ("PropertyValue", "pre-training settings of the demo backbone"),
    "protocol_choice": ("PropertyValue", "a resolved choice of the protocol"),
    "tables": ("File", "tables"),
    "figures": ("File", "figures"),
    "report": ("File", "reproduction report, comparison, claims, missing cells"),
    "provenance_index": ("File", "provenance index"),
    "evaluation_records": ("File", "evaluation records"),
    "run_records": ("File", "run records and histories"),
    "checkpoints": ("File", "checkpoints (referenced by sha256)"),
}
# (source rule, parameter) -> [(target rule, parameter)]; the rule "" is the workflow itself.
CONNECTIONS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("", "config"), ("resolve_config", "config")),
    (("", "paper_results"), ("aggregate", "paper_results")),
    (("", "dataset_sources"), ("prepare_dataset", "archives")),
    (("", "generator_settings"), ("synthesize_dataset", "generator_settings")),
    (("", "backbone_checkpoints"), ("convert_weights", "checkpoint")),
    (("", "pretrain_settings"), ("pretrain_backbone", "pretrain_settings")),
    (("", "protocol_choice"), ("train", "protocol_choice")),
    (("synthesize_dataset", "prepared_dataset"), ("train", "prepared_dataset")),
    (("synthesize_dataset", "prepared_dataset"), ("evaluate", "prepared_dataset")),
    (("prepare_dataset", "prepared_dataset"), ("train", "prepared_dataset")),
    (("prepare_dataset", "prepared_dataset"), ("evaluate", "prepared_dataset")),
    (("pretrain_backbone", "backbone"), ("train", "backbone")),
    (("convert_weights", "backbone"), ("train", "backbone")),
    (("train", "run_record"), ("evaluate", "run_record")),
    (("train", "checkpoints"), ("evaluate", "checkpoint")),
    (("train", "history"), ("aggregate", "histories")),
    (("evaluate", "evaluation_record"), ("aggregate", "evaluation_records")),
    (("resolve_config", "resolved_config"), ("aggregate", "resolved_config")),
    (("aggregate", "tables"), ("", "tables")),
    (("aggregate", "figures"), ("", "figures")),
    (("aggregate", "report"), ("", "report")),
    (("aggregate", "provenance_index"), ("", "provenance_index")),
    (("evaluate", "evaluation_record"), ("", "evaluation_records")),
    (("train", "run_record"), ("", "run_records")),
    (("train", "checkpoints"), ("", "checkpoints")),
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
    staging = Path(tempfile.mkdtemp(prefix=f".{SOURCE_DIR}.", dir=folder))
    try:
        for name, path in sorted(copies.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        final = folder / SOURCE_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


# --------------------------------------------------------------------------------------------
# Building the graph


@dataclass
class _Graph:
    """Entities by ``@id``; adding an entity twice merges it, list values are unioned in order."""

    entities: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, entity: Mapping[str, Any]) -> str:
        identifier = entity["@id"]
        current = self.entities.setdefault(identifier, {"@id": identifier})
        for key, value in entity.items():
            if value is None or value == [] or key == "@id":
                continue
            if key not in current:
                current[key] = list(value) if isinstance(value, list) else value
            elif isinstance(current[key], list):
                for item in value if isinstance(value, list) else [value]:
                    if item not in current[key]:
                        current[key].append(item)
            elif current[key] != value and key == "sha256":
                raise DataError(
                    f"{identifier}: two records claim different sha256 ({current[key][:12]}, "
                    f"{value[:12]}); rerun the step that writes it and the steps after it"
                )
        return identifier

    def link(self, identifier: str, key: str, *targets: str) -> None:
        self.add({"@id": identifier, key: [_ref(t) for t in targets]})

    def jsonld(self, first: Sequence[str]) -> dict[str, Any]:
        order = list(first) + sorted(set(self.entities) - set(first))
        return {"@context": CONTEXT, "@graph": [_compact(self.entities[i]) for i in order]}


def _ref(identifier: str) -> dict[str, str]:
    return {"@id": identifier}


def _compact(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Single-element lists as single values (RO-Crate 1.1's compacted JSON-LD)."""
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in entity.items()}


def iso_time(stamp: str | None) -> str | None:
    """A record's UTC time stamp with an explicit offset (``...+00:00``, not ``...Z``), the form
    the Process Run Crate profile asks for."""
    if stamp and stamp.endswith("Z"):
        return stamp[:-1] + "+00:00"
    return stamp


def media_type(path: str | Path) -> str:
    """The IANA media type of a file by its name (``application/octet-stream`` if unknown)."""
    if Path(path).name == "Snakefile":
        return "text/plain"
    return MEDIA_TYPES.get(Path(path).suffix.lower(), OCTET_STREAM)


@dataclass
class _Builder:
    folder: Path
    root: Path
    config: dict[str, Any]
    graph: _Graph = field(default_factory=_Graph)
    payload: list[str] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)
    code_versions: list[dict[str, Any]] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    used_rules: dict[str, str] = field(default_factory=dict)  # rule -> tool id
    rule_files: dict[str, str] = field(default_factory=dict)  # rule -> crate path of its file
    rule_software: dict[str, list[str]] = field(default_factory=dict)

    # ---- files ---------------------------------------------------------------------------

    def crate_path(self, record_path: str) -> str | None:
        """``record_path`` (relative to the root, as records store it) relative to the crate
        folder, or None when it lies outside it."""
        absolute = (self.root / record_path).resolve()
        try:
            return absolute.relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return None

    def payload_file(
        self,
        crate_path: str,
        *,
        claimed: str | None = None,
        claimed_by: str | None = None,
        **properties: Any,
    ) -> str:
        """A file inside the crate: hashed now; a hash claimed by a record must agree."""
        file = self.folder / crate_path
        if not file.is_file():
            raise DataError(
                f"{file}: missing, though {claimed_by or 'the workflow'} names it; rerun the "
                "workflow (snakemake) before writing the crate"
            )
        digest = sha256_file(file)
        if claimed is not None and digest != claimed:
            raise ChecksumError(
                f"{file}: sha256 {digest[:12]} differs from {claimed[:12]} recorded in "
                f"{claimed_by}; the file changed after it was recorded: rerun the step that "
                "writes it (snakemake) before writing the crate"
            )
        entity = {
            "@id": crate_path,
            "@type": "File",
            "name": Path(crate_path).name,
            "encodingFormat": media_type(crate_path),
            "contentSize": str(file.stat().st_size),
            "sha256": digest,
            **properties,
        }
        self.graph.add(entity)
        if crate_path not in self.payload:
            self.payload.append(crate_path)
        return crate_path

    def referenced_file(
        self, record_path: str, sha256: str | None, *, name: str | None = None, **properties: Any
    ) -> str:
        """A large file (checkpoint, prepared data, weights) referenced by the sha256 a record
        claims, not copied: a ``#`` identifier and its path relative to the crate."""
        identifier = f"#{record_path}"
        local = os.path.relpath(self.root / record_path, self.folder)
        entity = {
            "@id": identifier,
            "@type": "File",
            "name": name or Path(record_path).name,
            "encodingFormat": media_type(record_path),
            "localPath": Path(local).as_posix(),
            "sha256": sha256,
            "description": "referenced, not copied: the file at localPath (relative to the "
            "crate) has this sha256",
            **properties,
        }
        self.graph.add(entity)
        if identifier not in self.payload:
            self.payload.append(identifier)
        return identifier

    def record_file(self, record_path: str, sha256: str | None, **properties: Any) -> str:
        """A file a record names: in the crate when it is a small file inside the folder,
        referenced otherwise."""
        inside = self.crate_path(record_path)
        if inside is not None and not record_path.endswith(LARGE_SUFFIXES):
            return self.payload_file(
                inside, claimed=sha256, claimed_by=properties.pop("claimed_by", None), **properties
            )
        properties.pop("claimed_by", None)
        return self.referenced_file(record_path, sha256, **properties)

    # ---- contextual entities ---------------------------------------------------------------

    def tool(self, rule: str) -> str:
        if rule in self.used_rules:
            return self.used_rules[rule]
        file = self.rule_files.get(rule, MAIN_WORKFLOW)
        identifier = f"{file}#{rule}"
        inputs, outputs = _rule_parameters(rule)
        self.graph.add(
            {
                "@id": identifier,
                "@type": "SoftwareApplication",
                "name": f"rule {rule}",
                "description": STEP_PURPOSE.get(rule, rule),
                "url": _ref(file),
                "input": [_ref(self.parameter(rule, p)) for p in inputs],
                "output": [_ref(self.parameter(rule, p)) for p in outputs],
            }
        )
        self.used_rules[rule] = identifier
        return identifier

    def parameter(self, rule: str, name: str) -> str:
        kind, description = PARAMETERS[(rule, name)] if rule else WORKFLOW_PARAMETERS[name]
        identifier = f"{MAIN_WORKFLOW}#param/{rule + '/' if rule else ''}{name}"
        self.graph.add(
            {
                "@id": identifier,
                "@type": "FormalParameter",
                "additionalType": kind,
                "name": name,
                "description": description,
                "conformsTo": _ref("https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"),
            }
        )
        return identifier

    def example_of(self, entity: str, rule: str, name: str) -> None:
        parameter = self.parameter(rule, name)
        self.graph.link(entity, "exampleOfWork", parameter)
        self.graph.link(parameter, "workExample", entity)

    def software(self, name: str, version: str | None) -> str:
        if name == "python":
            implementation, _, number = (version or "Python unknown").partition(" ")
            identifier = f"#software/python/{implementation}-{number}"
            entity = {"name": implementation, "url": _ref("https://www.python.org/")}
            version = number
        elif name == "autolora":
            identifier = f"#software/autolora/{version}"
            entity = {
                "name": "autolora",
                "description": "this workflow's Python package (models, methods, attacks, "
                "training, evaluation, statistics, provenance)",
                "url": _ref(MAIN_WORKFLOW),
            }
        else:
            identifier = f"https://pypi.org/project/{name}/{version}/"
            entity = {"name": name, "url": _ref(f"https://pypi.org/project/{name}/")}
        self.graph.add(
            {
                "@id": identifier,
                "@type": "SoftwareApplication",
                "softwareVersion": version,
                **entity,
            }
        )
        return identifier

    def environment(self, record: Mapping[str, Any]) -> list[str]:
        """Software entities of the packages and Python a record names."""
        packages = dict(record.get("packages") or {})
        found = [self.software(n, v) for n, v in sorted(packages.items()) if v is not None]
        if record.get("python"):
            found.append(self.software("python", record["python"]))
        return found

    def note_code(self, record: Mapping[str, Any]) -> None:
        code = record.get("code")
        if code and code not in self.code_versions:
            self.code_versions.append(dict(code))

    def place(self, host: str | None) -> str | None:
        if not host:
            return None
        return self.graph.add({"@id": f"#host/{host}", "@type": "Place", "name": host})

    def slurm_job(self, slurm: Mapping[str, Any] | None) -> str | None:
        if not slurm or not slurm.get("job_id"):
            return None
        details = ", ".join(
            f"{key} {slurm[key]}"
            for key in ("node", "partition", "cluster", "array_task_id", "restart_count")
            if slurm.get(key) not in (None, "")
        )
        return self.graph.add(
            {
                "@id": f"#slurm/{slurm['job_id']}",
                "@type": "PropertyValue",
                "propertyID": "SLURM_JOB_ID",
                "name": "SLURM job id",
                "value": str(slurm["job_id"]),
                "description": f"SLURM job {slurm['job_id']}"
                + (f" ({details})" if details else ""),
            }
        )

    def property_value(self, identifier: str, name: str, value: Any, **extra: Any) -> str:
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        return self.graph.add(
            {
                "@id": identifier,
                "@type": "PropertyValue",
                "name": name,
                "propertyID": name,
                "value": value,
                **extra,
            }
        )

    # ---- actions -----------------------------------------------------------------------------

    def action(
        self,
        rule: str,
        key: str,
        *,
        name: str,
        description: str,
        objects: Iterable[str],
        results: Iterable[str],
        start: str | None = None,
        end: str | None = None,
        hosts: Iterable[str | None] = (),
        jobs: Iterable[Mapping[str, Any] | None] = (),
        software: Iterable[str] = (),
    ) -> str:
        """A step's CreateAction (and its ControlAction, for the Provenance Run Crate)."""
        tool = self.tool(rule)
        identifier = f"#action/{rule}/{key}"
        places = [p for p in (self.place(h) for h in hosts) if p]
        job_ids = [j for j in (self.slurm_job(job) for job in jobs) if j]
        self.graph.add(
            {
                "@id": identifier,
                "@type": "CreateAction",
                "name": name,
                "description": description,
                "instrument": _ref(tool),
                "object": [_ref(o) for o in dict.fromkeys(objects)],
                "result": [_ref(r) for r in dict.fromkeys(results)],
                "startTime": iso_time(start),
                "endTime": iso_time(end),
                "actionStatus": COMPLETED,
                "location": [_ref(p) for p in dict.fromkeys(places)],
                "identifier": [_ref(j) for j in dict.fromkeys(job_ids)],
            }
        )
        for item in software:
            self.graph.link(tool, "softwareRequirements", item)
        self.times += [iso_time(t) for t in (start, end) if t]
        self.mentions.append(identifier)
        self.graph.add(
            {
                "@id": f"#control/{rule}/{key}",
                "@type": "ControlAction",
                "name": f"orchestrate {name}",
                "instrument": _ref(f"{MAIN_WORKFLOW}#step/{rule}"),
                "object": _ref(identifier),
                "actionStatus": COMPLETED,
            }
        )
        return identifier


def _rule_parameters(rule: str) -> tuple[list[str], list[str]]:
    outputs_of = {
        "synthesize_dataset": {"prepared_dataset"},
        "prepare_dataset": {"prepared_dataset"},
        "pretrain_backbone": {"backbone", "backbone_record"},
        "convert_weights": {"backbone", "backbone_record"},
        "train": {"run_record", "history", "checkpoints", "log"},
        "evaluate": {"evaluation_record", "log"},
        "resolve_config": {"resolved_config"},
        "aggregate": {"tables", "numbers", "figures", "provenance_index", "report"},
    }[rule]
    names = [name for r, name in PARAMETERS if r == rule]
    return [n for n in names if n not in outputs_of], [n for n in names if n in outputs_of]


def rule_files(source: Path) -> dict[str, str]:
    """Rule name -> crate path of the file defining it, read from the copied workflow."""
    found: dict[str, str] = {}
    for file in [source / "Snakefile", *sorted((source / "workflow").rglob("*.smk"))]:
        if file.is_file():
            for name in re.findall(r"^rule (\w+):", file.read_text(), flags=re.MULTILINE):
                found.setdefault(name, f"{SOURCE_DIR}/{file.relative_to(source).as_posix()}")
    return found


# --------------------------------------------------------------------------------------------
# Describing a results folder


def describe_results(
    folder: str | Path, *, root: str | Path = ".", authors: Sequence[str] = ()
) -> dict[str, Any]:
    """The RO-Crate JSON-LD of a finished results folder (``results/<protocol>/``).

    ``root``: the folder the records' paths are relative to (where the workflow ran).
    ``authors``: people who ran the reproduction, ``Name`` or ``Name <https://orcid.org/...>``.
    """
    from autolora.grid import expand_grid, load_config, reported_checkpoint

    folder, root = Path(folder), Path(root)
    config_file = folder / RESOLVED_CONFIG
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
            f"{folder}: its {RESOLVED_CONFIG} puts the results at {expected} relative to "
            f"{root.resolve()}; pass --root <the folder the workflow ran from>"
        )
    builder = _Builder(folder=folder, root=root, config=config)
    builder.rule_files = rule_files(folder / SOURCE_DIR)
    grid = expand_grid(config)
    checkpoint = reported_checkpoint(config)
    results_root = str(config.get("results", "results"))

    source_files = _describe_source(builder)
    cells = _describe_cells(builder, sorted(grid.cells), results_root, checkpoint)
    aggregate = _describe_aggregate(builder, source_files)
    return _assemble(builder, source_files, cells, aggregate, authors)


def _describe_source(builder: _Builder) -> dict[str, list[str]]:
    """The copied workflow definition; returns the config and paper-results copies."""
    found: dict[str, list[str]] = {"config": [], "paper_results": []}
    source = builder.folder / SOURCE_DIR
    configured = {"schema.yaml", "weights.lock"}
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        path = file.relative_to(builder.folder).as_posix()
        inner = file.relative_to(source).as_posix()
        if path == MAIN_WORKFLOW:
            continue
        builder.payload_file(path)
        if inner == "config/paper_results.csv":
            found["paper_results"].append(path)
            builder.graph.add({"@id": path, "description": "the paper's reported numbers"})
        elif inner.startswith("config/") and file.name not in configured:
            found["config"].append(path)
            builder.graph.add({"@id": path, "description": "workflow configuration file"})
    return found


@dataclass
class _Cells:
    run_records: list[str] = field(default_factory=list)
    histories: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # dataset.json record path -> id
    weights: dict[str, str] = field(default_factory=dict)  # weights record path -> id
    protocol_choices: list[str] = field(default_factory=list)
    trained: int = 0
    missing: int = 0


def _describe_cells(
    builder: _Builder, cell_ids: list[str], results_root: str, checkpoint: str
) -> _Cells:
    cells = _Cells()
    for cell_id in cell_ids:
        directory = f"{results_root}/{cell_id}"
        run_path = f"{directory}/run.json"
        if not (builder.root / run_path).is_file():
            cells.missing += 1
            continue
        run = read_json(builder.root / run_path)
        train = _describe_training(builder, cells, cell_id, run_path, run)
        cells.trained += 1
        eval_path = f"{directory}/eval-{checkpoint}.json"
        if (builder.root / eval_path).is_file():
            _describe_evaluation(builder, cells, cell_id, eval_path, train)
    return cells


def _inputs_by_role(record: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in record.get("inputs") or []:
        found.setdefault(item.get("role", "input"), []).append(item)
    return found


def _describe_training(
    builder: _Builder, cells: _Cells, cell_id: str, run_path: str, run: Mapping[str, Any]
) -> dict[str, str]:
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
    for item in inputs.get("weights", []):
        _describe_weights(builder, cells, item)
        file = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
        builder.example_of(file, "train", "backbone")
        objects.append(file)
    protocol = run.get("protocol") or {}
    for choice, value in sorted((protocol.get("choices") or {}).items()):
        pv = builder.property_value(
            f"#protocol/{protocol.get('name')}/{choice}",
            choice,
            value,
            description=f"resolved choice of protocol {protocol.get('name')!r} (SPEC §7)",
        )
        builder.example_of(pv, "train", "protocol_choice")
        builder.example_of(pv, "", "protocol_choice")
        if pv not in cells.protocol_choices:
            cells.protocol_choices.append(pv)
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
    cells.run_records.append(record)
    for item in run.get("outputs") or []:
        if item.get("role") == "history":
            history = builder.record_file(item["path"], item.get("sha256"), claimed_by=run_path)
            builder.graph.add({"@id": history, "description": f"per-epoch history of {cell_id}"})
            builder.example_of(history, "train", "history")
            builder.example_of(history, "", "run_records")
            builder.example_of(history, "aggregate", "histories")
            cells.histories.append(history)
            results.append(history)
    checkpoint_ids: dict[str, str] = {}
    for name, info in sorted((run.get("checkpoints") or {}).items()):
        file = builder.record_file(
            info["path"],
            info.get("sha256"),
            description=f"checkpoint {name!r} of cell {cell_id}: epoch {info.get('epoch')}, "
            f"selected by {info.get('selected_by')}; referenced, not copied",
        )
        builder.example_of(file, "train", "checkpoints")
        builder.example_of(file, "", "checkpoints")
        checkpoint_ids[name] = file
        cells.checkpoints.append(file)
        results.append(file)
    log = Path(run_path).with_name("train.log").as_posix()
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
    return {"run_record": record, **checkpoint_ids}


def _describe_evaluation(
    builder: _Builder, cells: _Cells, cell_id: str, eval_path: str, train: Mapping[str, str]
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
            f"{shown} (%), AutoAttack {autoattack.get('version') or 'not run'}. "
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


def _describe_dataset(builder: _Builder, cells: _Cells, item: Mapping[str, Any]) -> None:
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
    metadata_id = builder.record_file(path, item.get("sha256"))
    results = [metadata_id]
    for file, digest in sorted((metadata.get("files") or {}).items()):
        results.append(builder.record_file(f"{directory}/{file}", digest))
    for result in results:
        builder.graph.add(
            {"@id": result, "description": f"prepared dataset {name}: {Path(result).name}"}
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
        if archive not in builder.payload:
            builder.payload.append(archive)
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


def _describe_weights(builder: _Builder, cells: _Cells, item: Mapping[str, Any]) -> None:
    """The convert/pre-train step behind a backbone, from the JSON record beside it."""
    from autolora.weights import lookup

    path = item["path"]
    if path in cells.weights:
        return
    record_path = Path(path).with_suffix(".json").as_posix()
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
    record_id = builder.record_file(record_path, sha256_file(builder.root / record_path))
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
        if checkpoint not in builder.payload:
            builder.payload.append(checkpoint)
        builder.example_of(checkpoint, rule, "checkpoint")
        builder.example_of(checkpoint, "", "backbone_checkpoints")
        objects = [checkpoint]
        detail = f"{record.get('num_tensors')} tensors"
    builder.action(
        rule,
        label,
        name=f"{'pre-train' if pretrained else 'convert'} backbone {label}",
        description=f"{STEP_PURPOSE[rule]}: {detail}; no time or host is recorded for this step",
        objects=objects,
        results=[weights, record_id],
    )
    cells.weights[path] = weights


@dataclass
class _Aggregate:
    results: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    end: str | None = None


TOP_LEVEL = {
    "report.md": ("report", "the reproduction report (Markdown)"),
    "report.html": ("report", "the reproduction report (HTML)"),
    "comparison.csv": ("report", "paper vs. reproduction, number by number"),
    "comparison.md": ("report", "paper vs. reproduction, number by number"),
    "claims.csv": ("report", "the paper's qualitative claims, checked on the reproduction"),
    "missing.txt": ("report", "cells without an evaluation record and the command for each"),
}


def _describe_aggregate(builder: _Builder, source_files: Mapping[str, list[str]]) -> _Aggregate:
    from autolora.provenance import all_indices

    aggregate = _Aggregate()
    folder = builder.folder
    indices = all_indices(folder) if (folder / "provenance").is_dir() else []
    claimed: dict[str, tuple[str, str]] = {}
    for index in indices:
        index_path = f"provenance/{index['table']}.json"
        for output in index.get("outputs") or []:
            inside = builder.crate_path(output["path"])
            if inside:
                claimed[inside] = (output["sha256"], f"{folder / index_path}")
        if index.get("created") and (aggregate.end is None or index["created"] > aggregate.end):
            aggregate.end = index["created"]

    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        path = file.relative_to(folder).as_posix()
        top = path.split("/", 1)[0]
        if (
            path in (METADATA_FILE, RESOLVED_CONFIG, "logs/resolve_config.log", CRATE_LOG)
            or top in (SOURCE_DIR, "runs")
            or _hidden(Path(path))
            or path.endswith(LARGE_SUFFIXES + SKIPPED_SUFFIXES)
        ):
            continue
        expected, claimed_by = claimed.get(path, (None, None))
        entity = builder.payload_file(path, claimed=expected, claimed_by=claimed_by)
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
    if path.startswith("tables/"):
        return "tables", f"table {Path(path).stem} ({media_type(path)})"
    if path.startswith("figures/"):
        return "figures", f"figure {Path(path).stem}"
    if path.startswith("provenance/"):
        return (
            "provenance_index",
            f"provenance index of {Path(path).stem}: every number → the "
            "evaluation records of its seeds → checkpoints, run records and inputs with sha256",
        )
    if path.startswith("logs/"):
        return None, f"log of rule {Path(path).stem}"
    return None, "written by the workflow"


def _describe_numbers(builder: _Builder, index: Mapping[str, Any]) -> list[str]:
    table = index["table"]
    files = [
        f"tables/{table}{suffix}"
        for suffix in (".csv", ".md", ".tex", "_values.csv")
        if f"tables/{table}{suffix}" in builder.graph.entities
    ]
    index_file = f"provenance/{table}.json"
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
                "wasDerivedFrom": [_ref(e) for e in evaluations],
                "subjectOf": [_ref(f) for f in files + [index_file] if f in builder.graph.entities],
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
    return (labels[0] if len(labels) == 1 else None), f"the runs used {words}"


def _authors(builder: _Builder, authors: Sequence[str]) -> list[str]:
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
    builder: _Builder,
    source_files: Mapping[str, list[str]],
    cells: _Cells,
    aggregate: _Aggregate,
    authors: Sequence[str],
) -> dict[str, Any]:
    graph, config = builder.graph, builder.config
    protocol = config.get("protocol", "paper")
    people = _authors(builder, authors)
    version, code_sentence = _code_words(builder.code_versions)
    software = sorted({s for r in builder.code_versions for s in [r.get("version")] if s})

    # resolve_config and aggregate: their records are the files themselves
    resolved = builder.payload_file(
        RESOLVED_CONFIG,
        description="the configuration the tables were built from (all of Snakemake's config, "
        "as JSON)",
    )
    builder.example_of(resolved, "resolve_config", "resolved_config")
    builder.example_of(resolved, "aggregate", "resolved_config")
    resolve_results = [resolved]
    if (builder.folder / "logs/resolve_config.log").is_file():
        resolve_results.append(builder.payload_file("logs/resolve_config.log"))
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
    autolora_versions = [builder.software("autolora", v) for v in software]
    builder.action(
        "aggregate",
        protocol,
        name="aggregate the tables, figures and report",
        description=STEP_PURPOSE["aggregate"],
        objects=[resolved, *source_files["paper_results"], *cells.evaluations, *cells.histories],
        results=aggregate.results + aggregate.numbers,
        end=aggregate.end,
        software=autolora_versions,
    )
    for rule in ("synthesize_dataset", "prepare_dataset", "pretrain_backbone", "convert_weights"):
        if rule in builder.used_rules:
            for item in autolora_versions:
                graph.link(builder.used_rules[rule], "softwareRequirements", item)

    # the workflow, its steps and the connections between its parameters
    steps = [r for r in STEP_ORDER if r in builder.used_rules]
    for position, rule in enumerate(steps):
        graph.add(
            {
                "@id": f"{MAIN_WORKFLOW}#step/{rule}",
                "@type": "HowToStep",
                "name": rule,
                "position": str(position),
                "workExample": _ref(builder.used_rules[rule]),
            }
        )
        graph.add({"@id": builder.used_rules[rule], "version": version or ", ".join(software)})
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
                "sourceParameter": _ref(source),
                "targetParameter": _ref(target),
            }
        )
        connections.append(identifier)
        if target_rule:
            graph.link(f"{MAIN_WORKFLOW}#step/{target_rule}", "connection", identifier)
    workflow_inputs = [
        n
        for n, (kind, _) in WORKFLOW_PARAMETERS.items()
        if n
        in (
            "config",
            "paper_results",
            "dataset_sources",
            "generator_settings",
            "backbone_checkpoints",
            "pretrain_settings",
            "protocol_choice",
        )
    ]
    used = {p["@id"] for p in graph.entities.values() if p.get("@type") == "FormalParameter"}
    engine_versions = sorted(
        {i for i in graph.entities if i.startswith("https://pypi.org/project/snakemake/")}
    )
    engine = engine_versions[0] if engine_versions else builder.software("snakemake", None)
    main_file = builder.payload_file(
        MAIN_WORKFLOW,
        **{
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": "AutoLoRa reproduction workflow",
            "description": "Snakemake workflow reproducing AutoLoRa (ICLR 2024) and its baselines: "
            "the grid of training cells from the config, their evaluations, and every table, "
            f"figure and report built from them; {code_sentence}. The files under {SOURCE_DIR}/ "
            "are copies taken when the crate was written.",
            "programmingLanguage": _ref(SNAKEMAKE_LANGUAGE),
            "conformsTo": _ref("https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"),
            "version": version,
            "license": _ref(LICENSE_ID),
            "citation": _ref(PAPER_ID),
            "hasPart": [_ref(builder.used_rules[r]) for r in steps],
            "step": [_ref(f"{MAIN_WORKFLOW}#step/{r}") for r in steps],
            "connection": [_ref(c) for c in connections],
            "input": [
                _ref(f"{MAIN_WORKFLOW}#param/{n}")
                for n in workflow_inputs
                if f"{MAIN_WORKFLOW}#param/{n}" in used
            ],
            "output": [
                _ref(f"{MAIN_WORKFLOW}#param/{n}")
                for n in WORKFLOW_PARAMETERS
                if n not in workflow_inputs and f"{MAIN_WORKFLOW}#param/{n}" in used
            ],
            "softwareRequirements": [_ref(engine), *[_ref(a) for a in autolora_versions]],
        },
    )
    graph.add(
        {
            "@id": SNAKEMAKE_LANGUAGE,
            "@type": "ComputerLanguage",
            "name": "Snakemake",
            "identifier": _ref("https://snakemake.readthedocs.io"),
            "url": _ref("https://snakemake.readthedocs.io"),
        }
    )

    # the run of the whole workflow, and Snakemake orchestrating it
    times = sorted(builder.times)
    if not times:
        raise DataError(
            f"{builder.folder}: no run or evaluation record and no provenance index with a time "
            "stamp; run the workflow before writing the crate"
        )
    start, end = times[0], times[-1]
    run_objects = [
        *source_files["config"],
        *source_files["paper_results"],
        *[
            i
            for i, e in graph.entities.items()
            if _is_example_of(
                e,
                "",
                (
                    "dataset_sources",
                    "backbone_checkpoints",
                    "generator_settings",
                    "pretrain_settings",
                ),
            )
        ],
        *cells.protocol_choices,
    ]
    run_results = [
        *aggregate.results,
        *cells.evaluations,
        *cells.run_records,
        *cells.histories,
        *cells.checkpoints,
    ]
    run = graph.add(
        {
            "@id": "#run",
            "@type": "CreateAction",
            "name": f"run of the AutoLoRa reproduction workflow, protocol {protocol}",
            "description": (
                f"{cells.trained} cell(s) trained, {len(cells.evaluations)} evaluated, "
                f"{cells.missing} of the configured cells without a run record; {code_sentence}"
            ),
            "instrument": _ref(main_file),
            "object": [_ref(o) for o in dict.fromkeys(run_objects)],
            "result": [_ref(r) for r in dict.fromkeys(run_results)],
            "startTime": start,
            "endTime": end,
            "actionStatus": COMPLETED,
            "agent": [_ref(p) for p in people],
        }
    )
    organize = graph.add(
        {
            "@id": "#orchestration",
            "@type": "OrganizeAction",
            "name": "Snakemake orchestrating the run",
            "instrument": _ref(engine),
            "object": [
                _ref(i) for i, e in graph.entities.items() if e.get("@type") == "ControlAction"
            ],
            "result": _ref(run),
            "startTime": start,
            "endTime": end,
            "actionStatus": COMPLETED,
        }
    )

    # root, descriptor, profiles, licence, paper
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
            "author": [_ref(a) for a in paper_authors],
            "datePublished": "2024",
            "description": "The Twelfth International Conference on Learning Representations "
            "(ICLR 2024); on arXiv as 2310.01818 (its arXiv title is the alternateName)",
            "identifier": "arXiv:2310.01818",
            "url": _ref(PAPER_ID),
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
            "license": _ref(LICENSE_ID),
            "citation": _ref(PAPER_ID),
            "conformsTo": [_ref(p[0]) for p in PROFILES],
            "mainEntity": _ref(main_file),
            "hasPart": [_ref(p) for p in builder.payload],
            "mentions": [_ref(m) for m in [run, organize, *builder.mentions]],
            "author": [_ref(p) for p in people],
            "keywords": ["adversarial robustness", "robust fine-tuning", "LoRa", "reproduction"],
        }
    )
    graph.add(
        {
            "@id": METADATA_FILE,
            "@type": "CreativeWork",
            "about": _ref("./"),
            "conformsTo": [_ref(RO_CRATE), _ref(PROFILES[3][0])],
        }
    )
    return graph.jsonld(first=[METADATA_FILE, "./"])


def _is_example_of(entity: Mapping[str, Any], rule: str, names: Sequence[str]) -> bool:
    wanted = {f"{MAIN_WORKFLOW}#param/{rule + '/' if rule else ''}{n}" for n in names}
    return any(ref.get("@id") in wanted for ref in entity.get("exampleOfWork") or [])


def write_crate(folder: str | Path, crate: Mapping[str, Any]) -> Path:
    """Write ``ro-crate-metadata.json`` atomically; same content, same bytes."""
    path = Path(folder) / METADATA_FILE
    with atomic_write(path) as handle:
        json.dump(crate, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path


# --------------------------------------------------------------------------------------------
# Reading a crate back: verification and the deposit archive


@dataclass
class CrateAudit:
    """What ``verify_crate`` found: problems name the file and what differs."""

    problems: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # referenced files not present here

    @property
    def ok(self) -> bool:
        return not self.problems


def load_crate(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ConfigError(f"{path} missing: write the crate first with `autolora crate {folder}`")
    crate = read_json(path)
    if not isinstance(crate, dict) or not isinstance(crate.get("@graph"), list):
        raise DataError(
            f"{path}: not RO-Crate JSON-LD (no @graph); rewrite it with `autolora crate`"
        )
    return crate


def described_files(crate: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every File entity of the crate with a sha256, in the crate or referenced by localPath."""
    files = []
    for entity in crate["@graph"]:
        types = entity.get("@type")
        types = types if isinstance(types, list) else [types]
        if "File" in types and entity.get("sha256"):
            identifier = entity["@id"]
            if identifier.startswith("#"):
                if entity.get("localPath"):
                    files.append(
                        {
                            "path": entity["localPath"],
                            "sha256": entity["sha256"],
                            "in_crate": False,
                            "id": identifier,
                        }
                    )
            elif not re.match(r"^[a-z][a-z0-9+.-]*:", identifier):
                files.append(
                    {
                        "path": identifier,
                        "sha256": entity["sha256"],
                        "in_crate": True,
                        "id": identifier,
                    }
                )
    return files


def verify_crate(folder: str | Path) -> CrateAudit:
    """Re-hash every file the crate describes. A file in the crate must be there and match; a
    referenced file (checkpoint, prepared data) must match where it is present."""
    folder = Path(folder)
    audit = CrateAudit()
    for item in described_files(load_crate(folder)):
        file = folder / item["path"]
        if not file.is_file():
            if item["in_crate"]:
                audit.problems.append(
                    f"{file}: missing (the crate describes it, sha256 {item['sha256'][:12]})"
                )
            else:
                audit.absent.append(str(file))
            continue
        digest = sha256_file(file)
        if digest != item["sha256"]:
            audit.problems.append(
                f"{file}: sha256 mismatch (the crate records {item['sha256'][:12]}, found "
                f"{digest[:12]}) — the file changed after the crate was written"
            )
        else:
            audit.verified.append(str(file))
    return audit


def write_archive(
    folder: str | Path, out: str | Path, *, with_checkpoints: bool = False
) -> list[str]:
    """One zip for deposit: the metadata and every file in the crate, and with
    ``with_checkpoints`` the referenced checkpoints that lie inside the folder, each verified
    against the crate's sha256 as it is read. Entries are sorted and time-stamped alike, so the
    same crate gives the same archive. Returns the archived paths."""
    folder, out = Path(folder), Path(out)
    crate = load_crate(folder)
    chosen = [METADATA_FILE]
    digests = {}
    for item in described_files(crate):
        inside = not Path(item["path"]).is_absolute() and not Path(
            item["path"]
        ).as_posix().startswith("../")
        if item["in_crate"] or (
            with_checkpoints and inside and item["path"].endswith(LARGE_SUFFIXES)
        ):
            chosen.append(Path(item["path"]).as_posix())
            digests[Path(item["path"]).as_posix()] = item["sha256"]
    chosen = [chosen[0], *sorted(set(chosen[1:]))]
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in chosen:
            file = folder / name
            if not file.is_file():
                raise DataError(
                    f"{file}: missing, though the crate describes it; rerun the workflow and "
                    f"`autolora crate {folder}`"
                )
            info = zipfile.ZipInfo(name, date_time=ARCHIVE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            digest = hashlib.sha256()
            with open(file, "rb") as source, archive.open(info, "w") as target:
                for chunk in iter(lambda: source.read(HASH_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    target.write(chunk)
            if name in digests and digest.hexdigest() != digests[name]:
                raise ChecksumError(
                    f"{file}: sha256 {digest.hexdigest()[:12]} differs from the crate's "
                    f"{digests[name][:12]}; the file changed after the crate was written: rerun "
                    f"`autolora crate {folder}`"
                )
    return chosen
