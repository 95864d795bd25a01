"""`autolora crate`: describe a results folder as a Workflow Run RO-Crate (and zip it for deposit).

Writes ``<folder>/ro-crate-metadata.json`` and ``<folder>/source/`` (a copy of the workflow
definition); with ``--zip``, one archive for Zenodo or WorkflowHub. Layout and graph:
``autolora.reporting.crate`` and docs/internals.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "crate"
HELP = "write the RO-Crate (Workflow Run Crate) of a results folder; --zip: one deposit archive"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="results folder of one protocol, e.g. results/paper")
    parser.add_argument(
        "--root",
        default=".",
        help="folder the records' paths are relative to: where the workflow ran (default: .)",
    )
    parser.add_argument(
        "--workflow-dir",
        help="folder holding the workflow's Snakefile (default: the current folder, else this "
        "package's checkout)",
    )
    parser.add_argument(
        "--configfile",
        action="append",
        default=[],
        help="a config file the workflow ran with (repeatable); copied into the crate",
    )
    parser.add_argument(
        "--paper",
        help="the paper's numbers the tables were compared with (default: "
        "<workflow-dir>/config/paper_results.csv)",
    )
    parser.add_argument(
        "--author",
        action="append",
        default=[],
        help="who ran the reproduction: 'Name' or 'Name <https://orcid.org/...>' (repeatable)",
    )
    parser.add_argument(
        "--zip",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write one deposit archive (default: <folder>-ro-crate.zip beside the folder)",
    )
    parser.add_argument(
        "--with-checkpoints",
        action="store_true",
        help="put the checkpoints into the archive too (they are referenced by sha256 otherwise)",
    )


def workflow_folder(given: str | None) -> Path:
    from autolora.demo import repository_root
    from autolora.errors import ConfigError

    if given:
        return Path(given)
    try:
        return repository_root()
    except ConfigError:
        raise ConfigError(
            "no Snakefile in the current folder or the package's checkout: pass --workflow-dir"
        ) from None


def run(args: argparse.Namespace) -> int:
    from autolora.errors import ConfigError
    from autolora.reporting.crate import (
        copy_workflow_source,
        describe_results,
        write_archive,
        write_crate,
    )

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such results folder (e.g. results/paper)")
    if args.with_checkpoints and args.zip is None:
        raise ConfigError("--with-checkpoints only applies to the archive: add --zip")
    workflow_dir = workflow_folder(args.workflow_dir)
    paper = args.paper or workflow_dir / "config" / "paper_results.csv"
    copy_workflow_source(
        folder,
        workflow_dir,
        configfiles=args.configfile,
        paper_results=paper if Path(paper).is_file() else None,
    )
    crate = describe_results(folder, root=args.root, authors=args.author)
    path = write_crate(folder, crate)
    print(f"crate: {path} ({len(crate['@graph'])} entities)")
    if args.zip is not None:
        out = Path(args.zip) if args.zip else folder.parent / f"{folder.name}-ro-crate.zip"
        names = write_archive(folder, out, with_checkpoints=args.with_checkpoints)
        print(f"archive: {out} ({len(names)} files)")
    return 0
