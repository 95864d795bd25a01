"""The workflow's definition in the crate: copying it into ``source/`` (``copy_workflow_source``)
and describing the copy (``describe_source``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora.errors import ConfigError
from autolora.files import make_temporary_dir
from autolora.planning import layout
from autolora.reporting.crate.graph import CrateBuilder
from autolora.reporting.crate.vocabulary import MAIN_WORKFLOW, WORKFLOW_SOURCES, is_hidden


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
                if (
                    file.is_file()
                    and not is_hidden(relative)
                    and "__pycache__" not in relative.parts
                ):
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
    final = folder / layout.CRATE_SOURCE_DIR
    staging = make_temporary_dir(final)
    try:
        for name, path in sorted(copies.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe_source(
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
