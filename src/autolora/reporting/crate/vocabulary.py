"""The vocabulary of the crate: standard identifiers, the JSON-LD context, media types, and the
workflow's steps, parameters and connections as the Workflow Run Crate profiles describe them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autolora.planning import layout, rules

RO_CRATE = "https://w3id.org/ro/crate/1.1"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
# The RO-Crate 1.1 context lacks the workflow-run terms and two terms later RO-Crate versions
# define; they are declared inline (RO-Crate 1.1 appendix "Extending RO-Crate") with the IRIs the
# workflow-run vocabulary and RO-Crate 1.2+ use, so that the crate needs no other remote context.
CONTEXT: list[Any] = [
    f"{RO_CRATE}/context",
    {
        "sha256": "http://schema.org/sha256",
        "localPath": "https://w3id.org/ro/terms#localPath",
        "wfrun": WFRUN,
        "ParameterConnection": "wfrun:ParameterConnection",
        "connection": "wfrun:connection",
        "sourceParameter": "wfrun:sourceParameter",
        "targetParameter": "wfrun:targetParameter",
    },
]
PROFILES: tuple[tuple[str, str, str], ...] = (
    ("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/provenance/0.5", "Provenance Run Crate", "0.5"),
    ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate", "1.0"),
)
SNAKEMAKE_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"
LICENSE_ID = "https://spdx.org/licenses/MIT"
PAPER_ID = "https://arxiv.org/abs/2310.01818"
PAPER_AUTHORS = ("Xilie Xu", "Jingfeng Zhang", "Mohan Kankanhalli")
COMPLETED = "http://schema.org/CompletedActionStatus"

# What `copy_workflow_source` takes from the workflow's folder (files, or folders taken whole).
WORKFLOW_SOURCES = ("Snakefile", "workflow", "config/schema.yaml", "config/weights.lock", "envs")
MAIN_WORKFLOW = f"{layout.CRATE_SOURCE_DIR}/Snakefile"
# Files the crate does not describe: checkpoints are referenced through the run records instead,
# resume state is not a result, and a deposit archive is made from the crate, not part of it.
LARGE_SUFFIXES = (".safetensors",)
SKIPPED_SUFFIXES = (".zip",)

MEDIA_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".html": "text/html",
    ".tex": "application/x-tex",
    ".png": "image/png",
    ".pdf": "application/pdf",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".log": "text/plain",
    ".txt": "text/plain",
    ".lock": "text/plain",
    ".smk": "text/plain",
    ".rst": "text/x-rst",
    ".sh": "text/x-shellscript",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".tar": "application/x-tar",
    ".zip": "application/zip",
}
OCTET_STREAM = "application/octet-stream"
ARCHIVE_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: the same crate gives the same archive

# Steps in the order the workflow runs them (HowToStep positions).
STEP_ORDER = (
    rules.SYNTHESIZE_DATASET,
    rules.PREPARE_DATASET,
    rules.PRETRAIN_BACKBONE,
    rules.CONVERT_WEIGHTS,
    rules.TRAIN,
    rules.EVALUATE,
    rules.RESOLVE_CONFIG,
    rules.AGGREGATE,
)
STEP_PURPOSE = {
    "synthesize_dataset": "generates a synthetic dataset and prepares it (`autolora data synthesize`)",
    "prepare_dataset": "verifies a dataset's downloaded archives and prepares the dataset and its "
    "splits (`autolora data prepare`)",
    "pretrain_backbone": "adversarially pre-trains the tiny demo backbone (`autolora pretrain`)",
    "convert_weights": "verifies a downloaded robustness-library checkpoint against its pinned "
    "sha256 and converts it to safetensors (`autolora weights convert`)",
    "train": "robust fine-tuning of one cell (`autolora train`)",
    "evaluate": "SA / PGD-10 / AutoAttack of a cell's reported checkpoint (`autolora evaluate`)",
    "resolve_config": "writes the configuration the tables are built from",
    "aggregate": "tables, p-values, figures, paper comparison, provenance index and report "
    "(`autolora aggregate`)",
}
# (rule, parameter) -> (additionalType, description)
PARAMETERS: dict[tuple[str, str], tuple[str, str]] = {
    ("synthesize_dataset", "generator_settings"): ("PropertyValue", "settings of the generator"),
    ("synthesize_dataset", "prepared_dataset"): ("File", "prepared dataset files"),
    ("prepare_dataset", "archives"): ("File", "downloaded archives (published checksums)"),
    ("prepare_dataset", "prepared_dataset"): ("File", "prepared dataset files"),
    ("pretrain_backbone", "pretrain_settings"): ("PropertyValue", "pre-training settings"),
    ("pretrain_backbone", "backbone"): ("File", "backbone weights (safetensors)"),
    ("pretrain_backbone", "backbone_record"): ("File", "record of the backbone"),
    ("convert_weights", "checkpoint"): ("File", "published checkpoint (pinned sha256)"),
    ("convert_weights", "backbone"): ("File", "backbone weights (safetensors)"),
    ("convert_weights", "backbone_record"): ("File", "record of the conversion"),
    ("train", "prepared_dataset"): ("File", "prepared dataset metadata and split files"),
    ("train", "backbone"): ("File", "pre-trained backbone weights"),
    ("train", "protocol_choice"): ("PropertyValue", "a resolved choice of the protocol"),
    ("train", "run_record"): ("File", "run record (run.json)"),
    ("train", "history"): ("File", "per-epoch history (history.csv)"),
    ("train", "checkpoints"): ("File", "checkpoints (best_val, best_test, final)"),
    ("train", "log"): ("File", "training log"),
    ("evaluate", "run_record"): ("File", "the cell's run record"),
    ("evaluate", "checkpoint"): ("File", "the reported checkpoint"),
    ("evaluate", "prepared_dataset"): ("File", "prepared dataset metadata and split files"),
    ("evaluate", "evaluation_record"): ("File", "evaluation record (eval-<checkpoint>.json)"),
    ("evaluate", "log"): ("File", "evaluation log"),
    ("resolve_config", "config"): ("File", "workflow configuration file"),
    ("resolve_config", "resolved_config"): ("File", "the resolved configuration"),
    ("aggregate", "resolved_config"): ("File", "the resolved configuration"),
    ("aggregate", "paper_results"): ("File", "the paper's reported numbers"),
    ("aggregate", "evaluation_records"): ("File", "every cell's evaluation record"),
    ("aggregate", "histories"): ("File", "every cell's history"),
    ("aggregate", "tables"): ("File", "tables (CSV, Markdown, LaTeX, per-seed values)"),
    ("aggregate", "numbers"): ("PropertyValue", "a number of a table"),
    ("aggregate", "figures"): ("File", "figures"),
    ("aggregate", "provenance_index"): ("File", "provenance index read by `autolora audit`"),
    ("aggregate", "report"): ("File", "reproduction report, comparison, claims, missing cells"),
}
WORKFLOW_PARAMETERS: dict[str, tuple[str, str]] = {
    "config": ("File", "workflow configuration file"),
    "paper_results": ("File", "the paper's reported numbers"),
    "dataset_sources": ("File", "dataset archives (published checksums)"),
    "generator_settings": ("PropertyValue", "settings of a synthetic dataset's generator"),
    "backbone_checkpoints": ("File", "pre-trained checkpoints (pinned sha256)"),
    "pretrain_settings": ("PropertyValue", "pre-training settings of the demo backbone"),
    "protocol_choice": ("PropertyValue", "a resolved choice of the protocol"),
    "tables": ("File", "tables"),
    "figures": ("File", "figures"),
    "report": ("File", "reproduction report, comparison, claims, missing cells"),
    "provenance_index": ("File", "provenance index"),
    "evaluation_records": ("File", "evaluation records"),
    "run_records": ("File", "run records and histories"),
    "checkpoints": ("File", "checkpoints (referenced by sha256)"),
}
WORKFLOW_INPUTS = (
    "config",
    "paper_results",
    "dataset_sources",
    "generator_settings",
    "backbone_checkpoints",
    "pretrain_settings",
    "protocol_choice",
)
# (source rule, parameter) -> (target rule, parameter); the rule "" is the workflow itself.
CONNECTIONS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("", "config"), ("resolve_config", "config")),
    (("", "paper_results"), ("aggregate", "paper_results")),
    (("", "dataset_sources"), ("prepare_dataset", "archives")),
    (("", "generator_settings"), ("synthesize_dataset", "generator_settings")),
    (("", "backbone_checkpoints"), ("convert_weights", "checkpoint")),
    (("", "pretrain_settings"), ("pretrain_backbone", "pretrain_settings")),
    (("", "protocol_choice"), ("train", "protocol_choice")),
    (("synthesize_dataset", "prepared_dataset"), ("train", "prepared_dataset")),
    (("synthesize_dataset", "prepared_dataset"), ("evaluate", "prepared_dataset")),
    (("prepare_dataset", "prepared_dataset"), ("train", "prepared_dataset")),
    (("prepare_dataset", "prepared_dataset"), ("evaluate", "prepared_dataset")),
    (("pretrain_backbone", "backbone"), ("train", "backbone")),
    (("convert_weights", "backbone"), ("train", "backbone")),
    (("train", "run_record"), ("evaluate", "run_record")),
    (("train", "checkpoints"), ("evaluate", "checkpoint")),
    (("train", "history"), ("aggregate", "histories")),
    (("evaluate", "evaluation_record"), ("aggregate", "evaluation_records")),
    (("resolve_config", "resolved_config"), ("aggregate", "resolved_config")),
    (("aggregate", "tables"), ("", "tables")),
    (("aggregate", "figures"), ("", "figures")),
    (("aggregate", "report"), ("", "report")),
    (("aggregate", "provenance_index"), ("", "provenance_index")),
    (("evaluate", "evaluation_record"), ("", "evaluation_records")),
    (("train", "run_record"), ("", "run_records")),
    (("train", "checkpoints"), ("", "checkpoints")),
)


def iso_time(stamp: str | None) -> str | None:
    """A record's UTC time stamp with an explicit offset (``...+00:00``, not ``...Z``), the form
    the Process Run Crate profile asks for."""
    if stamp and stamp.endswith("Z"):
        return stamp[:-1] + "+00:00"
    return stamp


def media_type(path: str | Path) -> str:
    """The IANA media type of a file by its name (``application/octet-stream`` if unknown)."""
    if Path(path).name == "Snakefile":
        return "text/plain"
    return MEDIA_TYPES.get(Path(path).suffix.lower(), OCTET_STREAM)


def is_hidden(relative: Path) -> bool:
    """Whether a path (relative to the folder it lies in) is or lies under a hidden file or
    folder: neither copied into ``source/`` nor described."""
    return any(part.startswith(".") for part in relative.parts)
