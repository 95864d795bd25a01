"""Training one cell (``autolora train``), split by job:

- ``cell``: :func:`train_cell`, the entry: the lock, the attempt's log, kept work reused or
  superseded, then the run;
- ``loop``: :class:`CellTraining`, the epoch loop (steps, λ pass, validation and test PGD-10,
  AutoLR, gradient similarity, stop signals at batch boundaries);
- ``step``: the one training step a method takes (shared with the bench), the seeds of the
  run's random streams, the process-wide torch settings of a run;
- ``state``: the resume state and the best checkpoints, committed after every epoch, and the
  finished outputs written into ``completed/`` (the role of timm's ``CheckpointSaver``);
- ``keeping``: kept work across attempts: a finished run's outputs checked or restored, work of
  another identity or other inputs superseded;
- ``inputs``: the run's input files verified where they are read;
- ``interrupts``: exit codes, stop signals and the fault points of tests;
- ``history``: ``history.csv``;
- ``spec``: ``--spec`` and ``--runtime`` from JSON text or a file.

Outputs in the cell directory: ``best_val.safetensors``, ``best_test.safetensors`` (when the test
set is evaluated each epoch), ``final.safetensors``, ``history.csv`` and, written last as the
completion marker, ``run.json``; the names are ``autolora.planning.layout``'s.
"""

from __future__ import annotations

from autolora.methods import method_settings
from autolora.train.cell import TrainResult, train_cell
from autolora.train.history import history_columns, write_history
from autolora.train.inputs import RunInputs, check_dataset_name
from autolora.train.interrupts import (
    EXIT_INTERRUPTED,
    EXIT_NON_FINITE,
    FAULT_FAIL_ENV,
    FAULT_NAN_ENV,
    FAULT_SIGNAL_ENV,
    FAULT_SIGNAL_NAME_ENV,
    FAULT_WAIT_SIGNAL_ENV,
    STOP_SIGNALS,
    NonFiniteLoss,
    TrainingInterrupted,
    fault_signal_from_env,
)
from autolora.train.keeping import stale_reasons, verify_run_outputs
from autolora.train.loop import CellTraining
from autolora.train.spec import parse_runtime, parse_spec
from autolora.train.state import CHECKPOINT_METRICS, Progress, StateKeeper
from autolora.train.step import TrainingStep, derive_seed, runtime_settings

__all__ = [
    "CHECKPOINT_METRICS",
    "EXIT_INTERRUPTED",
    "EXIT_NON_FINITE",
    "FAULT_FAIL_ENV",
    "FAULT_NAN_ENV",
    "FAULT_SIGNAL_ENV",
    "FAULT_SIGNAL_NAME_ENV",
    "FAULT_WAIT_SIGNAL_ENV",
    "STOP_SIGNALS",
    "CellTraining",
    "NonFiniteLoss",
    "Progress",
    "RunInputs",
    "StateKeeper",
    "TrainResult",
    "TrainingInterrupted",
    "TrainingStep",
    "check_dataset_name",
    "derive_seed",
    "fault_signal_from_env",
    "history_columns",
    "method_settings",
    "parse_runtime",
    "parse_spec",
    "runtime_settings",
    "stale_reasons",
    "train_cell",
    "verify_run_outputs",
    "write_history",
]
