"""The epoch loop of one cell: training steps, the AutoLoRa λ pass, validation and test PGD-10,
checkpoints, the automated LR scheduler, gradient similarity, resume, signals and the run record.

Outputs in the cell directory: ``best_val.safetensors``, ``best_test.safetensors`` (when the test
set is evaluated each epoch), ``final.safetensors``, ``history.csv`` and, written last as the
completion marker, ``run.json``. While the run is unfinished ``state/`` holds its resume state
(``autolora.checkpoints``); the best checkpoints live there until the run completes.

Completion is durable and idempotent (``autolora.cellfolder``): the finished outputs are written
into ``completed/`` (its ``run.json`` last: the commit point), the resume state is then dropped,
and the outputs are put in place as hard links. A later attempt on a completed cell (a retry after
a scheduler counted the finished job as failed and deleted its outputs) verifies the kept files
against their sha256, restores the outputs and records the attempt in ``run.json``, without
training. Attempts take the cell's lock (a second trainer of the cell refuses) and log to their
own file in ``logs/``.

Kept work is reused only for the same run: every attempt first verifies its inputs, then compares
the identity (the resolved configuration less ``runtime`` and the evaluation-only settings) and
the input hashes (``dataset.json``, the split files, the backbone and its record) with those the
kept work recorded (``completed/run.json``; ``state.json``, which stores the inputs verified at
the first attempt). Work of another identity or other inputs is superseded: moved whole to
``superseded/<UTC time>-<reason>/`` (never deleted; the log names what differed) and the cell
trains from scratch; the new ``run.json`` lists what it superseded. So the run record's
``inputs`` are always the files the run trained from.

Runtime: ``--runtime`` (device, workers, fast paths, determinism) is merged into the cell's
``runtime`` group. It is not part of the run's identity: a run resumes or is complete under any
runtime, and each attempt records its own.

Randomness: every stream is derived from the cell seed (:func:`derive_seed`): model init (head,
LoRa A), the PGD random starts of each epoch (an explicit ``torch.Generator``), the data order and
augmentation (the loaders derive theirs from (seed, epoch, stream, position)), the gradient
similarity pass (its own stream, so it does not change training).

Resume: the state is committed after every epoch (model with LoRa and BN buffers, optimizer,
AutoLR, λ, RNG states, history, best weights). A crash loses at most the running epoch; the rerun
continues from the last committed state, bit-identically on a deterministic CPU run.

Signals: SIGTERM / SIGUSR1 (what SLURM sends before a time limit) set a flag. At the next training
batch boundary the full mid-epoch state is committed (including the position in the epoch and the
PGD generator's state) and the run stops with exit code 75 (EX_TEMPFAIL); rerun the same command
to resume. A signal during validation is honoured at the end of that epoch, after its state; one
while the finished run's outputs are written is ignored (the run completes, exit 0).

Fast paths (``runtime.channels_last``, ``bf16``, ``compile``, ``cudnn_benchmark``) come from
``autolora.fastpath``: bf16 autocast wraps the training step only; evaluation stays fp32.
``runtime.deterministic`` turns on ``torch.use_deterministic_algorithms`` (warn-only: a CUDA op
without a deterministic kernel warns) and turns cuDNN autotuning off.

Verification at the point of use: before anything is trained, every input file is checked
against its record: the prepared data files the run reads against ``dataset.json`` (hashed as they
are read; ``images.u8`` in one streaming pass), the backbone against the record beside it and, for
a downloaded checkpoint, the published or pinned hash in ``config/weights.lock``. A ``--data``
whose dataset is not the spec's, or weights of another arch / ε_pt, are refused. The run record's
``verified`` lists every file checked and the seconds it took. A finished cell's outputs are
checked against its run record before "already complete" is reported.

Non-finite loss: the run stops with a message naming epoch and batch (exit code 3); the last
saved state (normally the last finished epoch) is kept.

Fault injection, for tests of this loop and of the workflow: ``AUTOLORA_FAULT_NAN_AT=E:B`` makes
the loss of epoch E, batch B (both 1-based) NaN; ``AUTOLORA_FAULT_FAIL_AT=E:B`` raises
RuntimeError there; ``AUTOLORA_FAULT_SIGNAL_AT=E:B`` sends the process SIGUSR1 after that
batch's step (a deterministic stand-in for SLURM's signal; ``AUTOLORA_FAULT_SIGNAL=SIGTERM`` sends
SIGTERM instead); ``AUTOLORA_FAULT_WAIT_SIGNAL_AT=E:B`` blocks after that batch's step until a
stop signal arrives (a job that is still running when the scheduler's signal comes, however fast
or slow the machine: a signal that comes earlier is held until that point), and ``E:end`` blocks
after epoch E's state is committed. A third field ``:once``
fires only in a run's first attempt (not on resume).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from autolora import cellfolder, checkpoints, environment, records
from autolora.accuracy import batches_on, clean_and_pgd_accuracy, lora_accuracy
from autolora.data.gpu_augment import DeviceAugmenter, device_batches, make_device_loader
from autolora.data.loaders import make_loader
from autolora.data.prepared import PreparedDataset
from autolora.data.transforms import TransformSpec
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.fastpath import FastPaths, configure_backends, prepare_model, training_autocast
from autolora.files import as_json_data, read_json, sha256_file, write_text
from autolora.methods import Method, build_method, method_settings
from autolora.models import (
    build_model,
    count_lora_parameters,
    count_used_lora_parameters,
    load_backbone_state,
)
from autolora.planning import layout
from autolora.planning.cells import CellConfig, resolve_cell, runtime_values
from autolora.planning.grid import EVALUATION_ONLY_KEYS, RUNTIME_KEY
from autolora.planning.protocol import protocol_choices
from autolora.records import RunRecord
from autolora.schedules import AutoLR, lambda_weights, multistep_lr
from autolora.weights import DEFAULT_LOCK, load_verified_backbone

logger = logging.getLogger(__name__)

EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: state saved after SIGTERM/SIGUSR1, rerun to resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
FAULT_NAN_ENV = "AUTOLORA_FAULT_NAN_AT"
FAULT_FAIL_ENV = "AUTOLORA_FAULT_FAIL_AT"
FAULT_SIGNAL_ENV = "AUTOLORA_FAULT_SIGNAL_AT"
FAULT_SIGNAL_NAME_ENV = "AUTOLORA_FAULT_SIGNAL"
FAULT_WAIT_SIGNAL_ENV = "AUTOLORA_FAULT_WAIT_SIGNAL_AT"
SIGNAL_POLL_S = 0.2  # how often a fault point waiting for a stop signal looks at the flag
CHECKPOINT_METRICS = {"best_val": "val_pgd10", "best_test": "test_pgd10"}
# The inputs whose files define a run's result: kept work recorded with other hashes is superseded.
COMPARED_INPUTS = ("dataset", "split_manifest", "split_info", "weights", "weights_record")


class TrainingInterrupted(Exception):
    """A stop signal arrived; the state was committed. Exit with EXIT_INTERRUPTED."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite. Exit with EXIT_NON_FINITE."""


