"""`autolora weights`: download, verify and convert the pre-trained backbones (SPEC 1)."""

from __future__ import annotations

import argparse

from autolora.planning.vocabulary import PUBLISHED_ARCHS

NAME = "weights"
HELP = "download / verify / convert pre-trained backbone checkpoints (robustness -> safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    download = actions.add_parser("download", help="download a checkpoint and verify its sha256")
    verify = actions.add_parser("verify", help="check a checkpoint against its pinned sha256")
    for sub in (download, verify):
        sub.add_argument("--arch", required=True, choices=PUBLISHED_ARCHS)
        sub.add_argument("--eps", required=True, type=float, help="pre-training epsilon (/255)")
        sub.add_argument("--lock", default="config/weights.lock", help="lock file of pinned hashes")
    download.add_argument("--dest", required=True, help="where to write the .ckpt file")
    verify.add_argument("--file", required=True, help="the downloaded .ckpt file")
    convert = actions.add_parser(
        "convert", help="robustness checkpoint -> safetensors (torchvision keys)"
    )
    convert.add_argument("--src", required=True, help="the robustness-library .ckpt file")
    convert.add_argument(
        "--out", required=True, help="output .safetensors (a .json record goes beside it)"
    )
    convert.add_argument(
        "--arch",
        help=f"{' | '.join(PUBLISHED_ARCHS)} (recorded; default: from a catalogue file name)",
    )
    convert.add_argument(
        "--eps",
        type=float,
        help="pre-training epsilon /255 (recorded; default: from the file name)",
    )
    convert.add_argument(
        "--sha256",
        default=None,
        help="expected sha256 of --src (checked in addition to the published or pinned one)",
    )
    convert.add_argument(
        "--lock",
        default="config/weights.lock",
        help="lock file of pinned hashes; a catalogue checkpoint with no published or pinned "
        "hash is pinned here on its first conversion (trust on first use)",
    )


def run(args: argparse.Namespace) -> int:
    from autolora import weights

    if args.action == "download":
        path = weights.download_weights(args.arch, args.eps, args.dest, lock_path=args.lock)
        print(f"{path}: verified")
    elif args.action == "verify":
        sha = weights.verify_weights(args.file, weights.lookup(args.arch, args.eps), args.lock)
        print(f"{args.file}: sha256 {sha} verified")
    else:
        if args.arch is None or args.eps is None:
            entry = weights.entry_for_file(args.src)
            args.arch = entry.arch if args.arch is None else args.arch
            args.eps = entry.eps_pt_255 if args.eps is None else args.eps
        record = weights.convert_checkpoint(
            args.src,
            args.out,
            arch=args.arch,
            eps_pt_255=args.eps,
            expected_sha256=args.sha256,
            lock_path=args.lock,
        )
        print(f"{args.out}: {record['num_tensors']} tensors, sha256 {record['sha256']}")
    return 0
