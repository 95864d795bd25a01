"""A results folder as a Workflow Run RO-Crate: the research object a reproduction is deposited as.

``results/<protocol>/ro-crate-metadata.json`` describes, in RO-Crate 1.1 JSON-LD with the
Process Run, Workflow Run and Provenance Run Crate 0.5 profiles and Workflow RO-Crate 1.0:

- the workflow (``source/Snakefile``, a copy of the workflow definition taken when the crate is
  written) as a ``ComputationalWorkflow`` whose parts are the rules that ran, with their
  ``FormalParameter``\\ s and the connections between them;
- one ``CreateAction`` for the whole run and one per executed step (prepare or synthesize a
  dataset, convert or pre-train a backbone, train a cell, evaluate a cell, resolve the config,
  aggregate), each with its tool, inputs, outputs, times, host and SLURM job where the records
  hold them; a ``ControlAction`` per step and an ``OrganizeAction`` for Snakemake;
- every file of the folder (tables, figures, report, records, logs) as a ``File`` with its sha256
  and media type; every table number as a ``PropertyValue`` derived from the evaluation records
  behind it (the provenance index's link), so that the chain number → evaluation record →
  checkpoint → prepared data and weights can be followed in the crate alone;
- the software environment, the protocol's resolved choices, the licence and the paper.

Large files (checkpoints, prepared data, backbone weights) are referenced, not copied: ``File``
entities with a ``#`` identifier, the sha256 the records claim for them and their ``localPath``
relative to the crate. Every fact is taken from the records that already exist (run and evaluation
records, ``dataset.json``, the weights records, the provenance index); small files whose hash a
record claims are re-hashed and must agree, large ones are not re-read here (``autolora audit
--crate`` does that). The output is a function of the folder's content: writing it twice gives the
same bytes.
"""

from autolora.reporting.crate.deposit import (
    CrateAudit,
    described_files,
    load_crate,
    verify_crate,
    write_archive,
)
from autolora.reporting.crate.describe import describe_results, write_crate
from autolora.reporting.crate.source import copy_workflow_source
from autolora.reporting.crate.vocabulary import iso_time, media_type

__all__ = [
    "CrateAudit",
    "copy_workflow_source",
    "describe_results",
    "described_files",
    "iso_time",
    "load_crate",
    "media_type",
    "verify_crate",
    "write_archive",
    "write_crate",
]