@dataclass
class TrainResult:
    status: str  # "complete" | "already_complete" | "restored"
    record: RunRecord


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed for the stream named by ``parts`` (e.g. ``"train", epoch``)."""
    text = json.dumps([seed, *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def parse_spec(text: str) -> tuple[dict[str, Any], Path | None]:
    """A cell spec from JSON text or a .json/.yaml file; returns (spec, file or None)."""
    return _parse_mapping(text, "--spec", "the cell spec")


def parse_runtime(text: str) -> dict[str, Any]:
    """Runtime settings (``autolora.cells.RuntimeConfig`` keys) from JSON text or a file."""
    runtime, _ = _parse_mapping(text, "--runtime", "runtime settings")
    return runtime_values(runtime, "--runtime")


def _parse_mapping(text: str, option: str, what: str) -> tuple[dict[str, Any], Path | None]:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError as error:
            raise ConfigError(
                f"{option} is not valid JSON ({error}): pass JSON text or a file"
            ) from None
        return value, None
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"{option} {text!r} is neither JSON text nor an existing .json/.yaml file"
        )
    if path.suffix in (".yaml", ".yml"):
        import yaml

        value = yaml.safe_load(path.read_text())
    elif path.suffix == ".json":
        value = read_json(path, f"fix the {option} file {path} (a JSON mapping)")
    else:
        raise ConfigError(f"{option} file {path} must end in .json, .yaml or .yml")
    if not isinstance(value, dict):
        raise ConfigError(f"{option} file {path} must hold a mapping ({what})")
    return value, path


# ---- fault injection and signals ----------------------------------------------------------------


@dataclass(frozen=True)
class FaultPoint:
    epoch: int
    batch: int | None  # None: the end of the epoch, after its state is committed
    once: bool

    @classmethod
    def from_env(cls, name: str, *, allow_end: bool = False) -> FaultPoint | None:
        text = os.environ.get(name)
        if not text:
            return None
        parts = text.split(":")
        try:
            epoch = int(parts[0])
            batch = None if allow_end and parts[1] == "end" else int(parts[1])
            once = parts[2:] == ["once"]
            if len(parts) > 3 or (len(parts) == 3 and not once):
                raise ValueError
        except (ValueError, IndexError):
            expected = (
                "EPOCH:BATCH[:once] or EPOCH:end[:once]" if allow_end else "EPOCH:BATCH[:once]"
            )
            raise ConfigError(
                f"environment variable {name}={text!r}: expected {expected}"
            ) from None
        return cls(epoch, batch, once)

    def hits(self, epoch: int, batch: int | None, attempt: int) -> bool:
        return (epoch, batch) == (self.epoch, self.batch) and (attempt == 1 or not self.once)


def fault_signal_from_env() -> signal.Signals:
    """The signal ``AUTOLORA_FAULT_SIGNAL_AT`` sends: SIGUSR1 unless ``AUTOLORA_FAULT_SIGNAL``
    names another stop signal."""
    name = os.environ.get(FAULT_SIGNAL_NAME_ENV) or "SIGUSR1"
    allowed = {s.name: s for s in STOP_SIGNALS}
    if name not in allowed:
        raise ConfigError(
            f"environment variable {FAULT_SIGNAL_NAME_ENV}={name!r}: expected one of "
            f"{', '.join(sorted(allowed))}"
        )
    return allowed[name]


class StopFlag:
    """Records the first SIGTERM/SIGUSR1 while installed."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __bool__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signal_number: int, frame: Any) -> None:
        if self.signal_number is None:
            self.signal_number = signal_number
            logger.warning(
                "received %s: saving state at the next batch boundary",
                signal.Signals(signal_number).name,
            )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else ""

    def wait(self, where: str) -> None:
        """Block until a stop signal has been recorded (a fault point: the job is still running
        when its scheduler's signal comes, however fast the machine)."""
        if not self:
            logger.warning("%s: waiting for a stop signal (%s)", where, FAULT_WAIT_SIGNAL_ENV)
        while not self:
            time.sleep(SIGNAL_POLL_S)  # the handler runs during the sleep and sets the flag


