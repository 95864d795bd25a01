"""`autolora bench`: training-step, PGD-10 and AutoAttack throughput on this device, the fast
paths' speed-up and agreement, and the configured grid's GPU-hours (docs/performance.md)."""

from __future__ import annotations

import argparse

from autolora.planning.vocabulary import ARCHS, METHODS

NAME = "bench"
HELP = "time the robust training steps against a standard step; print ratios and TFLOP/s"
FLAGS = ("channels_last", "bf16", "compile", "cudnn_benchmark")
EXIT_CHECK_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument(
        "--size",
        choices=("tiny", "full"),
        default=None,
        help="tiny: the tiny ResNet at 32 px (CPU-sized); full: ResNet-18/50 at 224 px and "
        "CIFAR's 32->224 path (default: full on a GPU, tiny on the CPU)",
    )
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=ARCHS,
        default=None,
        help="only the cases of these backbones (default: every case of --size)",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--fast-paths",
        choices=("plain", "fast", "both"),
        default="both",
        help="time plain fp32 eager, the fast variant, or both (default) for the speed-up",
    )
    parser.add_argument(
        "--fast",
        nargs="+",
        choices=FLAGS,
        default=None,
        help="flags of the fast variant (default: all four on a GPU; channels_last bf16 on the "
        "CPU, where torch.compile takes minutes)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override the case batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--autoattack-n", type=int, default=16, help="images for the AutoAttack timing (0: skip)"
    )
    parser.add_argument(
        "--autoattack-case",
        choices=("all-robust", "non-robust"),
        default=None,
        help="all-robust: no point is broken, all four attacks run on every point (slowest); "
        "non-robust: APGD-CE breaks nearly every point (fastest). Default: all-robust on a GPU, "
        "non-robust on the CPU",
    )
    parser.add_argument(
        "--config", default=None, help="workflow config whose grid to project in GPU-hours"
    )
    parser.add_argument(
        "--json",
        default=None,
        help="also write every figure to this JSON file (rewritten after each phase, so an "
        "interrupted bench keeps what it measured; 'complete' says whether it finished)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new measurement after this many seconds; what was measured is kept and "
        "the rest is listed as skipped (default: no limit)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="also compare one step's loss and gradients under each fast flag (and all of them) "
        "with plain fp32 eager; exit 1 when one is out of tolerance",
    )
    parser.add_argument(
        "--equivalence",
        action="store_true",
        help="instead of timing: train the tiny model plain vs the fast variant over --seeds "
        "and compare clean and PGD-10 accuracy; exit 1 when outside seed noise",
    )
    group = parser.add_argument_group("--equivalence sizes")
    group.add_argument("--seeds", type=int, default=3)
    group.add_argument("--epochs", type=int, default=3)
    group.add_argument("--train-size", type=int, default=512)
    group.add_argument("--test-size", type=int, default=256)
    group.add_argument("--attack-steps", type=int, default=10)
    group.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)"
    )


def _positive(args: argparse.Namespace, *names: str) -> None:
    from autolora.errors import ConfigError

    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def run(args: argparse.Namespace) -> int:
    import torch

    from autolora import bench
    from autolora.environment import resolve_device
    from autolora.errors import ConfigError
    from autolora.fastpath import FastPaths
    from autolora.files import write_json

    _positive(
        args, "batch_size", "repeats", "seeds", "epochs", "train_size", "test_size", "threads"
    )
    if args.warmup < 0 or args.autoattack_n < 0:
        raise ConfigError("--warmup and --autoattack-n must be >= 0")
    if args.budget_s is not None and args.budget_s < 0:
        raise ConfigError(f"--budget-s must be >= 0, got {args.budget_s}")
    if args.config and not args.equivalence and bench.REFERENCE_METHOD not in args.methods:
        raise ConfigError(
            f"--config: projecting a grid needs the reference method {bench.REFERENCE_METHOD!r} "
            "among --methods (the cost model's throughputs are vanilla RFT's)"
        )
    device = resolve_device(args.device, "--device")
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = args.fast or (FLAGS if on_gpu else ("channels_last", "bf16"))
    fast = FastPaths(**{flag: True for flag in flags})

    if args.equivalence:
        return _equivalence(args, fast, device)

    size = args.size or ("full" if on_gpu else "tiny")
    cases = bench.GPU_CASES if size == "full" else bench.CPU_CASES
    if args.archs:
        available = sorted({c.arch for c in cases})
        cases = tuple(c for c in cases if c.arch in args.archs)
        if not cases:
            raise ConfigError(
                f"--archs {' '.join(args.archs)}: --size {size} has cases of "
                f"{', '.join(available)} only (--size full: resnet18, resnet50; tiny: tiny)"
            )
    if args.batch_size:
        cases = tuple(bench.BenchCase(c.arch, c.image_size, args.batch_size, c.input_upsample)
                      for c in cases)  # fmt: skip
    variants = {"plain": [FastPaths()], "fast": [fast], "both": [FastPaths(), fast]}
    variants = variants[args.fast_paths]
    budget = bench.Budget(args.budget_s)
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    peak = bench.matmul_peak_tflops(device)
    print(
        f"device: {device_name}; torch {torch.__version__}; {torch.get_num_threads()} CPU "
        f"threads; measured {'bf16' if on_gpu else 'fp32'} matmul peak {peak:.3g} TFLOP/s"
    )
    print(f"inherent robust/standard multiple: {bench.INHERENT_ROBUST_MULTIPLE:.2f} (26/3)")

    # Saved after every phase (timings, evaluation, projection, each check), so that a bench
    # stopped by its budget or killed keeps every figure it measured.
    report: dict = {
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peak_tflops": peak,
        "inherent_multiple": bench.INHERENT_ROBUST_MULTIPLE,
        "timings": [],
        "speedups": [],
        "evaluation": [],
        "checks": [],
        "projection": None,
        "skipped": budget.skipped,
        "complete": False,
    }

    def save() -> None:
        if args.json:
            write_json(args.json, report)

    rows = []
    for case in cases:
        if budget.skip(f"timings of {case.label}"):
            continue
        flops = bench.step_flops(case, device, args.methods)
        for paths in variants:
            if budget.skip(f"timings of {case.label} {paths.label()}"):
                continue
            rows += bench.time_training_steps(
                case,
                device,
                paths,
                args.methods,
                warmup=args.warmup,
                repeats=args.repeats,
                flops=flops,
            )
            report["timings"] = bench.timings_as_dicts(rows)
            save()
    print(bench.format_timings(rows, peak))
    speedups = bench.fast_path_speedups(rows)
    report["speedups"] = [s.__dict__ for s in speedups]
    for line in bench.format_speedups(speedups) + bench.targets_met(rows, speedups):
        print(line)

    _evaluation(args, cases, device, on_gpu, budget, report["evaluation"], save)
    if args.config and any(r.method == bench.REFERENCE_METHOD for r in rows):  # else skipped
        report["projection"] = bench.project_grid(args.config, rows, report["evaluation"])
        print(report["projection"]["summary"])
        save()
    if args.check:
        _checks(args, cases, device, fast, budget, report["checks"], save)
    report["complete"] = not budget.skipped
    if budget.skipped:
        print(f"budget of {args.budget_s:g} s reached; not measured: {'; '.join(budget.skipped)}")
    save()
    return EXIT_CHECK_FAILED if any(not c["ok"] for c in report["checks"]) else 0


