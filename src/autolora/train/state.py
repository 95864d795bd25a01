"""The resume state of a run and the keeping of its checkpoints, out of the epoch loop (in the role
of timm's ``CheckpointSaver``).

The state is committed after every epoch (and at a batch boundary after a stop signal) into
``state/`` (``autolora.checkpoints``): model with LoRa and BN buffers, optimizer, AutoLR, λ, RNG
states, history, the best checkpoints' weights (written only when they improved) and, mid-epoch,
the position in the epoch and the PGD generator's state. A crash loses at most the running epoch;
the rerun continues from the last committed state, bit-identically on a deterministic CPU run.

Completion is durable and idempotent (``autolora.cellfolder``): the finished outputs are written
into ``completed/`` (its ``run.json`` last: the commit point), the resume state is then dropped,
and the outputs are put in place as hard links.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autolora import checkpoints
from autolora.errors import ConfigError
from autolora.files import as_json_data
from autolora.planning import layout
from autolora.records import RunRecord
from autolora.schedules import AutoLR
from autolora.train.history import write_history
from autolora.train.inputs import hashed_entry
from autolora.train.keeping import commit_completed_run, stale_reasons

# The best checkpoints and the history column that selects each.
CHECKPOINT_METRICS = {"best_val": "val_pgd10", "best_test": "test_pgd10"}


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


@dataclass
class Restored:
    """A committed state loaded back: the progress and, mid-epoch, the PGD generator's state."""

    progress: Progress
    generator_state: Tensor | None


class StateKeeper:
    """The resume state (``state/``) and the finished outputs (``completed/``) of one cell folder
    ``out_dir``, for a run of the resolved configuration ``config_dict`` on ``device``. It holds
    the best checkpoints' weights between commits."""

    def __init__(self, out_dir: Path, config_dict: dict[str, Any], device: torch.device) -> None:
        self.out_dir = out_dir
        self.state_dir = out_dir / layout.STATE_DIR
        self.config_dict = config_dict
        self.device = device
        self.best_weights: dict[str, dict[str, Tensor]] = {}
        self.best_dirty: set[str] = set()

    def note_best(
        self,
        progress: Progress,
        row: dict[str, Any],
        model_copy: Callable[[], dict[str, Tensor]],
    ) -> None:
        """Record the epoch of ``row`` as the best of each checkpoint whose metric improved (its
        weights copied once, shared when both improve at once)."""
        weights_now = None
        for name, metric in CHECKPOINT_METRICS.items():
            value = row[metric]
            if value is not None and (
                name not in progress.best or value > progress.best[name]["value"]
            ):
                progress.best[name] = {"epoch": row["epoch"], "value": value}
                weights_now = weights_now if weights_now is not None else model_copy()
                self.best_weights[name] = weights_now
                self.best_dirty.add(name)

    def _rng_tensors(self) -> dict[str, Tensor]:
        tensors = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def commit(
        self,
        progress: Progress,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        autolr: AutoLR | None,
        in_epoch: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        optimizer_tensors, optimizer_meta = checkpoints.optimizer_to_tensors(optimizer.state_dict())
        info = {
            "config": self.config_dict,
            "epoch": progress.epoch,
            "lr": progress.lr,
            "lambdas": list(progress.lambdas) if progress.lambdas else None,
            "lora_train_sa": progress.lora_train_sa,
            "autolr": autolr.state_dict() if autolr else None,
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
            "model": model.state_dict(),
            "optimizer": optimizer_tensors,
            "rng": self._rng_tensors(),
        }
        for name in CHECKPOINT_METRICS:
            tensors[name] = self.best_weights[name] if name in self.best_dirty else None
        if generator is not None:
            tensors["generator"] = {"state": generator.get_state()}
        checkpoints.save_state(self.state_dir, as_json_data(info), tensors)
        self.best_dirty.clear()

    def restore(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        autolr: AutoLR | None,
        inputs: list[dict[str, Any]],
    ) -> Restored | None:
        """Load the committed state into ``model``, ``optimizer``, ``autolr`` and the RNGs, if
        there is one (None otherwise); a state of another run (``inputs`` are this attempt's)
        is a ConfigError."""
        loaded = checkpoints.load_state(self.state_dir)
        if loaded is None:
            return None
        info, groups = loaded
        settings, files = stale_reasons(
            info["config"], info.get("inputs"), self.config_dict, inputs
        )
        stale = settings + files
        if stale:  # train_cell supersedes such a state before the run starts
            raise ConfigError(
                f"{self.state_dir} holds the resume state of another run ({'; '.join(stale)}): "
                f"rerun the same command to have it moved aside, or choose another --out"
            )
        model.load_state_dict(groups["model"])
        optimizer.load_state_dict(
            checkpoints.optimizer_from_tensors(groups["optimizer"], info["optimizer"])
        )
        torch.set_rng_state(groups["rng"]["torch"])
        if "cuda" in groups["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(groups["rng"]["cuda"], self.device)
        if autolr is not None:
            autolr.load_state_dict(info["autolr"])
        for name in CHECKPOINT_METRICS:
            if name in groups:
                self.best_weights[name] = {k: t.to(self.device) for k, t in groups[name].items()}
        progress = Progress(
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
        generator = groups["generator"]["state"] if info["in_epoch"] is not None else None
        return Restored(progress, generator)

    def keep_outputs(
        self,
        progress: Progress,
        model: nn.Module,
        weights_metadata: Callable[[str, int, str | None, float | None], dict[str, Any]],
    ) -> tuple[list[dict[str, str]], dict[str, dict[str, Any]]]:
        """Write the best and final checkpoints and the history into ``completed/``; returns the
        run record's ``outputs`` and ``checkpoints`` entries."""
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
            "weights": model.state_dict(),
            "epoch": progress.epoch,
            "metric": None,
            "value": None,
        }
        kept = self.out_dir / layout.COMPLETED_DIR
        checkpoint_records = {}
        outputs = []
        for name, entry in entries.items():
            file_name = layout.checkpoint_file(name)
            metadata = weights_metadata(name, entry["epoch"], entry["metric"], entry["value"])
            sha256 = checkpoints.save_weights(kept / file_name, entry["weights"], metadata)
            # the declared path: a link to (or copy of) the file kept in completed/
            output = hashed_entry(name, self.out_dir / file_name, sha256)
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
        outputs.append(hashed_entry("history", self.out_dir / layout.HISTORY, history_sha256))
        return outputs, checkpoint_records

    def complete(self, record: RunRecord) -> None:
        """Commit the finished run: its record into ``completed/`` (the commit point), the resume
        state dropped, the outputs put in place."""
        commit_completed_run(self.out_dir, record)
