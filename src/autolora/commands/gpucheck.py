"""`autolora gpu-check`: the CUDA path end to end and the speed targets in one time-boxed run
(`scripts/gpu-check` selects the interpreter and calls this; docs/performance.md)."""

from __future__ import annotations

import argparse

NAME = "gpu-check"
HELP = "prove the CUDA path and measure the speed targets in one time-boxed run (or --dry-run)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autolora.gpucheck.plan import DEFAULT_BUDGET_S, INJECTED, PLAN

    names = [step.name for step in PLAN]
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="every step at tiny size on the CPU (as CI runs it)",
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only copy the packages the GPU machine lacks into .gpu-check/ (run it here, "
        "then name .gpu-check in the device call's carry)",
    )
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    parser.add_argument(
        "--out", default=None, help="output folder (default: $OUT, else results/gpu-check/<time>)"
    )
    parser.add_argument(
        "--work", default=None, help="folder for the steps' files (default: a temporary one)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for all steps together (default {DEFAULT_BUDGET_S:g})",
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="STEP", choices=names,
                        help="run only these steps")  # fmt: skip
    parser.add_argument("--skip", nargs="+", default=[], metavar="STEP", choices=names,
                        help="leave these steps out")  # fmt: skip
    parser.add_argument(
        "--isolation",
        choices=("process", "inline"),
        default=None,
        help="each step in its own process, killed at its limit (default on the GPU), or all "
        "in this process (default for --dry-run)",
    )
    parser.add_argument(
        "--inject-failure",
        action="append",
        default=[],
        choices=sorted(INJECTED),
        help="add a step that fails this way (tests that the run goes on)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per step")
    parser.add_argument(
        "--device",
        default=None,
        help="run the steps on this device instead (default: cuda; cpu with --dry-run); e.g. "
        "--device cpu without --dry-run tries the GPU sizes on the CPU (slow)",
    )


def run(args: argparse.Namespace) -> int:
    from autolora.demo import repository_root
    from autolora.errors import ConfigError
    from autolora.gpucheck.plan import PLAN

    repo = repository_root()
    if args.prepare:
        from autolora.gpucheck.carry import prepare_carry

        carry = prepare_carry(repo)
        print(f"{carry}: ready; name {carry.name} in the device call's carry")
        return 0
    if args.list:
        for step in PLAN:
            print(f"{step.name:<18} up to {step.budget_s:>4.0f} s (min {step.min_s:>3.0f}): "
                  f"{step.what}")  # fmt: skip
        return 0
    if args.budget_s <= 0:
        raise ConfigError(f"--budget-s must be > 0, got {args.budget_s}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    from autolora.gpucheck.check import run_check

    return run_check(
        repo=repo,
        dry_run=args.dry_run,
        out=args.out,
        work=args.work,
        keep_work=args.keep_work,
        budget_s=args.budget_s,
        only=args.only,
        skip=args.skip,
        isolation=args.isolation,
        inject=args.inject_failure,
        threads=args.threads,
        device=args.device,
    )
