"""`autolora audit`: trace one table number to the files behind it and re-verify every hash."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "audit"
HELP = "trace a table number (or --all) to its records, checkpoints and inputs and re-verify hashes"
RESULTS = "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        help="aggregate output folder or its provenance/ folder (default: the only "
        f"{RESULTS}/<protocol>/provenance folder)",
    )
    parser.add_argument(
        "--root",
        default=".",
        help="folder the recorded paths are relative to (default: the current one)",
    )
    parser.add_argument("--all", action="store_true", help="audit every number of every table")
    parser.add_argument(
        "--crate",
        metavar="FOLDER",
        help="re-verify the sha256 of every file a results folder's RO-Crate describes",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the verdict and problems")
    parser.add_argument("table", nargs="?", help="table name, e.g. table1")
    parser.add_argument("row", nargs="?", help="row key, e.g. cifar10/autolora")
    parser.add_argument("column", nargs="?", help="column key, e.g. PGD10")


def default_index(root: str) -> Path:
    """The only provenance folder under ``root``'s results (``results/<protocol>/provenance``, or
    deeper for a config whose ``results`` is a subfolder, as the demo's ``results/demo``)."""
    from autolora.errors import ConfigError

    found = sorted(p for p in Path(root).glob(f"{RESULTS}/**/provenance") if p.is_dir())
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found) or "none"
        raise ConfigError(
            f"pass --index: found {len(found)} provenance folders ({listed}) under "
            f"{Path(root) / RESULTS}; `autolora aggregate` writes one"
        )
    return found[0]


def count_parameters(arch: str, rank: int, lora_blocks: str) -> dict:
    """Table 3's counts on the built model (imports torch, on the first ratio audited only)."""
    from autolora.models import parameter_counts

    return parameter_counts(arch, rank, lora_blocks)


def run(args: argparse.Namespace) -> int:
    from autolora.errors import ConfigError
    from autolora.provenance import audit_all, audit_one, raise_if_failed

    if args.crate:
        return audit_crate(args)
    given = [a for a in (args.table, args.row, args.column) if a is not None]
    if args.all == bool(given) or (given and len(given) != 3):
        raise ConfigError(
            "give either TABLE ROW COLUMN (e.g. `autolora audit table1 "
            "cifar10/autolora PGD10`) or --all"
        )
    index = args.index or default_index(args.root)
    if args.all:
        audit = audit_all(index, args.root, count_parameters)
    else:
        audit = audit_one(index, args.table, args.row, args.column, args.root, count_parameters)
    lines = [f"PROBLEM: {p}" for p in audit.problems] if args.quiet else audit.lines
    print("\n".join(lines))
    raise_if_failed(audit)
    print(f"audit passed: {audit.verified} file hash(es) re-verified, the number(s) recomputed")
    return 0


def audit_crate(args: argparse.Namespace) -> int:
    """`--crate FOLDER`: every file the crate describes, against the sha256 it records."""
    from autolora.crate import verify_crate
    from autolora.errors import ChecksumError, ConfigError

    if args.all or args.table:
        raise ConfigError("--crate checks the crate's files; give it alone (no --all, no TABLE)")
    audit = verify_crate(args.crate)
    if not args.quiet:
        print("\n".join(f"verified {path}" for path in audit.verified))
    if audit.absent:
        print(
            f"{len(audit.absent)} referenced file(s) not present here (checkpoints, prepared "
            "data, weights: referenced by sha256, not part of the crate):"
        )
        print("\n".join(f"  {path}" for path in audit.absent))
    if not audit.ok:
        print("\n".join(f"PROBLEM: {p}" for p in audit.problems))
        shown = "; ".join(audit.problems[:5])
        more = f" (+{len(audit.problems) - 5} more)" if len(audit.problems) > 5 else ""
        raise ChecksumError(
            f"crate audit failed, {len(audit.problems)} problem(s): {shown}{more}. Rerun the "
            f"jobs that produce these files (snakemake), then `autolora crate {args.crate}`."
        )
    print(
        f"crate audit passed: {len(audit.verified)} file hash(es) re-verified, "
        f"{len(audit.absent)} referenced file(s) not present"
    )
    return 0
