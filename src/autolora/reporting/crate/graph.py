"""The crate's entity graph and the builder that adds files, tools, parameters, software and
actions to it (merging what several records say about the same entity)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.errors import ChecksumError, DataError
from autolora.files import sha256_file
from autolora.planning import layout
from autolora.reporting.crate.vocabulary import (
    COMPLETED,
    CONTEXT,
    LARGE_SUFFIXES,
    MAIN_WORKFLOW,
    PARAMETERS,
    STEP_PURPOSE,
    WORKFLOW_PARAMETERS,
    iso_time,
    media_type,
)


@dataclass
class EntityGraph:
    """Entities by ``@id``; adding an entity twice merges it: list values are unioned in order, a
    scalar keeps its first value, and two different sha256 for one file are an error."""

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
        self.add({"@id": identifier, key: [ref(t) for t in targets]})

    def jsonld(self, first: Sequence[str]) -> dict[str, Any]:
        order = list(first) + sorted(set(self.entities) - set(first))
        return {"@context": CONTEXT, "@graph": [_compact(self.entities[i]) for i in order]}


def ref(identifier: str) -> dict[str, str]:
    return {"@id": identifier}


def _compact(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Single-element lists as single values (RO-Crate 1.1's compacted JSON-LD)."""
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in entity.items()}


@dataclass
class CrateBuilder:
    folder: Path
    root: Path
    config: dict[str, Any]
    graph: EntityGraph = field(default_factory=EntityGraph)
    payload: dict[str, None] = field(default_factory=dict)  # root hasPart, in order
    mentions: list[str] = field(default_factory=list)  # step actions
    code_versions: list[dict[str, Any]] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    used_rules: dict[str, str] = field(default_factory=dict)  # rule -> tool id
    rule_files: dict[str, str] = field(default_factory=dict)  # rule -> crate path of its file
    examples_of: dict[str, dict[str, None]] = field(default_factory=dict)  # parameter -> ids
    digests: dict[str, str] = field(default_factory=dict)  # crate path -> sha256
    # crate path -> (sha256, the index claiming it): files the provenance indices hash
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)

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
        """A file inside the crate: hashed now; a hash claimed by a record or an index must
        agree."""
        if claimed is None and crate_path in self.claims:
            claimed, claimed_by = self.claims[crate_path]
        file = self.folder / crate_path
        if not file.is_file():
            raise DataError(
                f"{file}: missing, though {claimed_by or 'the workflow'} names it; rerun the "
                "workflow (snakemake) before writing the crate"
            )
        if crate_path not in self.digests:
            self.digests[crate_path] = sha256_file(file)
        digest = self.digests[crate_path]
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
        self.payload[crate_path] = None
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
        self.payload[identifier] = None
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
        inputs, outputs = rule_parameters(rule)
        self.graph.add(
            {
                "@id": identifier,
                "@type": "SoftwareApplication",
                "name": f"rule {rule}",
                "description": STEP_PURPOSE.get(rule, rule),
                "url": ref(file),
                "input": [ref(self.parameter(rule, p)) for p in inputs],
                "output": [ref(self.parameter(rule, p)) for p in outputs],
            }
        )
        self.used_rules[rule] = identifier
        return identifier

    def parameter(self, rule: str, name: str) -> str:
        kind, description = PARAMETERS[(rule, name)] if rule else WORKFLOW_PARAMETERS[name]
        identifier = parameter_id(rule, name)
        self.graph.add(
            {
                "@id": identifier,
                "@type": "FormalParameter",
                "additionalType": kind,
                "name": name,
                "description": description,
                "conformsTo": ref("https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"),
            }
        )
        return identifier

    def example_of(self, entity: str, rule: str, name: str) -> None:
        """``entity`` is a value of parameter ``name`` of ``rule`` ("": the workflow)."""
        parameter = self.parameter(rule, name)
        self.graph.link(entity, "exampleOfWork", parameter)
        self.graph.link(parameter, "workExample", entity)
        self.examples_of.setdefault(parameter, {})[entity] = None

    def has_parameter(self, rule: str, name: str) -> bool:
        return parameter_id(rule, name) in self.graph.entities

    def examples(self, rule: str, names: Iterable[str]) -> list[str]:
        """The values of parameters ``names`` of ``rule``, in the order they were described."""
        found: dict[str, None] = {}
        for name in names:
            found.update(self.examples_of.get(parameter_id(rule, name), {}))
        return list(found)

    def software(self, name: str, version: str | None) -> str:
        if name == "python":
            implementation, _, number = (version or "Python unknown").partition(" ")
            identifier = f"#software/python/{implementation}-{number}"
            entity = {"name": implementation, "url": ref("https://www.python.org/")}
            version = number
        elif name == "autolora":
            identifier = f"#software/autolora/{version}"
            entity = {
                "name": "autolora",
                "description": "this workflow's Python package (models, methods, attacks, "
                "training, evaluation, statistics, provenance)",
                "url": ref(MAIN_WORKFLOW),
            }
        else:
            identifier = f"https://pypi.org/project/{name}/{version}/"
            entity = {"name": name, "url": ref(f"https://pypi.org/project/{name}/")}
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
        if not start and not end:
            description += "; no time or host is recorded for this step"
        places = [p for p in (self.place(h) for h in hosts) if p]
        job_ids = [j for j in (self.slurm_job(job) for job in jobs) if j]
        self.graph.add(
            {
                "@id": identifier,
                "@type": "CreateAction",
                "name": name,
                "description": description,
                "instrument": ref(tool),
                "object": [ref(o) for o in dict.fromkeys(objects)],
                "result": [ref(r) for r in dict.fromkeys(results)],
                "startTime": iso_time(start),
                "endTime": iso_time(end),
                "actionStatus": COMPLETED,
                "location": [ref(p) for p in dict.fromkeys(places)],
                "identifier": [ref(j) for j in dict.fromkeys(job_ids)],
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
                "instrument": ref(f"{MAIN_WORKFLOW}#step/{rule}"),
                "object": ref(identifier),
                "actionStatus": COMPLETED,
            }
        )
        return identifier


def parameter_id(rule: str, name: str) -> str:
    return f"{MAIN_WORKFLOW}#param/{rule + '/' if rule else ''}{name}"


def rule_parameters(rule: str) -> tuple[list[str], list[str]]:
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
                found.setdefault(
                    name, f"{layout.CRATE_SOURCE_DIR}/{file.relative_to(source).as_posix()}"
                )
    return found
