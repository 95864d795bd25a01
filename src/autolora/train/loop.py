"""The epoch loop of one cell: training steps, the AutoLoRa λ pass, validation and test PGD-10,
the best checkpoints, the automated LR scheduler, gradient similarity and the stop signals.

Randomness: every stream is derived from the cell seed (``autolora.train.step.derive_seed``):
model init (head, LoRa A), the PGD random starts of each epoch (an explicit ``torch.Generator``),
the data order and augmentation (the loaders derive theirs from (seed, epoch, stream, position)),
the gradient similarity pass (its own stream, so it does not change training).

Signals (``autolora.train.interrupts``): at the next training batch boundary after SIGTERM /
SIGUSR1 the full mid-epoch state is committed (including the position in the epoch and the PGD
generator's state) and the run stops with exit code 75; a signal during validation is honoured at
the end of that epoch, after its state; one while the finished run's outputs are written is
ignored (the run completes, exit 0). The state itself is kept by ``autolora.train.state``.

Fast paths (``runtime.channels_last``, ``bf16``, ``compile``, ``cudnn_benchmark``) come from
``autolora.fastpath``: bf16 autocast wraps the training step only; evaluation stays fp32.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from autolora import environment
from autolora.accuracy import batches_on, clean_and_pgd_accuracy, lora_accuracy
from autolora.data.gpu_augment import DeviceAugmenter, device_batches, make_device_loader
from autolora.data.loaders import make_loader
from autolora.data.transforms import TransformSpec
from autolora.fastpath import FastPaths, prepare_model
from autolora.methods import Method, build_method, method_settings
from autolora.models import (
    build_model,
    count_lora_parameters,
    count_used_lora_parameters,
    load_backbone_state,
)
from autolora.planning import layout
from autolora.planning.protocol import protocol_choices
from autolora.records import RunRecord
from autolora.schedules import AutoLR, lambda_weights, multistep_lr
from autolora.train.history import epoch_line, write_history
from autolora.train.inputs import RunInputs
from autolora.train.interrupts import (
    FAULT_FAIL_ENV,
    FAULT_NAN_ENV,
    FAULT_SIGNAL_ENV,
    FAULT_WAIT_SIGNAL_ENV,
    FaultPoint,
    NonFiniteLoss,
    StopFlag,
    TrainingInterrupted,
    fault_signal_from_env,
)
from autolora.train.keeping import relative_log
from autolora.train.state import Progress, StateKeeper
from autolora.train.step import TrainingStep, derive_seed

logger = logging.getLogger(__name__)


class CellTraining:
    """One cell's training run; :meth:`run` does everything and returns the run record."""

    def __init__(
        self, sources: RunInputs, *, out_dir: Path, command: str, log_path: Path | None = None
    ) -> None:
        config = sources.config
        self.sources = sources
        self.config = config
        self.log_path = log_path
        self.spec = sources.spec
        self.out_dir = out_dir
        self.state_dir = out_dir / layout.STATE_DIR
        self.command = command
        self.config_dict = config.to_dict()
        self.device = environment.resolve_device(config.runtime.device)
        self.keeper = StateKeeper(out_dir, self.config_dict, self.device)
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
        self.superseded: list[dict[str, Any]] = []  # what this attempt moved aside
        self._resumed_generator_state: Tensor | None = None

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """This attempt's inputs, from the verified bytes (empty before :meth:`verify_inputs`)."""
        return self.sources.inputs

    def verify_inputs(self) -> list[dict[str, Any]]:
        """Check every input file against its record (nothing is trained yet); returns the run's
        inputs with the sha256 of the bytes read."""
        return self.sources.verify()

    def _build(self) -> None:
        config = self.config
        self.method: Method = build_method(config.method, method_settings(config))
        torch.manual_seed(derive_seed(config.seed, "init"))  # head and LoRa A init
        self.model = build_model(
            config.arch,
            int(self.sources.split_info["num_outputs"]),
            input_upsample=self.sources.dataset.metadata.get("input_upsample"),
            **self.method.model_options(),
        )
        load_backbone_state(self.model, self.sources.backbone_state)
        self.sources.backbone_state = None  # the model holds it now
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
        self.step = TrainingStep(
            self.method, self.model, self.optimizer, paths=self.fast_paths, device=self.device
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
        view = self.sources.views["train"]
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
        augmenter = DeviceAugmenter(TransformSpec.from_metadata(self.sources.dataset.metadata))
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
        train_size, batch_size = len(self.sources.views["train"]), self.config.batch_size
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
        batches = progress_bar(batches, total=iterations - start, description=f"epoch {epoch}")
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
            result = self.step.loss(x, y, generator=generator)
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
            self.step.update(loss)
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
        loader = self._batches(self.sources.views[split], train=False, epoch=0, stream="eval")
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
        self.keeper.note_best(progress, row, self._model_copy)
        row["reloaded_best"] = False
        if self.autolr is not None:
            decision = self.autolr.update(row["val_pgd10"])
            progress.lr = decision.lr
            if decision.reload_best:
                self.model.load_state_dict(self.keeper.best_weights["best_val"])
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
        logger.info(epoch_line(row))
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

    def _commit(self, *, in_epoch: dict[str, Any] | None = None, generator=None) -> None:
        self.keeper.commit(
            self.progress,
            model=self.model,
            optimizer=self.optimizer,
            autolr=self.autolr,
            in_epoch=in_epoch,
            generator=generator,
        )

    def _restore(self) -> bool:
        """Load the committed state, if any; True when there was one."""
        restored = self.keeper.restore(
            model=self.model, optimizer=self.optimizer, autolr=self.autolr, inputs=self.inputs
        )
        if restored is None:
            return False
        self.progress = restored.progress
        if self.progress.lambdas:
            self.method.set_lambdas(*self.progress.lambdas)
        self._resumed_generator_state = restored.generator_state
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
            "num_classes": int(self.sources.split_info["num_outputs"]),
        }

    def _finish(self, started_at: float) -> RunRecord:
        progress, sources = self.progress, self.sources
        outputs, checkpoint_records = self.keeper.keep_outputs(
            progress, self.model, self._weights_metadata
        )
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
            verified={
                "files": sources.verified,
                "seconds": round(sources.verification_seconds, 6),
            },
            outputs=outputs,
            checkpoints=checkpoint_records,
            attempts=progress.attempts,
            epochs_run=progress.epoch,
            stop_reason=progress.stop_reason,
            superseded=progress.superseded,
            seconds_this_attempt=round(time.monotonic() - started_at, 3),
        )
        self.keeper.complete(record)  # the run is complete from here on
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
            "verification_seconds": round(self.sources.verification_seconds, 6),
            "log": relative_log(self.out_dir, self.log_path),
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


def progress_bar(iterable, *, total: int, description: str):
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, file=sys.stderr)
