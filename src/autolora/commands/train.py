"""`autolora train`: train one cell (resumable; see autolora.train for signals and exit codes)."""

from __future__ import annotations

import argparse
import logging
import sys

NAME = "train"
HELP = (
    "train one cell: checkpoints, history.csv and run.json in --out (resumes its state/, "
    "restores a completed run's outputs from completed/)"
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="cell spec: JSON text or a .json/.yaml file")
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument(
        "--weights", required=True, help="backbone weights (safetensors, torchvision key names)"
    )
    parser.add_argument("--out", required=True, help="the cell's output directory")
    parser.add_argument(
        "--runtime",
        default=None,
        help="runtime settings (device, num_workers, deterministic, fast paths) as JSON text or "
        "a .json/.yaml file, merged into the spec's; not part of the cell's identity",
    )
    parser.add_argument(
        "--lock",
        default="config/weights.lock",
        help="pinned checksums of the downloaded checkpoints the --weights were converted from",
    )


def run(args: argparse.Namespace) -> int:
    from autolora import train

    spec, spec_file = train.parse_spec(args.spec)
    runtime = None if args.runtime is None else train.parse_runtime(args.runtime)
    try:
        result = train.train_cell(
            spec,
            data_dir=args.data,
            weights=args.weights,
            out_dir=args.out,
            runtime=runtime,
            spec_file=spec_file,
            weights_lock=args.lock,
        )
    except train.TrainingInterrupted as stop:
        print(f"autolora train: {stop}", file=sys.stderr)
        return train.EXIT_INTERRUPTED
    except train.NonFiniteLoss as error:
        print(f"autolora train: error: {error}", file=sys.stderr)
        return train.EXIT_NON_FINITE
    if result.status == "already_complete":
        print(f"{args.out}: already complete ({result.record.cell_id})")
    elif result.status == "restored":
        print(
            f"{args.out}: training had completed ({result.record.cell_id}, "
            f"{result.record.epochs_run} epochs); outputs restored from its completed/"
        )
    else:
        record = result.record
        print(
            f"{args.out}: trained {record.cell_id} for {record.epochs_run} epochs "
            f"({record.stop_reason})"
        )
    return 0
