"""`autolora data`: download, verify and prepare the real datasets, or synthesize one."""

from __future__ import annotations

import argparse

from autolora.planning.vocabulary import DATASETS

NAME = "data"
HELP = "download / prepare a real dataset (SPEC 2) or synthesize one, in the prepared format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    download = actions.add_parser("download", help="download and verify a dataset's archives")
    download.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    download.add_argument("--dest", required=True, help="folder for the archive files")
    download.add_argument(
        "--staging",
        default=None,
        help="folder for partial and finished downloads until every archive is verified, then "
        "moved to --dest (keeps progress when --dest is deleted after a failure)",
    )
    prepare = actions.add_parser(
        "prepare", help="verify, extract and prepare a dataset with its splits"
    )
    prepare.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    prepare.add_argument("--source", required=True, help="folder holding the downloaded archives")
    prepare.add_argument("--out", required=True, help="prepared dataset folder (must not exist)")
    for action in (download, prepare):
        action.add_argument(
            "--lock",
            default="config/weights.lock",
            help="lock file of pinned hashes: an archive with no published checksum (Stanford "
            "Dogs) is checked against its line, or pinned there on first use",
        )
    synth = actions.add_parser("synthesize", help="write a synthetic dataset")
    synth.add_argument("--out", required=True, help="prepared dataset folder (must not exist)")
    synth.add_argument("--name", default=None, help="dataset name (default: the folder name)")
    synth.add_argument("--num-classes", type=int, required=True)
    synth.add_argument("--train", type=int, required=True, help="number of training images")
    synth.add_argument("--test", type=int, required=True, help="number of test images")
    synth.add_argument("--image-size", type=int, default=32)
    synth.add_argument("--seed", type=int, required=True)
    synth.add_argument("--augmentation", choices=("pad_crop", "resized_crop"), default="pad_crop")


def run(args: argparse.Namespace) -> int:
    return {"download": run_download, "prepare": run_prepare, "synthesize": run_synthesize}[
        args.action
    ](args)


def run_download(args: argparse.Namespace) -> int:
    from autolora.data.sources import download_dataset

    for path in download_dataset(
        args.dataset, args.dest, staging_dir=args.staging, lock_path=args.lock
    ):
        print(f"{path}: verified")
    return 0


def count_table(info_by_scheme: dict[str, dict]) -> list[str]:
    """One line per scheme: our counts next to the paper's (train / val / test)."""
    lines = []
    for scheme, info in info_by_scheme.items():
        ours, paper = info["counts"], info.get("paper_counts") or {}
        parts = [
            f"{split} {ours[split]:,} (paper {paper[split]:,})"
            if split in paper
            else f"{split} {ours[split]:,}"
            for split in ("train", "val", "test")
        ]
        lines.append(f"  {scheme:<6} {' / '.join(parts)}; {info['num_outputs']} outputs")
    return lines


def run_prepare(args: argparse.Namespace) -> int:
    from autolora.data.prepared import PreparedDataset
    from autolora.data.sources import prepare_dataset

    out = prepare_dataset(args.dataset, args.source, args.out, lock_path=args.lock)
    dataset = PreparedDataset.open(out)
    print(f"{out}: {len(dataset):,} images, {dataset.num_classes} classes")
    for line in count_table({scheme: dataset.split_info(scheme) for scheme in dataset.schemes}):
        print(line)
    return 0


def run_synthesize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autolora.data.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out,
        name=args.name or Path(args.out).name,
        num_classes=args.num_classes,
        train_size=args.train,
        test_size=args.test,
        image_size=args.image_size,
        seed=args.seed,
        augmentation=args.augmentation,
    )
    print(f"{out}: synthetic dataset, {args.train} train / {args.test} test images")
    return 0
