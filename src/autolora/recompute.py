"""`autolora audit --recompute`: evaluate again the checkpoints behind one table number and compare
with the values recorded for it.

The audit proves that every file on a number's chain is the one its records name. It cannot prove
that a record's numbers came from its checkpoint: an evaluation record edited, re-sealed and
aggregated again passes the audit by construction. Recomputing goes back to the checkpoints: each
seed's recorded checkpoint is evaluated again (the same checkpoint, data, attack and number of
test images as its evaluation record says, through ``autolora.evaluate``, which verifies every
input on the way), and the per-seed values and the number are compared with the index.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.autoattack_variants import STANDARD
from autolora.errors import ChecksumError, ConfigError
from autolora.records import EvaluationRecord
from autolora.reporting.provenance import find_number, load_index, number_value, same_value


@dataclass
class Recomputation:
    """The outcome of one recomputation; ``lines`` says it in words."""

    table: str
    row: str
    column: str
    recorded: float | None
    recomputed: float | None
    tolerance: float
    lines: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _close(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return same_value(a, b) or abs(a - b) <= tolerance


def _evaluation_arguments(record: EvaluationRecord, root: Path, metric: str) -> dict[str, Any]:
    """How the recorded evaluation was run: its cell, data, checkpoint and test images."""
    run_dir = root / Path(record.run_record["path"]).parent
    dataset = record.inputs_of("dataset")
    if not dataset:
        raise ConfigError(f"evaluation record of {record.cell_id} names no dataset input")
    return {
        "run_dir": run_dir,
        "data_dir": root / Path(dataset[0]["path"]).parent,
        "checkpoint": record.checkpoint_name,
        "n": record.n,
        "autoattack": metric == "AA",
        # the AutoAttack variant the recorded AA came from (records without one ran standard)
        "autoattack_version": record.autoattack_version or STANDARD,
        # and its batch size: it decides which examples share a batch, hence the random starts
        "autoattack_batch_size": (record.autoattack or {}).get("batch_size"),
    }


def recompute_number(
    index_dir: str | Path,
    table: str,
    row: str,
    column: str,
    *,
    root: str | Path = ".",
    device: str | None = None,
    tolerance: float = 0.0,
) -> Recomputation:
    """Re-evaluate every seed behind ``table``/``row``/``column`` and compare (``tolerance``:
    allowed absolute difference, in the number's unit; 0 = exact, as a deterministic CPU
    evaluation reproduces)."""
    from autolora.evaluate import evaluate_run

    root = Path(root)
    index = load_index(index_dir, table)
    number = find_number(index, row, column)
    result = Recomputation(table, row, column, number["value"], None, tolerance)
    say = result.lines.append
    say(f"{table} · row {row} · column {column} = {number['display']} (recorded)")
    if number["kind"] == "ratio":
        say(f"  computed, not measured ({number['formula']}): nothing to re-evaluate")
        result.recomputed = number["value"]
        return result
    metric = number["metric"]
    recomputed_seeds = []
    with tempfile.TemporaryDirectory(prefix="autolora-recompute-") as scratch:
        for seed in number["seeds"]:
            label = f"{seed['group']} " if seed["group"] else ""
            if seed["status"] == "missing":
                say(f"  {label}seed {seed['seed']}: no evaluation record; not recomputed")
                recomputed_seeds.append(dict(seed))
                continue
            path = root / seed["evaluation"]
            record = EvaluationRecord.read(path, "rerun `autolora evaluate` for this cell")
            arguments = _evaluation_arguments(record, root, metric)
            out = Path(scratch) / f"{len(recomputed_seeds)}.json"
            fresh = evaluate_run(
                arguments["run_dir"],
                arguments["data_dir"],
                checkpoint=arguments["checkpoint"],
                out=out,
                n=arguments["n"],
                autoattack=arguments["autoattack"],
                autoattack_version=arguments["autoattack_version"],
                autoattack_batch_size=arguments["autoattack_batch_size"],
                device=device,
                command="autolora audit --recompute",
            )
            value = fresh["metrics"][metric]
            recomputed_seeds.append({**seed, "value": value})
            attack = f", AutoAttack {arguments['autoattack_version']}" if metric == "AA" else ""
            words = (
                f"  {label}seed {seed['seed']}: {metric} recorded {_shown(seed['value'])}, "
                f"recomputed {_shown(value)} from {arguments['checkpoint']} "
                f"(n={fresh['n']}{attack}, cell {seed['cell_id']})"
            )
            if _close(value, seed["value"], tolerance):
                say(words + ": same")
            else:
                say(words + f": DIFFERS by {_difference(seed['value'], value)}")
                result.differences.append(
                    f"{seed['evaluation']} records {metric} {_shown(seed['value'])}, its "
                    f"checkpoint gives {_shown(value)}"
                )
    result.recomputed = number_value(number, recomputed_seeds)
    verdict = (
        "reproduced"
        if _close(result.recomputed, number["value"], tolerance)
        else f"DIFFERS by {_difference(number['value'], result.recomputed)}"
    )
    if verdict != "reproduced":
        result.differences.append(
            f"{table} {row} {column} is {_shown(number['value'])}, recomputed "
            f"{_shown(result.recomputed)}"
        )
    say(
        f"  the number: recorded {_shown(number['value'])}, recomputed "
        f"{_shown(result.recomputed)}: {verdict}"
    )
    return result


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _difference(recorded: float | None, recomputed: float | None) -> str:
    if recorded is None or recomputed is None:
        return "(one of them is missing)"
    return f"{recomputed - recorded:+.6g}"


def raise_if_differs(result: Recomputation) -> None:
    """ChecksumError naming what differs (the CLI turns it into exit status 2)."""
    if result.ok:
        return
    raise ChecksumError(
        f"recompute: {'; '.join(result.differences)}. The evaluation records do not describe "
        "their checkpoints: delete those eval-*.json files, rerun the evaluations (snakemake) "
        "and `autolora aggregate`"
    )
