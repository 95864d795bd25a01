"""`python -m autolora.demo`: the whole workflow on config/demo.yaml, offline, on the CPU.

Runs Snakemake from the repository root, prints the wall time of the workflow and the share of
the training and evaluation time spent verifying their inputs, writes Snakemake's HTML report,
audits every file and every number of every table and the RO-Crate's checksums, and prints where
the outputs are.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from autolora.errors import ConfigError
from autolora.planning import layout

DEMO_CONFIG = Path("config/demo.yaml")


def repository_root() -> Path:
    """The folder holding the Snakefile: the current one, or this package's checkout."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "Snakefile").is_file() and (candidate / DEMO_CONFIG).is_file():
            return candidate
    raise ConfigError(
        "no Snakefile with config/demo.yaml found in the current folder or the package's "
        "checkout; run the demo from the repository root"
    )


def snakemake_command(cores: int, extra: list[str]) -> list[str]:
    # One thread per training/evaluation job (the demo config's runtime asks for that too), so
    # `cores` jobs run side by side on the CPU; the backbone's pre-training, which every other
    # job waits for, gets two.
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--configfile",
        str(DEMO_CONFIG),
        "--cores",
        str(cores),
        "--set-threads",
        "train=1",
        "evaluate=1",
        "pretrain_backbone=2",
        "--rerun-incomplete",
        "--show-failed-logs",
        "--quiet",
        "rules",
        *extra,
    ]


def tool_environment() -> dict[str, str]:
    """The environment for the rules: this interpreter's `autolora` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def report_folder(root: Path) -> Path:
    from autolora.planning.grid import load_config

    config = load_config(root / DEMO_CONFIG)
    return Path(
        layout.results_folder(config.get("results", "results"), config.get("protocol", "paper"))
    )


def verification_overhead(results: Path) -> tuple[float, float, int]:
    """(seconds spent verifying inputs, seconds of the jobs, number of records) over every run and
    evaluation record under ``results``, as each record measured them."""
    from autolora.records import EvaluationRecord, RunRecord

    verifying = total = 0.0
    count = 0
    for path in sorted(results.rglob("*.json")):
        if path.parent.name == layout.COMPLETED_DIR:  # the kept copy of the cell's run.json
            continue
        fix = "rerun the demo"
        if path.name == layout.RUN_RECORD:
            run = RunRecord.read(path, fix)
            seconds, verification = run.seconds_this_attempt, run.verified
        elif path.name.startswith(layout.EVALUATION_PREFIX):
            evaluation = EvaluationRecord.read(path, fix)
            seconds, verification = evaluation.seconds, evaluation.verified
        else:
            continue
        verified = (verification or {}).get("seconds")
        if seconds is None or verified is None:
            continue
        verifying, total, count = verifying + verified, total + seconds, count + 1
    return verifying, total, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autolora.demo", description=__doc__)
    parser.add_argument("--cores", type=int, default=2, help="CPU cores for Snakemake (2)")
    parser.add_argument("snakemake_args", nargs="*", help="extra Snakemake arguments (after --)")
    args = parser.parse_args(argv)
    root = repository_root()
    env = tool_environment()
    report = report_folder(root)

    started = time.monotonic()
    status = subprocess.run(
        snakemake_command(args.cores, args.snakemake_args), cwd=root, env=env
    ).returncode
    minutes, seconds = divmod(time.monotonic() - started, 60)
    print(f"\nworkflow wall time: {int(minutes)} min {seconds:.1f} s on {args.cores} cores")
    if status != 0:
        print(f"the workflow failed (exit {status}); see the logs named above", file=sys.stderr)
        return status
    verifying, total, count = verification_overhead(root / report)
    if total > 0:
        print(
            f"input verification at the point of use: {verifying:.2f} s of {total:.1f} s of "
            f"training and evaluation ({100 * verifying / total:.2f} %, {count} records)"
        )

    snakemake_report = report.parent / "snakemake-report.html"
    subprocess.run(
        [*snakemake_command(args.cores, []), "--report", str(snakemake_report)],
        cwd=root,
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    audit = subprocess.run(
        [sys.executable, "-m", "autolora.cli", "audit", "--index", str(report), "--all", "--quiet"],
        cwd=root,
        env=env,
    ).returncode
    crate_audit = subprocess.run(
        [sys.executable, "-m", "autolora.cli", "audit", "--crate", str(report), "--quiet"],
        cwd=root,
        env=env,
    ).returncode
    print(
        "\noutputs:\n"
        f"  tables (CSV, Markdown, LaTeX)                 {report / layout.TABLES_DIR}\n"
        f"  provenance index (autolora audit)             {report / layout.PROVENANCE_DIR}\n"
        f"  figures                                       {report / layout.FIGURES_DIR}\n"
        f"  reproduction report                           {report / layout.REPORT_MD} (.html)\n"
        f"  Snakemake report                              {snakemake_report}\n"
        f"  cells (checkpoints, history, run records)     {report / layout.RUNS_DIR}\n"
        f"  RO-Crate (deposit: autolora crate --zip)      {report / layout.CRATE_METADATA}\n"
        f"audit of every number: {'passed' if audit == 0 else f'FAILED (exit {audit})'}\n"
        f"audit of the crate's checksums: "
        f"{'passed' if crate_audit == 0 else f'FAILED (exit {crate_audit})'}"
    )
    return audit or crate_audit


if __name__ == "__main__":
    sys.exit(main())
