"""Provenance: a sidecar index per table, one index of the whole results folder, and the audit
that walks and re-verifies them; split by job: ``index`` (the indices written and read),
``audit`` (what an audit found), ``chain`` (one evaluation's chain down to the data and the
backbone) and ``checks`` (each number recomputed, the results folder re-hashed).

The index of a table maps every number (table, row, column) to the evaluation records of its seeds
(path + sha256), and through them to the checkpoint, the run record, the run's history and every
input the run record names (dataset metadata, split manifest, weights and their record), each with
its sha256. Hashes claimed by the records themselves are copied, not recomputed, at aggregation
time; only the evaluation records (which nothing else hashes) are hashed then.

The results index (``provenance/results.json``) lists every other file of the results folder with
its sha256: each table index, the rendered tables, the paper comparison, the claims, the figures,
the report, the missing-cells list, and the inputs of the aggregation (configuration, the paper's
numbers). Its own sha256 is the folder's **seal**: one digest that, with a passing audit, stands for
every byte behind every number, and that a user can publish or commit.

``audit`` re-hashes every file on the chain down to each prepared data file (through
``dataset.json``), the backbone (through its record) and the archive / ``.ckpt`` checksums (present
files are re-hashed; the recorded checksums are compared with the published or pinned ones), checks
that the records agree with one another and recomputes the number from the per-seed values. What it
cannot detect: a consistent rewrite (an evaluation record edited, re-sealed and re-aggregated passes
by construction); ``autolora audit --recompute`` (``autolora.recompute``) re-evaluates the
checkpoints instead, and a published seal makes any later rewrite visible.
"""

from __future__ import annotations

from autolora.reporting.provenance.audit import (
    Audit,
)
from autolora.reporting.provenance.checks import (
    audit_all,
    audit_number,
    audit_one,
    number_value,
    raise_if_failed,
    same_value,
)
from autolora.reporting.provenance.index import (
    INDEX_FORMAT,
    INDEX_KIND,
    RESULTS_KIND,
    SEAL_PREFIX,
    VALUE_TOLERANCE,
    all_indices,
    build_index,
    build_results_index,
    cell_chain,
    find_number,
    load_index,
    number_entry,
    relative_to_root,
    resolve_index_dir,
    seal_of,
    write_index,
    write_results_index,
)

__all__ = [
    "Audit",
    "INDEX_FORMAT",
    "INDEX_KIND",
    "RESULTS_KIND",
    "SEAL_PREFIX",
    "VALUE_TOLERANCE",
    "all_indices",
    "audit_all",
    "audit_number",
    "audit_one",
    "build_index",
    "build_results_index",
    "cell_chain",
    "find_number",
    "load_index",
    "number_entry",
    "number_value",
    "raise_if_failed",
    "relative_to_root",
    "resolve_index_dir",
    "same_value",
    "seal_of",
    "write_index",
    "write_results_index",
]
