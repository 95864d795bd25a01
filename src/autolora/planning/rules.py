"""The workflow's rules by name, for the code that counts or describes its jobs (``autolora plan``,
the RO-Crate's steps). ``workflow/rules/*.smk`` defines them; a test checks that both agree."""

from __future__ import annotations

DOWNLOAD_DATASET = "download_dataset"
PREPARE_DATASET = "prepare_dataset"
SYNTHESIZE_DATASET = "synthesize_dataset"
DOWNLOAD_WEIGHTS = "download_weights"
CONVERT_WEIGHTS = "convert_weights"
PRETRAIN_BACKBONE = "pretrain_backbone"
TRAIN = "train"
EVALUATE = "evaluate"
RESOLVE_CONFIG = "resolve_config"
AGGREGATE = "aggregate"
CRATE = "crate"
ALL = "all"
RULES = (
    DOWNLOAD_DATASET,
    PREPARE_DATASET,
    SYNTHESIZE_DATASET,
    DOWNLOAD_WEIGHTS,
    CONVERT_WEIGHTS,
    PRETRAIN_BACKBONE,
    TRAIN,
    EVALUATE,
    RESOLVE_CONFIG,
    AGGREGATE,
    CRATE,
    ALL,
)
