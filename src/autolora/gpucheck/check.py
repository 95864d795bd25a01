"""One run of the GPU check: choose the steps, run them within the budget, keep the output folder
up to date after every step, print the report and the summary table last. Torch-free (the inline
dry run imports torch through its steps)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from autolora.environment import timestamp
from autolora.errors import ConfigError
from autolora.gpucheck.plan import PLAN, select
from autolora.gpucheck.report import OUTPUT_FILES, report_lines, summary_table, write_outputs
from autolora.gpucheck.runner import (
    PASSED,
    SKIPPED,
    ContextFactory,
    InlineExecutor,
    Outcome,
    ProcessExecutor,
    run_plan,
)

OUT_VARIABLE = "OUT"  # set by the device tool: what is written there comes back


def output_folder(out: str | None, repo: Path) -> Path:
    """``--out``, else ``$OUT``, else results/gpu-check/<UTC time>; refused when it already holds
    a check's outputs (no result is silently overwritten)."""
    if out is None and os.environ.get(OUT_VARIABLE):
        out = os.environ[OUT_VARIABLE]
    if out is None:
        out = str(repo / "results" / "gpu-check" / timestamp().replace(":", ""))
    folder = Path(out)
    earlier = [name for name in OUTPUT_FILES if (folder / name).exists()]
    if earlier:
        raise ConfigError(
            f"{folder} already holds the outputs of a GPU check ({', '.join(earlier)}): choose "
            "another --out or move them away"
        )
    return folder


class Console:
    """Progress lines, printed as they come and kept for console.log."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock, self.started, self.lines = clock, clock(), []

    def say(self, text: str) -> None:
        line = f"[{self.clock() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.lines.append(line)


def run_check(
    *,
    repo: Path,
    dry_run: bool,
    out: str | None = None,
    work: str | None = None,
    keep_work: bool = False,
    budget_s: float,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    isolation: str | None = None,
    inject: Sequence[str] = (),
    threads: int | None = None,
    device: str | None = None,
) -> int:
    """Run the check; 0 when every step that ran passed, 1 otherwise."""
    steps = select(PLAN, only=only, skip=skip, inject=inject)
    isolation = isolation or ("inline" if dry_run else "process")
    if isolation == "inline" and "hang" in inject:
        raise ConfigError("--inject-failure hang needs --isolation process (inline has no limit)")
    folder = output_folder(out, repo)
    work_root = Path(work) if work else Path(tempfile.mkdtemp(prefix="autolora-gpu-check-"))
    work_root.mkdir(parents=True, exist_ok=True)
    contexts = ContextFactory(
        dry_run=dry_run, repo=repo, work_root=work_root, threads=threads, device=device
    )
    if isolation == "inline":
        if threads:
            import torch

            torch.set_num_threads(threads)
        executor = InlineExecutor(contexts)
    else:
        executor = ProcessExecutor(contexts)
    mode = "dry run (tiny sizes)" if dry_run else "full sizes"
    mode += f" on {contexts.device}"
    meta = {
        "mode": "dry-run" if dry_run else "gpu",
        "device": contexts.device,
        "budget_s": budget_s,
        "isolation": isolation,
        "python": sys.executable,
        "started": timestamp(),
        "out": str(folder),
        "work": str(work_root),
        "plan": [
            {"step": s.name, "what": s.what, "budget_s": s.budget_s, "min_s": s.min_s}
            for s in steps
        ],
    }
    console = Console()
    console.say(
        f"gpu-check, {mode}: {len(steps)} steps within {budget_s:.0f} s; outputs in {folder}"
    )

    def final_lines(outcomes: list[Outcome]) -> list[str]:
        passed = sum(o.status == PASSED for o in outcomes)
        ran = sum(o.status != SKIPPED for o in outcomes)
        environment = next((o for o in outcomes if o.name == "environment"), None)
        device = environment.record.get("headline") if environment else ""
        title = (
            f"gpu-check {mode}: {passed}/{ran} steps passed, {len(outcomes) - ran} skipped, "
            f"{console.clock() - console.started:.0f} of {budget_s:.0f} s"
            + (f"; {device}" if device else "")
        )
        return [*report_lines(outcomes), "", *summary_table(outcomes, title)]

    def save(outcomes: list[Outcome]) -> None:
        write_outputs(
            folder,
            outcomes=outcomes,
            meta={**meta, "finished": timestamp()},
            work_root=work_root,
            console=console.lines,
            final=final_lines(outcomes),
        )

    def on_start(step, timeout_s: float) -> None:
        console.say(f"{step.name}: started, up to {timeout_s:.0f} s")

    def on_outcome(outcomes: list[Outcome]) -> None:
        outcome = outcomes[-1]
        note = f": {outcome.note}" if outcome.note else ""
        console.say(f"{outcome.name}: {outcome.status} in {outcome.seconds:.0f} s{note}")
        save(outcomes)

    outcomes = run_plan(
        steps, budget_s=budget_s, execute=executor, on_start=on_start, on_outcome=on_outcome
    )
    save(outcomes)
    if not work and not keep_work:
        shutil.rmtree(work_root, ignore_errors=True)
    print("\n" + "\n".join(final_lines(outcomes)), flush=True)
    return 0 if all(o.status in (PASSED, SKIPPED) for o in outcomes) else 1
