"""`autolora pretrain`: adversarially pre-train the tiny backbone on a synthetic source task."""

from __future__ import annotations

import argparse

NAME = "pretrain"
HELP = "adversarially pre-train the tiny demo backbone (safetensors + JSON record, like convert)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autolora.pretrain import PretrainSettings

    defaults = PretrainSettings()
    parser.add_argument("--arch", default="tiny", help="tiny (the only backbone pre-trained here)")
    parser.add_argument(
        "--eps", type=float, required=True, help="PGD epsilon in /255; 0 = standard"
    )
    parser.add_argument(
        "--out", required=True, help="output .safetensors (a .json record goes beside it)"
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--classes", type=int, default=defaults.num_classes, help="source classes")
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=defaults.test_size)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="source-task and init seed")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--attack-steps", type=int, default=defaults.attack_steps)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import torch

    from autolora.pretrain import PretrainSettings, pretrain_to_file

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = PretrainSettings(
        arch=args.arch,
        eps_255=args.eps,
        epochs=args.epochs,
        num_classes=args.classes,
        train_size=args.train_size,
        test_size=args.test_size,
        image_size=args.image_size,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        attack_steps=args.attack_steps,
    )
    record = pretrain_to_file(settings, args.out)
    metrics = record["metrics"]
    print(
        f"{args.out}: source task clean accuracy {metrics['clean_accuracy']:.1f}%, "
        f"PGD-{settings.eval_steps} robust accuracy {metrics['robust_accuracy']:.1f}% at "
        f"eps {settings.eps_255:g}/255 (chance {metrics['chance_accuracy']:.1f}%, n={metrics['n']})"
    )
    return 0
