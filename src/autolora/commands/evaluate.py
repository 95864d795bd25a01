"""`autolora evaluate`: SA, PGD-10 and AutoAttack of a trained cell's checkpoint."""

from __future__ import annotations

import argparse

from autolora.autoattack_variants import REDUCED, STANDARD, VARIANTS
from autolora.planning import layout

NAME = "evaluate"
HELP = "evaluate a run's checkpoint (SA, PGD-10, AutoAttack) and write an evaluation record"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", dest="run_dir", required=True, help="the cell directory (holds run.json)"
    )
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument(
        "--checkpoint",
        required=True,
        choices=(*layout.CHECKPOINT_NAMES, layout.SELECTED_CHECKPOINT),
        help="which weights; 'selected' = the selection of the cell's spec, else the protocol's "
        "(a workflow's training.selection is not part of the run: name the checkpoint)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="evaluate a seeded, class-stratified subset of N test images (recorded)",
    )
    parser.add_argument(
        "--no-autoattack", action="store_true", help="skip AutoAttack (SA and PGD-10 only)"
    )
    parser.add_argument(
        "--autoattack-version",
        default=STANDARD,
        choices=tuple(VARIANTS),
        help=f"AutoAttack variant: {STANDARD} (the paper's, default) or {REDUCED} (reduced: its "
        "first two attacks only, for quick runs)",
    )
    parser.add_argument(
        "--autoattack-batch-size",
        type=int,
        default=None,
        help="AutoAttack's batch size (default: the cell's autoattack.batch_size)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: config)")
    parser.add_argument(
        "--runtime",
        default=None,
        help="runtime settings (device, num_workers, ...) as JSON text or a .json/.yaml file, "
        "replacing those the run was trained with",
    )
    parser.add_argument("--out", required=True, help="evaluation record (JSON) to write")


def run(args: argparse.Namespace) -> int:
    from autolora.evaluate import evaluate_run
    from autolora.train import parse_runtime

    record = evaluate_run(
        args.run_dir,
        args.data,
        checkpoint=args.checkpoint,
        out=args.out,
        n=args.n,
        autoattack=False if args.no_autoattack else None,
        autoattack_version=args.autoattack_version,
        autoattack_batch_size=args.autoattack_batch_size,
        device=args.device,
        runtime=None if args.runtime is None else parse_runtime(args.runtime),
    )
    metrics = record["metrics"]
    aa = "-" if metrics["AA"] is None else f"{metrics['AA']:.2f} ({args.autoattack_version})"
    print(
        f"{record['cell_id']} {record['checkpoint']['name']}: SA {metrics['SA']:.2f} "
        f"PGD-10 {metrics['PGD10']:.2f} AA {aa} (n={record['n']})"
    )
    return 0
