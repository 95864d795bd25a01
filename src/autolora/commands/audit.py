"""`autolora audit`: trace a table number to the files behind it and re-verify every hash; audit a
whole results folder (and print or check its seal); or re-evaluate the checkpoints behind a
number."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "audit"
HELP = (
    "trace a table number (or --all) to its records, checkpoints and inputs and re-verify hashes; "
    "--seal / --expect-seal a results folder; --recompute a number from its checkpoints"
)
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
    parser.add_argument(
        "--all", action="store_true", help="audit every file and every number of every table"
    )
    parser.add_argument(
        "--seal",
        action="store_true",
        help="with --all: print the results folder's seal (one digest of its provenance index) "
        "after a passing audit, to publish or commit",
    )
    parser.add_argument(
        "--expect-seal",
        metavar="DIGEST",
        help="with --all: fail unless the results folder's seal is DIGEST (sha256:<hex>, or a "
        "file holding it)",
    )
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="re-evaluate the checkpoints behind TABLE ROW COLUMN and compare with the recorded "
        "values (detects an edited and re-aggregated evaluation record)",
    )
    parser.add_argument("--device", default=None, help="with --recompute: cpu, cuda, ...")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="with --recompute: allowed absolute difference (percentage points; default 0, "
        "exact, as deterministic CPU evaluations reproduce)",
    )
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


def expected_seal(text: str) -> str:
    """A seal given as ``sha256:<hex>`` (or bare hex), or the path of a file holding one."""
    from autolora.errors import ConfigError
    from autolora.reporting.provenance import SEAL_PREFIX

    path = Path(text)
    if path.is_file():
        text = path.read_text().split()[0] if path.read_text().split() else ""
    digest = text.strip().lower().removeprefix(SEAL_PREFIX)
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"--expect-seal {text!r}: expected sha256:<64 hex digits> or a file")
    return SEAL_PREFIX + digest


def run(args: argparse.Namespace) -> int:
    from autolora.errors import ChecksumError, ConfigError
    from autolora.reporting.provenance import audit_all, audit_one, raise_if_failed, seal_of

    if args.crate:
        return audit_crate(args)
    given = [a for a in (args.table, args.row, args.column) if a is not None]
    if args.all == bool(given) or (given and len(given) != 3):
        raise ConfigError(
            "give either TABLE ROW COLUMN (e.g. `autolora audit table1 "
            "cifar10/autolora PGD10`) or --all"
        )
    if (args.seal or args.expect_seal) and not args.all:
        raise ConfigError("--seal and --expect-seal seal a whole results folder: add --all")
    if args.recompute and args.all:
        raise ConfigError("--recompute re-evaluates one number: give TABLE ROW COLUMN, not --all")
    index = args.index or default_index(args.root)
    if args.recompute:
        from autolora.recompute import raise_if_differs, recompute_number

        result = recompute_number(
            index,
            args.table,
            args.row,
            args.column,
            root=args.root,
            device=args.device,
            tolerance=args.tolerance,
        )
        print("\n".join(result.lines))
        raise_if_differs(result)
        print("recompute passed: the checkpoints reproduce the recorded number")
        return 0
    wanted = expected_seal(args.expect_seal) if args.expect_seal else None
    if args.all:
        audit = audit_all(index, args.root, count_parameters)
    else:
        audit = audit_one(index, args.table, args.row, args.column, args.root, count_parameters)
    lines = [f"PROBLEM: {p}" for p in audit.problems] if args.quiet else audit.lines
    print("\n".join(lines))
    raise_if_failed(audit)
    print(
        f"audit passed: {audit.rehashed} file(s) re-hashed, {audit.verified} hash check(s) "
        "passed, the number(s) recomputed from the per-seed values"
    )
    if args.seal or wanted:
        seal = seal_of(index)
        if wanted and seal != wanted:
            raise ChecksumError(
                f"the results folder's seal is {seal}, not the expected {wanted}: its "
                "provenance index changed since that seal was taken (re-aggregated or edited)"
            )
        print(f"seal: {seal}" + (" (as expected)" if wanted else ""))
    return 0


def audit_crate(args: argparse.Namespace) -> int:
    """`--crate FOLDER`: every file the crate describes, against the sha256 it records."""
    from autolora.errors import ChecksumError, ConfigError
    from autolora.reporting.crate import verify_crate

    if args.all or args.table or args.seal or args.expect_seal or args.recompute:
        raise ConfigError(
            "--crate checks the crate's files; give it alone (no --all, TABLE, --seal or "
            "--recompute)"
        )
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
