"""The audit of a table's numbers and of the results folder: every number recomputed from its
seeds' values (Table 3's ratio recounted), every chain walked once, every output re-hashed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autolora.errors import ChecksumError, ConfigError
from autolora.files import read_json, sha256_file
from autolora.planning import layout
from autolora.planning.vocabulary import PROPOSED
from autolora.reporting.provenance.audit import Audit
from autolora.reporting.provenance.chain import audit_chain
from autolora.reporting.provenance.index import (
    SEAL_PREFIX,
    VALUE_TOLERANCE,
    all_indices,
    find_number,
    json_float,
    load_index,
    relative_to_root,
    resolve_index_dir,
)
from autolora.reporting.stats import TEST_DESCRIPTIONS, summarize, two_sample_ttest
from autolora.reporting.tables import parameter_ratio_pct


def audit_number(audit: Audit, index: dict, number: dict) -> None:
    """Describe one number's chain and re-verify it, adding to ``audit``."""
    table, row, column = index["table"], number["row"], number["column"]
    audit.say(f"{table} · row {row} · column {column} = {number['display']}")
    if number["kind"] == "ratio":
        audit.say(f"computed, not measured: {number['formula']}", 1)
        _check_ratio(audit, index, number)
        return
    protocol = index.get("protocol") or "unknown"
    what = (
        "mean over seeds (std with ddof = 1)"
        if number["kind"] == "mean"
        else f"p-value, {TEST_DESCRIPTIONS.get(number['test'], number['test'])}, AutoLoRa vs {_groups(number)}"
    )
    audit.say(
        f"{number['metric']} (%), {what}; {number['n']} of {number['expected']} configured "
        f"values present; protocol {protocol}; checkpoint {index.get('checkpoint')}",
        1,
    )
    for seed in number["seeds"]:
        _audit_seed(audit, index, number, seed)
    _check_value(audit, index, number)


def _groups(number: dict) -> str:
    return ", ".join(sorted({s["group"] for s in number["seeds"] if s["group"] != PROPOSED}))


def _audit_seed(audit: Audit, index: dict, number: dict, seed: dict) -> None:
    label = f"{seed['group']} " if seed["group"] else ""
    chain = index["cells"].get(seed["cell_id"], {})
    if seed["status"] == "missing" or chain.get("status") == "missing":
        exists = (audit.root / seed["evaluation"]).is_file()
        later = " (it exists now: rerun `autolora aggregate`)" if exists else ""
        audit.say(
            f"{label}seed {seed['seed']}: no evaluation record at aggregation "
            f"({seed['evaluation']}){later}",
            1,
        )
        return
    value = "not computed" if seed["value"] is None else f"{seed['value']:.6g}"
    audit.say(
        f"{label}seed {seed['seed']}: {number['metric']} = {value} — cell {seed['cell_id']}", 1
    )
    if seed["cell_id"] in audit._cells_done:
        audit.say("chain verified above", 2)
    else:
        audit._cells_done.add(seed["cell_id"])
        audit_chain(audit, chain)
    _check_seed_value(audit, chain, number, seed)


def _check_seed_value(audit: Audit, chain: dict, number: dict, seed: dict) -> None:
    path = audit.root / chain["evaluation"]["path"]
    if not path.is_file() or audit._sha256(path) != chain["evaluation"]["sha256"]:
        return  # reported as changed or missing above
    recorded = (audit.read_json(chain["evaluation"]["path"]).get("metrics") or {}).get(
        number["metric"]
    )
    if not same_value(recorded, seed["value"]):
        audit.problem(
            f"{chain['evaluation']['path']}: {number['metric']} is {recorded}, the index "
            f"says {seed['value']}",
            2,
        )


def number_value(number: dict, seeds: list[dict]) -> float | None:
    """A mean or p-value number computed from per-seed values (``seeds``: as in the index)."""
    values = [s["value"] for s in seeds if s["status"] == "ok" and s["value"] is not None]
    if number["kind"] == "mean":
        return json_float(summarize(values).mean) if values else None
    ok = [s for s in seeds if s["status"] == "ok" and s["value"] is not None]
    a = [s["value"] for s in ok if s["group"] == PROPOSED]
    b = [s["value"] for s in ok if s["group"] != PROPOSED]
    if len(a) < 2 or len(b) < 2:
        return None
    return json_float(two_sample_ttest(a, b, welch=number["test"] == "welch").pvalue)


