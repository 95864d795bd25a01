"""The GPU check's output folder and its summary table. Torch-free.

The folder holds a fixed handful of files, rewritten (atomically) after every step so that a run
killed at any point leaves a consistent set; the device tool brings back at most 8 files from
``$OUT``:

- ``summary.txt``: the report lines of every step, then the summary table (what is printed last);
- ``gpu-check.json``: the plan, every step's status, figures, checks and report lines;
- ``steps.tar.gz``: each step's folder (log, record, bench JSON, run and evaluation records),
  text files only;
- ``console.log``: the runner's own progress lines.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autolora.files import atomic_path, atomic_write, write_json
from autolora.gpucheck.runner import SKIPPED, Outcome

OUTPUT_FILES = ("summary.txt", "gpu-check.json", "steps.tar.gz", "console.log")
PACKED_SUFFIXES = (".txt", ".log", ".json", ".csv", ".yaml")
PACKED_MAX_BYTES = 2 << 20
HEADLINE_WIDTH = 96


def summary_table(outcomes: Sequence[Outcome], title: str) -> list[str]:
    """One row per step: name, status, seconds and its headline (or why it did not pass)."""
    rows = [title, f"{'step':<18} {'status':<8} {'sec':>5}  result", "-" * (36 + HEADLINE_WIDTH)]
    for outcome in outcomes:
        text = outcome.record.get("headline") or ""
        if outcome.status not in ("passed",) and outcome.note:
            text = f"{outcome.note}" + (f" | {text}" if text else "")
        if len(text) > HEADLINE_WIDTH:
            text = text[: HEADLINE_WIDTH - 3] + "..."
        seconds = "" if outcome.status == SKIPPED else f"{outcome.seconds:.0f}"
        rows.append(f"{outcome.name:<18} {outcome.status:<8} {seconds:>5}  {text}")
    return rows


def report_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """Every step's report lines, under its name, and the checks that did not pass."""
    lines: list[str] = []
    for outcome in outcomes:
        body = list(outcome.record.get("lines") or [])
        misses = [
            f"  {'FAILED' if check['required'] else 'note'}: {check['name']} "
            f"(value {check['value']}{', needs ' + check['limit'] if check['limit'] else ''})"
            for check in outcome.record.get("checks") or []
            if not check["ok"] and not check["name"].startswith("target ")
        ]
        if body or misses:
            lines.append(f"== {outcome.name}")
            lines += [f"  {line}" for line in body] + misses
    return lines


def write_outputs(
    out: Path,
    *,
    outcomes: Sequence[Outcome],
    meta: dict[str, Any],
    work_root: Path,
    console: Sequence[str],
    final: Sequence[str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu-check.json", {**meta, "steps": [o.as_dict() for o in outcomes]})
    with atomic_write(out / "summary.txt") as handle:
        handle.write("\n".join(final) + "\n")
    with atomic_write(out / "console.log") as handle:
        handle.write("\n".join(console) + "\n")
    with atomic_path(out / "steps.tar.gz") as tmp, tarfile.open(tmp, "w:gz") as archive:
        for path in sorted(work_root.rglob("*")):
            if (
                path.is_file()
                and path.suffix in PACKED_SUFFIXES
                and path.stat().st_size <= PACKED_MAX_BYTES
                and not path.name.startswith(".")
            ):
                archive.add(path, arcname=str(path.relative_to(work_root)))