def _evaluation(args, cases, device, on_gpu: bool, budget, evaluation: list[dict], save) -> None:
    """PGD-10 and AutoAttack throughput of each case, appended to ``evaluation``."""
    from autolora import bench

    all_robust = (args.autoattack_case or ("all-robust" if on_gpu else "non-robust")) == (
        "all-robust"
    )
    for case in cases:
        if budget.skip(f"PGD-10 evaluation of {case.label}"):
            continue
        pgd_seconds = bench.seconds_per_call(
            bench.pgd_evaluation(case, device), device, args.warmup, args.repeats
        )
        entry = {
            "case": case.label,
            "arch": case.arch,
            "pgd10_images_per_s": case.batch_size / pgd_seconds,
        }
        line = f"{case.label}: PGD-10 evaluation {entry['pgd10_images_per_s']:.1f} img/s"
        evaluation.append(entry)
        save()
        if args.autoattack_n and not budget.skip(f"AutoAttack of {case.label}"):
            entry["autoattack_images_per_s"] = bench.autoattack_images_per_s(
                case, device, args.autoattack_n, all_robust=all_robust
            )
            entry["autoattack_case"] = "all-robust" if all_robust else "non-robust"
            line += (
                f"; AutoAttack {entry['autoattack_images_per_s']:.3g} img/s "
                f"({entry['autoattack_case']}, n={args.autoattack_n})"
            )
            save()
        print(line)


def _checks(args, cases, device, fast, budget, results: list[dict], save) -> None:
    """Each flag of the fast variant alone, then all of them together; appended to ``results``."""
    from autolora import bench
    from autolora.fastpath import FastPaths

    singles = [FastPaths(**{flag: True}) for flag in FLAGS if getattr(fast, flag)]
    variants = list(dict.fromkeys(singles + [fast]))
    for case in cases:
        for method in args.methods:
            for paths in variants:
                if budget.skip(f"check of {case.label} {method} {paths.label()}"):
                    continue
                bench.configure_backends(paths)
                result = bench.check_fast_path(case, method, device, paths)
                print(bench.format_check(result))
                results.append(result)
                save()
    bench.configure_backends(FastPaths())


def _equivalence(args, fast, device) -> int:
    from autolora import bench
    from autolora.fastpath import FastPaths
    from autolora.files import write_json

    runs = []
    for method in args.methods:
        for seed in range(args.seeds):
            for paths in (FastPaths(), fast):
                runs.append(
                    bench.short_run(
                        method,
                        paths,
                        seed,
                        epochs=args.epochs,
                        train_size=args.train_size,
                        test_size=args.test_size,
                        attack_steps=args.attack_steps,
                        image_size=args.image_size,
                        device=device,
                    )
                )
    summary = bench.equivalence_summary(runs)
    print(
        f"short-run equivalence: tiny model, {args.train_size} synthetic training images, "
        f"{args.image_size} px, {args.epochs} epochs, PGD-{args.attack_steps}, {args.seeds} seeds "
        "(mean ± std, percent)"
    )
    print(bench.format_equivalence(summary))
    if args.json:
        write_json(args.json, {"runs": [r.__dict__ for r in runs], "summary": summary})
    outside = any(
        not entry[metric]["within_seed_noise"]
        for entry in summary
        for metric in ("clean_accuracy", "pgd_accuracy")
    )
    return EXIT_CHECK_FAILED if outside else 0