def _check_value(audit: Audit, index: dict, number: dict) -> None:
    recomputed = number_value(number, number["seeds"])
    if same_value(recomputed, number["value"]):
        audit.say("recomputed from the per-seed values: matches", 1)
    else:
        audit.problem(
            f"{index['table']}: {number['row']} / {number['column']} is {number['value']}, "
            f"recomputed {recomputed}",
            1,
        )


def _check_ratio(audit: Audit, index: dict, number: dict) -> None:
    counts = number.get("parameters")
    if number["value"] is None or not counts:
        return
    recomputed = parameter_ratio_pct(counts[counts["counted"]], counts["feature_extractor"])
    if not same_value(recomputed, number["value"]):
        audit.problem(f"{index['table']}: ratio {number['column']} does not match its counts", 1)
        return
    if audit.count_parameters is None:
        audit.say("recomputed from the recorded counts: matches", 1)
        return
    recount = audit.count_parameters(counts["arch"], counts["lora_rank"], counts["lora_blocks"])
    keys = ("feature_extractor", "lora_created", "lora_used", "update_blocks")
    differing = [k for k in keys if recount[k] != counts[k]]
    if differing:
        audit.problem(
            f"{index['table']}: ratio {number['column']}: the built model has "
            + ", ".join(f"{k} {recount[k]} (recorded {counts[k]})" for k in differing),
            1,
        )
    else:
        audit.say("recomputed: matches (parameters recounted on the built model)", 1)


def _check_outputs(audit: Audit, index: dict) -> None:
    for item in index.get("outputs") or []:
        audit.check_file("table file", item["path"], item["sha256"], 1)


def same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(float(a) - float(b)) <= VALUE_TOLERANCE * max(1.0, abs(float(b)))


def audit_one(
    index_dir: str | Path,
    table: str,
    row: str,
    column: str,
    root: str | Path = ".",
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None,
) -> Audit:
    index = load_index(index_dir, table)
    audit = Audit(Path(root), count_parameters)
    audit_number(audit, index, find_number(index, row, column))
    return audit


def audit_all(
    index_dir: str | Path,
    root: str | Path = ".",
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None,
) -> Audit:
    """Every file of the results folder (through its results index), every number of every
    indexed table and the chain behind each."""
    audit = Audit(Path(root), count_parameters)
    indices = all_indices(index_dir)
    if not indices:
        raise ConfigError(
            f"no provenance index in {resolve_index_dir(index_dir)}: run `autolora aggregate` first"
        )
    _audit_results_index(audit, resolve_index_dir(index_dir))
    for index in indices:
        audit.say(f"== {index['table']}: {index['title']} ({len(index['numbers'])} numbers)")
        _check_outputs(audit, index)
        for number in index["numbers"]:
            audit_number(audit, index, number)
    return audit


def _audit_results_index(audit: Audit, index_dir: Path) -> None:
    path = index_dir / layout.RESULTS_INDEX
    shown = relative_to_root(path.resolve(), audit.root)
    if not path.is_file():
        audit.problem(
            f"{shown}: missing, so the derived files (comparison, claims, report, figures) "
            "cannot be checked; rerun `autolora aggregate`"
        )
        return
    index = read_json(path)
    audit.say(f"== results folder: {shown} (seal {SEAL_PREFIX}{sha256_file(path)})")
    listed = set()
    for group in ("tables", "files", "inputs"):
        for item in index.get(group) or []:
            audit.check_file(item["role"], item["path"], item["sha256"], 1)
            listed.add((audit.root / item["path"]).resolve())
    for table_index in sorted(index_dir.glob("*.json")):
        if table_index.name != layout.RESULTS_INDEX and table_index.resolve() not in listed:
            audit.problem(
                f"{relative_to_root(table_index.resolve(), audit.root)}: a table "
                f"index not listed in {shown}; rerun `autolora aggregate`",
                1,
            )


def raise_if_failed(audit: Audit) -> None:
    """ChecksumError naming the files at fault (the CLI turns it into exit status 2)."""
    if audit.ok:
        return
    shown = "; ".join(audit.problems[:5])
    more = f" (+{len(audit.problems) - 5} more)" if len(audit.problems) > 5 else ""
    raise ChecksumError(
        f"audit failed, {len(audit.problems)} problem(s): {shown}{more}. "
        "Rerun the jobs that produce these files (snakemake) and `autolora aggregate`."
    )