@contextlib.contextmanager
def runtime_settings(config: CellConfig) -> Iterator[None]:
    """Determinism and cuDNN flags for the run; restored afterwards (they are process-wide)."""
    runtime = config.runtime
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a CUDA op without a deterministic kernel (e.g. the backward of the nearest
    # upsampling that PGD differentiates through) warns instead of stopping the run.
    torch.use_deterministic_algorithms(runtime.deterministic, warn_only=True)
    configure_backends(FastPaths.from_runtime(config.runtime))
    if runtime.deterministic:
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = runtime.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


# ---- the run --------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What is known after the last committed point (epoch end or a batch boundary)."""

    epoch: int = 0  # finished epochs
    lr: float = 0.0  # LR of the next epoch under AutoLR
    lambdas: tuple[float, float] | None = None
    lora_train_sa: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {epoch, value}
    stop_reason: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    started: str = ""
    in_epoch: dict[str, Any] | None = None  # mid-epoch position after a signal
    inputs: list[dict[str, Any]] = field(default_factory=list)  # verified at the first attempt
    superseded: list[dict[str, Any]] = field(default_factory=list)  # kept aside for this run


class CellTraining:
    """One cell's training run; :meth:`run` does everything and returns the run record."""

    def __init__(
        self,
        config: CellConfig,
        spec: dict[str, Any],
        *,
        data_dir: Path,
        weights: Path,
        out_dir: Path,
        spec_file: Path | None,
        command: str,
        log_path: Path | None = None,
        weights_lock: Path = DEFAULT_LOCK,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.weights_lock = weights_lock
        self.verified: list[dict[str, Any]] = []
        self.verification_seconds = 0.0
        self.spec = spec
        self.data_dir = data_dir
        self.weights_path = weights
        self.out_dir = out_dir
        self.state_dir = out_dir / layout.STATE_DIR
        self.spec_file = spec_file
        self.command = command
        self.config_dict = config.to_dict()
        self.device = environment.resolve_device(config.runtime.device)
        self.fast_paths = FastPaths.from_runtime(config.runtime)
        self.stop = StopFlag()
        self.fault_nan = FaultPoint.from_env(FAULT_NAN_ENV)
        self.fault_fail = FaultPoint.from_env(FAULT_FAIL_ENV)
        self.fault_signal = FaultPoint.from_env(FAULT_SIGNAL_ENV)
        self.fault_signal_number = fault_signal_from_env()
        self.fault_wait_signal = FaultPoint.from_env(FAULT_WAIT_SIGNAL_ENV, allow_end=True)
        # Until that fault point is reached a stop signal is only recorded: the run stops there,
        # whether the signal came before or while it waits.
        self.deferring_stop = False
        self.progress = Progress(lr=config.lr)
        self.best_weights: dict[str, dict[str, Tensor]] = {}
        self.best_dirty: set[str] = set()
        self.inputs: list[dict[str, Any]] = []  # this attempt's, from the verified bytes
        self.superseded: list[dict[str, Any]] = []  # what this attempt moved aside
        self.backbone_state: dict[str, Tensor] | None = None

    # -- set-up --

    def verify_inputs(self) -> list[dict[str, Any]]:
        """Open the prepared data and read the backbone, checking every file against its record
        (nothing is trained yet); returns the run's inputs with the sha256 of the bytes read."""
        self._open_data()
        self._verify_backbone()
        self.inputs = self._inputs()
        return self.inputs

    def _open_data(self) -> None:
        config = self.config
        self.dataset = PreparedDataset.open(self.data_dir, verify=config.split_scheme)
        check_dataset_name(self.dataset, config, self.data_dir)
        self.verified.append(
            {
                "path": records.record_path(self.data_dir / layout.DATASET_METADATA),
                "sha256": self.dataset.metadata_sha256,
                "checked_against": "its record_sha256",
            }
        )
        self.verified += [
            {
                "path": records.record_path(self.data_dir / item["file"]),
                "sha256": item["sha256"],
                "checked_against": records.record_path(self.data_dir / layout.DATASET_METADATA),
            }
            for item in self.dataset.verified
        ]
        self.verification_seconds += self.dataset.verification_seconds
        self.split_info = self.dataset.split_info(config.split_scheme)
        self.views = {
            name: self.dataset.split(config.split_scheme, name) for name in ("train", "val", "test")
        }
        for name in ("train", "val") + (("test",) if config.test_each_epoch else ()):
            if len(self.views[name]) == 0:
                raise DataError(
                    f"prepared dataset {self.data_dir}: split {name!r} of scheme "
                    f"{config.split_scheme!r} is empty; re-prepare the dataset"
                )

    def _verify_backbone(self) -> None:
        config = self.config
        self.backbone_state, verified, seconds = load_verified_backbone(
            self.weights_path,
            arch=config.arch,
            eps_pt_255=config.eps_pt,
            lock_path=self.weights_lock,
        )
        self.backbone_verified = verified
        self.verified += [
            {
                **item,
                "path": item["path"] if item.get("source") else records.record_path(item["path"]),
            }
            for item in verified
        ]
        self.verification_seconds += seconds

    def _build(self) -> None:
        config = self.config
        self.method: Method = build_method(config.method, method_settings(config))
        torch.manual_seed(derive_seed(config.seed, "init"))  # head and LoRa A init
        self.model = build_model(
            config.arch,
            int(self.split_info["num_outputs"]),
            input_upsample=self.dataset.metadata.get("input_upsample"),
            **self.method.model_options(),
        )
        load_backbone_state(self.model, self.backbone_state)
        self.backbone_state = None  # the model holds it now
        self.model.to(self.device)
        prepare_model(self.model, self.fast_paths)
        self.optimizer = torch.optim.SGD(
            self.method.trainable_parameters(self.model),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=False,
            weight_decay=config.weight_decay,
        )
        self.autolr = (
            AutoLR(
                initial_lr=config.autolr.initial_lr,
                checkpoints=config.autolr.checkpoints,
                rho=config.autolr.rho,
                min_lr=config.autolr.min_lr,
                decay=config.autolr.decay,
                max_epochs=config.epochs,
            )
            if config.lr_schedule == "autolr"
            else None
        )
        self.progress.lr = config.autolr.initial_lr if self.autolr else config.lr

    def _batches(
        self, view, *, train: bool, epoch: int, stream: str, shuffle=None, start_batch: int = 0
    ):
        return make_loader(
            view,
            train=train,
            seed=self.config.seed,
            epoch=epoch,
            batch_size=self.config.batch_size,
            stream=stream,
            shuffle=shuffle,
            num_workers=self.config.runtime.num_workers,
            start_batch=start_batch,
        )

    # -- the pieces of an epoch --

    def _lambda_pass(self, epoch_index: int) -> None:
        """Measure the LoRa branch's accuracy on the augmented training split (eval mode) and set
        λ1, λ2 for the epoch with 0-based index ``epoch_index``."""
        batches = self._augmented_batches(epoch_index, stream="lambda", shuffle=False)
        accuracy, _ = lora_accuracy(self.model, batches)
        config = self.config
        lambdas = lambda_weights(accuracy / 100.0, config.alpha, config.lambda_scale)
        self.progress.lora_train_sa, self.progress.lambdas = accuracy, lambdas
        self.method.set_lambdas(*lambdas)

    def _augmented_batches(
        self, epoch_index: int, *, stream: str, shuffle=None, start_batch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Training-split batches with the training augmentation, on the device. With
        ``runtime.gpu_augment`` the uint8 images travel to the device and are cropped and flipped
        there, with the same random parameters as the CPU path (``autolora.data.gpu_augment``)."""
        view = self.views["train"]
        if not self.config.runtime.gpu_augment:
            loader = self._batches(
                view,
                train=True,
                epoch=epoch_index,
                stream=stream,
                shuffle=shuffle,
                start_batch=start_batch,
            )
            return batches_on(loader, self.device, self._memory_format)
        loader = make_device_loader(
            view,
            seed=self.config.seed,
            epoch=epoch_index,
            batch_size=self.config.batch_size,
            stream=stream,
            shuffle=True if shuffle is None else shuffle,
            num_workers=self.config.runtime.num_workers,
            start_batch=start_batch,
            pin_memory=self.device.type == "cuda",
        )
        augmenter = DeviceAugmenter(TransformSpec.from_metadata(self.dataset.metadata))
        return device_batches(loader, augmenter, self.device, self._memory_format)

    @property
    def _memory_format(self):
        return torch.channels_last if self.fast_paths.channels_last else None

    def _lr_at(self, epoch: int, batch: int, iterations_per_epoch: int) -> float:
        if self.autolr is not None:
            return self.progress.lr
        config = self.config
        iteration = (epoch - 1) * iterations_per_epoch + batch
        return multistep_lr(
            config.lr, iteration, iterations_per_epoch, config.milestones, config.lr_factor
        )

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (1-based), from the saved position when resuming mid-epoch;
        return the summed metrics."""
        train_size, batch_size = len(self.views["train"]), self.config.batch_size
        iterations = -(-train_size // batch_size)
        generator = torch.Generator(device=self.device)
        resumed = self.progress.in_epoch
        if resumed is not None:
            generator.set_state(self._resumed_generator_state)
            sums, start = dict(resumed["sums"]), int(resumed["next_batch"])
            seconds_before = float(resumed["seconds"])
        else:
            generator.manual_seed(derive_seed(self.config.seed, "train", epoch))
            sums, start, seconds_before = {"examples": 0.0}, 0, 0.0
        self.progress.in_epoch = None
        attempt = len(self.progress.attempts)
        started = time.monotonic()
        batches = self._augmented_batches(epoch - 1, stream="train", start_batch=start)
        batches = _progress_bar(batches, total=iterations - start, description=f"epoch {epoch}")
        self.model.train()
        for batch, (x, y) in enumerate(batches, start=start):
            if self.stop and not self.deferring_stop:
                in_epoch = {
                    "epoch": epoch,
                    "next_batch": batch,
                    "sums": sums,
                    "seconds": seconds_before + time.monotonic() - started,
                }
                self._commit(in_epoch=in_epoch, generator=generator)
                raise TrainingInterrupted(
                    f"received {self.stop.name} in epoch {epoch} before batch {batch + 1} of "
                    f"{iterations}: state saved to {self.state_dir}; rerun the same command to "
                    "resume"
                )
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr_at(epoch, batch, iterations)
            self.optimizer.zero_grad(set_to_none=True)
            with training_autocast(self.fast_paths, self.device):
                result = self.method.training_step(self.model, x, y, generator=generator)
            loss = result.loss
            if self.fault_fail and self.fault_fail.hits(epoch, batch + 1, attempt):
                raise RuntimeError(
                    f"injected failure ({FAULT_FAIL_ENV}) at epoch {epoch}, batch {batch + 1}"
                )
            # The step's metrics already hold the loss as a float (its one device sync).
            value = result.metrics["loss"]
            if self.fault_nan and self.fault_nan.hits(epoch, batch + 1, attempt):
                loss, value = loss * float("nan"), float("nan")
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"non-finite loss ({value}) in epoch {epoch}, batch {batch + 1} of {iterations}: "
                    f"training stopped; the last saved state is kept in {self.state_dir} (lower "
                    "the learning rate, or delete the state to start over)"
                )
            loss.backward()
            self.optimizer.step()
            if self.fault_signal and self.fault_signal.hits(epoch, batch + 1, attempt):
                os.kill(os.getpid(), self.fault_signal_number)
            if self.fault_wait_signal and self.fault_wait_signal.hits(epoch, batch + 1, attempt):
                self._wait_for_stop(f"epoch {epoch}, batch {batch + 1}")
            n = float(x.shape[0])
            sums["examples"] += n
            for name, metric in result.metrics.items():
                if name not in ("lambda1", "lambda2"):
                    sums[name] = sums.get(name, 0.0) + metric * n
        sums["seconds"] = seconds_before + time.monotonic() - started
        sums["lr"] = self._lr_at(epoch, 0, iterations)
        return sums

    def _gradient_similarity(self, epoch: int) -> float:
        count = self.config.grad_similarity_batches
        batches = self._augmented_batches(epoch - 1, stream="grad_similarity")
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.config.seed, "grad_similarity", epoch)
        )
        values = []
        for x, y in batches:
            if len(values) == count:
                break
            values.append(self.method.gradient_similarity(self.model, x, y, generator=generator))
        self.optimizer.zero_grad(set_to_none=True)
        return sum(values) / len(values)

    def _robustness(self, split: str) -> tuple[float, float]:
        loader = self._batches(self.views[split], train=False, epoch=0, stream="eval")
        attack = self.config.attack
        sa, pgd10, _ = clean_and_pgd_accuracy(
            self.model,
            batches_on(loader, self.device, self._memory_format),
            eps=attack.eps,
            step=attack.step,
            steps=attack.eval_steps,
        )
        return sa, pgd10

    def _model_copy(self) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t in self.model.state_dict().items()}

    def _run_epoch(self, epoch: int) -> None:
        progress = self.progress
        lambdas, lora_sa = progress.lambdas, progress.lora_train_sa
        sums = self._train_epoch(epoch)
        evaluation_started = time.monotonic()
        row: dict[str, Any] = {"epoch": epoch, "lr": sums.pop("lr"), "lora_train_sa": lora_sa}
        row["lambda1"], row["lambda2"] = lambdas if lambdas else (None, None)
        seconds, examples = sums.pop("seconds"), sums.pop("examples")
        row.update({f"train_{name}": total / examples for name, total in sorted(sums.items())})
        row["grad_similarity"] = (
            self._gradient_similarity(epoch) if self.config.grad_similarity_batches else None
        )
        row["val_sa"], row["val_pgd10"] = self._robustness("val")
        row["test_sa"], row["test_pgd10"] = (
            self._robustness("test") if self.config.test_each_epoch else (None, None)
        )
        weights_now = None  # one copy, shared when both best checkpoints improve at once
        for name, metric in CHECKPOINT_METRICS.items():
            value = row[metric]
            if value is not None and (
                name not in progress.best or value > progress.best[name]["value"]
            ):
                progress.best[name] = {"epoch": epoch, "value": value}
                weights_now = weights_now if weights_now is not None else self._model_copy()
                self.best_weights[name] = weights_now
                self.best_dirty.add(name)
        row["reloaded_best"] = False
        if self.autolr is not None:
            decision = self.autolr.update(row["val_pgd10"])
            progress.lr = decision.lr
            if decision.reload_best:
                self.model.load_state_dict(self.best_weights["best_val"])
                row["reloaded_best"] = True
            if decision.stop:
                progress.stop_reason = decision.reason
            row["autolr"] = decision.reason
        elif epoch >= self.config.epochs:
            progress.stop_reason = f"finished the configured {self.config.epochs} epochs"
        row["next_lr"] = progress.lr if self.autolr is not None else None
        if progress.stop_reason is None and self.method.uses_lambda_pass:
            self._lambda_pass(epoch)
        row["seconds"] = seconds + time.monotonic() - evaluation_started
        progress.history.append(row)
        progress.epoch = epoch
        self._commit()
        write_history(self.out_dir / layout.HISTORY, progress.history)
        logger.info(_epoch_line(row))
        wait = self.fault_wait_signal
        if wait and wait.hits(epoch, None, len(progress.attempts)):
            self._wait_for_stop(f"end of epoch {epoch}, its state committed")

    def _wait_point_ahead(self) -> bool:
        """Whether this attempt still has to pass its AUTOLORA_FAULT_WAIT_SIGNAL_AT point."""
        fault, progress = self.fault_wait_signal, self.progress
        if not fault or (fault.once and len(progress.attempts) != 1):
            return False
        if fault.epoch <= progress.epoch:
            return False
        position = progress.in_epoch
        return not (
            position is not None
            and fault.epoch == position["epoch"]
            and fault.batch is not None
            and fault.batch <= position["next_batch"]
        )

    def _wait_for_stop(self, where: str) -> None:
        self.stop.wait(where)
        self.deferring_stop = False

    # -- state --

    def _rng_tensors(self) -> dict[str, Tensor]:
        tensors = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def _commit(self, *, in_epoch: dict[str, Any] | None = None, generator=None) -> None:
        progress = self.progress
        optimizer_tensors, optimizer_meta = checkpoints.optimizer_to_tensors(
            self.optimizer.state_dict()
        )
        info = {
            "config": self.config_dict,
            "epoch": progress.epoch,
            "lr": progress.lr,
            "lambdas": list(progress.lambdas) if progress.lambdas else None,
            "lora_train_sa": progress.lora_train_sa,
            "autolr": self.autolr.state_dict() if self.autolr else None,
            "optimizer": optimizer_meta,
            "history": progress.history,
            "best": progress.best,
            "stop_reason": progress.stop_reason,
            "attempts": progress.attempts,
            "started": progress.started,
            "in_epoch": in_epoch,
            "inputs": progress.inputs,
            "superseded": progress.superseded,
        }
        tensors: dict[str, dict[str, Tensor] | None] = {
            "model": self.model.state_dict(),
            "optimizer": optimizer_tensors,
            "rng": self._rng_tensors(),
        }
        for name in CHECKPOINT_METRICS:
            tensors[name] = self.best_weights[name] if name in self.best_dirty else None
        if generator is not None:
            tensors["generator"] = {"state": generator.get_state()}
        checkpoints.save_state(self.state_dir, as_json_data(info), tensors)
        self.best_dirty.clear()

    def _restore(self) -> bool:
        """Load the committed state, if any; True when there was one."""
        loaded = checkpoints.load_state(self.state_dir)
        if loaded is None:
            return False
        info, groups = loaded
        settings, files = stale_reasons(
            info["config"], info.get("inputs"), self.config_dict, self.inputs
        )
        stale = settings + files
        if stale:  # train_cell supersedes such a state before the run starts
            raise ConfigError(
                f"{self.state_dir} holds the resume state of another run ({'; '.join(stale)}): "
                f"rerun the same command to have it moved aside, or choose another --out"
            )
        self.model.load_state_dict(groups["model"])
        self.optimizer.load_state_dict(
            checkpoints.optimizer_from_tensors(groups["optimizer"], info["optimizer"])
        )
        torch.set_rng_state(groups["rng"]["torch"])
        if "cuda" in groups["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(groups["rng"]["cuda"], self.device)
        if self.autolr is not None:
            self.autolr.load_state_dict(info["autolr"])
        for name in CHECKPOINT_METRICS:
            if name in groups:
                self.best_weights[name] = {k: t.to(self.device) for k, t in groups[name].items()}
        self.progress = Progress(
            epoch=info["epoch"],
            lr=info["lr"],
            lambdas=tuple(info["lambdas"]) if info["lambdas"] else None,
            lora_train_sa=info["lora_train_sa"],
            history=info["history"],
            best=info["best"],
            stop_reason=info["stop_reason"],
            attempts=info["attempts"],
            started=info["started"],
            in_epoch=info["in_epoch"],
            inputs=info["inputs"],
            superseded=info["superseded"],
        )
        if self.progress.lambdas:
            self.method.set_lambdas(*self.progress.lambdas)
        if info["in_epoch"] is not None:
            self._resumed_generator_state = groups["generator"]["state"]
        return True

    # -- finishing --

    def _weights_metadata(
        self, name: str, epoch: int, metric: str | None, value: float | None
    ) -> dict:
        return {
            "cell_id": self.config.cell_id,
            "epoch": epoch,
            "selected_by": name,
            "metric": metric,
            "value": value,
            "arch": self.config.arch,
            "method": self.config.method,
            "num_classes": int(self.split_info["num_outputs"]),
        }

    def _finish(self, started_at: float) -> RunRecord:
        progress = self.progress
        entries: dict[str, dict[str, Any]] = {}
        for name, metric in CHECKPOINT_METRICS.items():
            if name in progress.best:
                best = progress.best[name]
                entries[name] = {
                    "weights": self.best_weights[name],
                    "epoch": best["epoch"],
                    "metric": metric,
                    "value": best["value"],
                }
        entries["final"] = {
            "weights": self.model.state_dict(),
            "epoch": progress.epoch,
            "metric": None,
            "value": None,
        }
        kept = self.out_dir / layout.COMPLETED_DIR
        checkpoint_records = {}
        outputs = []
        for name, entry in entries.items():
            file_name = layout.checkpoint_file(name)
            metadata = self._weights_metadata(name, entry["epoch"], entry["metric"], entry["value"])
            sha256 = checkpoints.save_weights(kept / file_name, entry["weights"], metadata)
            output = _output_entry(name, self.out_dir / file_name, sha256)
            outputs.append(output)
            checkpoint_records[name] = {
                "epoch": entry["epoch"],
                "selected_by": name,
                "metric": entry["metric"],
                "value": entry["value"],
                "path": output["path"],
                "sha256": output["sha256"],
            }
        history_sha256 = write_history(kept / layout.HISTORY, progress.history)
        outputs.append(_output_entry("history", self.out_dir / layout.HISTORY, history_sha256))
        record = RunRecord(
            cell=self.config.identity.to_dict(),
            cell_id=self.config.cell_id,
            spec=self.spec,
            config=self.config_dict,
            protocol={
                "name": self.config.protocol,
                "choices": self.config.resolved_choices(),
                "defaults": protocol_choices(self.config.protocol),
            },
            lora=self._lora_record(),
            **environment.environment(self.device),
            started=progress.started,
            finished=environment.timestamp(),
            command=self.command,
            inputs=self.inputs,
            verified={"files": self.verified, "seconds": round(self.verification_seconds, 6)},
            outputs=outputs,
            checkpoints=checkpoint_records,
            attempts=progress.attempts,
            epochs_run=progress.epoch,
            stop_reason=progress.stop_reason,
            superseded=progress.superseded,
            seconds_this_attempt=round(time.monotonic() - started_at, 3),
        )
        record.write(kept / layout.RUN_RECORD)  # the run is complete from here on
        checkpoints.clear_state(self.state_dir)
        cellfolder.publish(self.out_dir, [*record.output_names(), layout.RUN_RECORD])
        logger.info(
            "%s: complete after %d epochs (%s)",
            self.config.cell_id,
            progress.epoch,
            progress.stop_reason,
        )
        return record

    def _lora_record(self) -> dict[str, Any] | None:
        """Where the LoRa update acted and how many LoRa parameters it used (SPEC 4.3); None
        for a model without the LoRa branch."""
        if self.model.lora_rank is None:
            return None
        return {
            "rank": self.model.lora_rank,
            "lora_blocks": self.model.lora_blocks,
            "update_blocks": self.model.lora_update_blocks(),
            "parameters_created": count_lora_parameters(self.model),
            "parameters_used": count_used_lora_parameters(self.model),
        }

    def _inputs(self) -> list[dict[str, Any]]:
        """The run's input files with the sha256 of the bytes verified (not hashed again)."""
        if self.spec_file is not None:
            spec_entry = records.file_entry("spec", self.spec_file)
        else:
            text = json.dumps(self.spec, sort_keys=True)
            spec_entry = {
                "role": "spec",
                "path": None,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        scheme = self.config.split_scheme
        data_files = {item["file"]: item["sha256"] for item in self.dataset.verified}
        weights, weights_record = self.backbone_verified[:2]

        def entry(role: str, path: Path, sha256: str) -> dict[str, Any]:
            return {"role": role, "path": records.record_path(path), "sha256": sha256}

        return [
            spec_entry,
            entry("dataset", self.data_dir / layout.DATASET_METADATA, self.dataset.metadata_sha256),
            entry(
                "split_manifest",
                self.data_dir / layout.split_manifest(scheme),
                data_files[layout.split_manifest(scheme)],
            ),
            entry(
                "split_info",
                self.data_dir / layout.split_info(scheme),
                data_files[layout.split_info(scheme)],
            ),
            entry("weights", self.weights_path, weights["sha256"]),
            entry(
                "weights_record",
                layout.backbone_record(self.weights_path),
                weights_record["sha256"],
            ),
        ]

    # -- the whole run --

    def run(self) -> RunRecord:
        started_at = time.monotonic()
        with self.stop.installed():
            if not self.inputs:
                self.verify_inputs()
            self._build()
            resumed = self._restore()
            self._start_attempt(resumed)
            self.deferring_stop = self._wait_point_ahead()
            while self.progress.stop_reason is None:
                self._run_epoch(self.progress.epoch + 1)
                if self.stop and not self.deferring_stop and self.progress.stop_reason is None:
                    raise TrainingInterrupted(
                        f"received {self.stop.name}; state after epoch {self.progress.epoch} "
                        f"saved to {self.state_dir}; rerun the same command to resume"
                    )
            return self._finish(started_at)  # a signal now is ignored: finishing is quick

    def _start_attempt(self, resumed: bool) -> None:
        progress = self.progress
        resumed_at_batch = (progress.in_epoch or {}).get("next_batch")
        attempt = {
            "started": environment.timestamp(),
            "resumed_from_epoch": progress.epoch if resumed else None,
            "resumed_at_batch": resumed_at_batch,
            "host": environment.host(),
            "slurm": environment.slurm_context(),
            "runtime": self.config_dict["runtime"],
            "threads": environment.torch_threads(),
            "verification_seconds": round(self.verification_seconds, 6),
            "log": _relative_log(self.out_dir, self.log_path),
        }
        progress.attempts.append(attempt)
        if resumed:
            where = "" if resumed_at_batch is None else f" at batch {resumed_at_batch + 1}"
            logger.info("resuming %s after epoch %d%s", self.config.cell_id, progress.epoch, where)
            return
        progress.started = attempt["started"]
        progress.inputs = self.inputs
        progress.superseded = self.superseded
        if self.method.uses_lambda_pass:
            self._lambda_pass(0)
        self._commit()


HISTORY_LEADING = ("epoch", "lr", "lora_train_sa", "lambda1", "lambda2")
HISTORY_TRAILING = (
    "grad_similarity",
    "val_sa",
    "val_pgd10",
    "test_sa",
    "test_pgd10",
    "reloaded_best",
    "next_lr",
    "autolr",
    "seconds",
)


def history_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Fixed leading/trailing columns around the method's ``train_*`` metrics (sorted), so the
    file is the same whether the rows came from memory or from a resumed state."""
    present = {key for row in rows for key in row}
    middle = sorted(present - set(HISTORY_LEADING) - set(HISTORY_TRAILING))
    return [
        *(c for c in HISTORY_LEADING if c in present),
        *middle,
        *(c for c in HISTORY_TRAILING if c in present),
    ]


def write_history(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write history.csv atomically; returns its sha256."""
    columns = history_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return write_text(path, buffer.getvalue())


def _epoch_line(row: dict[str, Any]) -> str:
    def number(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.2f}"

    return (
        f"epoch {row['epoch']}: lr {row['lr']:.3g} loss {row.get('train_loss', float('nan')):.4f} "
        f"val SA {number('val_sa')} PGD-10 {number('val_pgd10')} | test SA {number('test_sa')} "
        f"PGD-10 {number('test_pgd10')} | {row['seconds']:.1f}s"
        + (" | reloaded best-val weights" if row.get("reloaded_best") else "")
    )


def _progress_bar(iterable, *, total: int, description: str):
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, file=sys.stderr)


def identity_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The configuration that defines a run's results: the resolved configuration less the
    ``runtime`` group (device, workers, fast paths: how it is computed; each attempt records its
    own) and the settings only the evaluation reads (``grid.EVALUATION_ONLY_KEYS``)."""
    dropped = (RUNTIME_KEY, *EVALUATION_ONLY_KEYS)
    return {key: value for key, value in config_dict.items() if key not in dropped}


def _settings(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"attack.eps": ...}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stale_reasons(
    recorded_config: dict[str, Any] | None,
    recorded_inputs: list[dict[str, Any]] | None,
    config_dict: dict[str, Any],
    inputs: list[dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """What makes kept work (its resolved configuration and recorded inputs) another run than the
    current one: the identity settings and the compared inputs that differ, each in words."""
    old = _settings(identity_config(recorded_config or {}))
    new = _settings(identity_config(config_dict))
    settings = [
        f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]
    recorded = {item.get("role"): item.get("sha256") for item in recorded_inputs or []}
    files = []
    for item in inputs:
        before = recorded.get(item["role"])
        if item["role"] in COMPARED_INPUTS and before != item["sha256"]:
            was = "not recorded" if before is None else before[:12]
            files.append(f"{item['role']} {item['path']}: sha256 {was} -> {item['sha256'][:12]}")
    return settings, files


def supersede_if_stale(
    out_dir: Path,
    what: str,
    kept: list[tuple[dict[str, Any] | None, list[dict[str, Any]] | None]],
    training: CellTraining,
    names: list[str],
) -> dict[str, Any] | None:
    """Move kept work (``names`` of the cell folder) to ``superseded/`` when any of the ``kept``
    (configuration, inputs) pairs (of a run record or the resume state) is another run than
    ``training``'s; returns the entry for the new run record, or None when it is the same run."""
    settings: list[str] = []
    files: list[str] = []
    for config, inputs in kept:
        changed = stale_reasons(config, inputs, training.config_dict, training.inputs)
        settings += [item for item in changed[0] if item not in settings]
        files += [item for item in changed[1] if item not in files]
    if not settings and not files:
        return None
    slug = "-and-".join(
        kind for kind, changed in (("identity", settings), ("inputs", files)) if changed
    )
    reason = "; ".join(settings + files)
    folder, moved = cellfolder.supersede(out_dir, names, f"{slug}-changed", reason)
    path = folder.relative_to(out_dir).as_posix()
    logger.warning(
        "%s: %s was computed with another identity or other inputs (%s): moved to %s; the cell "
        "trains from scratch",
        training.config.cell_id,
        what,
        reason,
        out_dir / path,
    )
    return {"path": path, "reason": reason, "moved": moved}


def _relative_log(out_dir: Path, log_path: Path | None) -> str | None:
    return None if log_path is None else str(log_path.relative_to(out_dir))


def _output_entry(role: str, declared: Path, sha256: str) -> dict[str, str]:
    """The record's entry of an output: its declared path (a link to, or copy of, the file kept
    in completed/) and the file's sha256."""
    return {"role": role, "path": records.record_path(declared), "sha256": sha256}


def check_dataset_name(dataset: PreparedDataset, config: CellConfig, data_dir: Path) -> None:
    """Refuse a prepared dataset that is not the cell's (its records would name the wrong data)."""
    if dataset.name != config.dataset:
        raise ConfigError(
            f"--data {data_dir} holds dataset {dataset.name!r}, but the cell is of "
            f"{config.dataset!r}: pass the prepared {config.dataset} dataset "
            f"({layout.prepared_dataset('resources', config.dataset)} in the workflow)"
        )


def read_run_record(out_dir: Path, folder: Path | None = None) -> RunRecord | None:
    """The sealed run record of a finished cell, from ``folder`` (default ``out_dir``; its
    ``completed/`` for the kept copy), or None when there is none: a damaged or edited one is a
    DataError."""
    path = (folder or out_dir) / layout.RUN_RECORD
    if not path.is_file():
        return None
    return RunRecord.read(
        path,
        f"delete {out_dir} and train the cell again (or restore the file from a backup)",
    )


def missing_and_changed_outputs(folder: Path, record: RunRecord) -> tuple[list[str], list[str]]:
    """The outputs a run record lists (checkpoints, history) that are missing from ``folder``,
    and those there that differ from their sha256."""
    missing, changed = [], []
    for entry in record.outputs or []:
        output = folder / Path(entry["path"]).name
        if not output.is_file():
            missing.append(output.name)
        elif sha256_file(output) != entry["sha256"]:
            changed.append(output.name)
    return missing, changed


def verify_run_outputs(out_dir: Path, record: RunRecord) -> None:
    """Check every output a run record lists against its sha256 (DataError naming the file)."""
    missing, changed = missing_and_changed_outputs(out_dir, record)
    if changed:
        raise DataError(
            f"{out_dir / changed[0]}: its sha256 differs from the one recorded in "
            f"{out_dir / layout.RUN_RECORD}: the file changed after training; "
            + _changed_output_fix(out_dir, changed[0], record)
        )
    if missing:
        raise DataError(
            f"{out_dir / missing[0]} is missing (listed in {out_dir / layout.RUN_RECORD}); delete {out_dir} "
            "and train the cell again"
        )


def _changed_output_fix(out_dir: Path, name: str, record: RunRecord) -> str:
    """What to do about a changed output: have it restored when the copy kept in ``completed/`` is
    another file that still matches; otherwise (a change in place reaches the kept copy through
    the hard link) train again."""
    output, kept = out_dir / name, out_dir / layout.COMPLETED_DIR / name
    [expected] = [e["sha256"] for e in record.outputs or [] if Path(e["path"]).name == name]
    if kept.is_file() and not os.path.samefile(kept, output) and sha256_file(kept) == expected:
        return f"delete it to have it restored from {kept} (which still matches its sha256)"
    why = "is the same file (a hard link)" if kept.is_file() else "is missing"
    if kept.is_file() and not os.path.samefile(kept, output):
        why = "changed too"
    return (
        f"its kept copy {kept} {why}, so it cannot be restored: delete {out_dir} (or move it "
        "away) and train the cell again"
    )


def _present(out_dir: Path, record: RunRecord) -> RunRecord:
    """``record`` with only the output entries whose files exist in ``out_dir``."""
    present = [e for e in record.outputs or [] if (out_dir / Path(e["path"]).name).is_file()]
    return dataclasses.replace(record, outputs=present)


def verify_kept_outputs(out_dir: Path, record: RunRecord) -> None:
    """Check every file of the finished run kept in ``completed/`` against its sha256."""
    kept = out_dir / layout.COMPLETED_DIR
    missing, changed = missing_and_changed_outputs(kept, record)
    if missing or changed:
        raise ChecksumError(
            f"{kept / (missing + changed)[0]} is missing or does not match its sha256 in "
            f"{kept / layout.RUN_RECORD}: the finished run cannot be restored; delete {out_dir} to train "
            "the cell again"
        )


def _finished_run_names(out_dir: Path, finished: list[RunRecord]) -> list[str]:
    """What belongs to a finished run in the cell folder: its outputs, its evaluations, a left-over
    state, and ``completed/`` last (the commit point)."""
    outputs = [name for record in finished for name in record.output_names()]
    evaluations = sorted(path.name for path in out_dir.glob(f"{layout.EVALUATION_PREFIX}*.json"))
    names = [
        layout.RUN_RECORD,
        layout.HISTORY,
        *outputs,
        *evaluations,
        layout.STATE_DIR,
        layout.COMPLETED_DIR,
    ]
    return list(dict.fromkeys(names))


def restore_completed_run(
    out_dir: Path, record: RunRecord, config: CellConfig, log_path: Path | None
) -> RunRecord:
    """Put the kept outputs of a finished run back in place, recording this attempt."""
    attempt = {
        "started": environment.timestamp(),
        "resumed_from_epoch": record.epochs_run,
        "resumed_at_batch": None,
        "host": environment.host(),
        "slurm": environment.slurm_context(),
        "runtime": config.to_dict()["runtime"],
        "log": _relative_log(out_dir, log_path),
        "restored_outputs": True,
    }
    record = dataclasses.replace(record, attempts=[*(record.attempts or []), attempt])
    record.write(out_dir / layout.COMPLETED_DIR / layout.RUN_RECORD)
    checkpoints.clear_state(
        out_dir / layout.STATE_DIR
    )  # left over if killed right after completing
    cellfolder.publish(out_dir, [*record.output_names(), layout.RUN_RECORD])
    logger.info(
        "%s: training had completed (%d epochs); its outputs are restored from %s",
        config.cell_id,
        record.epochs_run,
        out_dir / layout.COMPLETED_DIR,
    )
    return record


def train_cell(
    spec: dict[str, Any],
    *,
    data_dir: str | os.PathLike,
    weights: str | os.PathLike,
    out_dir: str | os.PathLike,
    runtime: dict[str, Any] | None = None,
    spec_file: str | os.PathLike | None = None,
    command: str | None = None,
    weights_lock: str | os.PathLike = DEFAULT_LOCK,
) -> TrainResult:
    """Train one cell into ``out_dir``: after verifying the inputs, resume its state or restore
    its completed run when they are of the same identity and inputs, supersede them otherwise.
    ``runtime`` replaces settings of the spec's runtime group. Raises TrainingInterrupted after a
    stop signal, NonFiniteLoss on a NaN/inf loss, CellBusy while another process trains the
    cell."""
    config = resolve_cell(spec).with_runtime(runtime)
    out_dir = Path(out_dir)
    with cellfolder.locked(out_dir), cellfolder.attempt_log(out_dir) as log_path:
        training = CellTraining(
            config,
            spec,
            data_dir=Path(data_dir),
            weights=Path(weights),
            out_dir=out_dir,
            spec_file=None if spec_file is None else Path(spec_file),
            command=command if command is not None else environment.command_line(),
            log_path=log_path,
            weights_lock=Path(weights_lock),
        )
        training.verify_inputs()
        kept = read_run_record(out_dir, out_dir / layout.COMPLETED_DIR)
        existing = read_run_record(out_dir)
        finished = [record for record in (kept, existing) if record is not None]
        names = _finished_run_names(out_dir, finished)
        moved = supersede_if_stale(
            out_dir,
            "the finished run",
            [(record.config, record.inputs) for record in finished],
            training,
            names,
        )
        if moved is not None:
            training.superseded.append(moved)
        elif existing is not None or kept is not None:
            return _reuse_finished_run(out_dir, config, existing, kept, log_path)
        state = checkpoints.read_state_info(out_dir / layout.STATE_DIR)
        if state is not None:
            names = [layout.HISTORY, layout.STATE_DIR]
            moved = supersede_if_stale(
                out_dir,
                "the resume state",
                [(state.get("config"), state.get("inputs"))],
                training,
                names,
            )
            if moved is not None:
                training.superseded.append(moved)
        with runtime_settings(config):
            record = training.run()
        return TrainResult("complete", record)


def _reuse_finished_run(
    out_dir: Path,
    config: CellConfig,
    existing: RunRecord | None,
    kept: RunRecord | None,
    log_path: Path | None,
) -> TrainResult:
    """The same run finished before: its outputs are in place (checked), or restored from
    ``completed/`` (checked first)."""
    missing = [] if existing is None else missing_and_changed_outputs(out_dir, existing)[0]
    if existing is not None and not missing:
        verify_run_outputs(out_dir, existing)  # a changed output is refused, never replaced
        checkpoints.clear_state(out_dir / layout.STATE_DIR)  # left over if killed after completing
        return TrainResult("already_complete", existing)
    if kept is None:
        verify_run_outputs(out_dir, existing)  # names the missing output
    verify_kept_outputs(out_dir, kept)
    if existing is not None:
        verify_run_outputs(out_dir, _present(out_dir, existing))
    return TrainResult("restored", restore_completed_run(out_dir, kept, config, log_path))
