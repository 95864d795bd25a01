"""Stop signals, exit codes and the fault points of a training run.

SIGTERM / SIGUSR1 (what SLURM sends before a time limit) set a flag (:class:`StopFlag`); the loop
commits its state at the next batch boundary and stops with :class:`TrainingInterrupted` (exit
code 75, EX_TEMPFAIL: rerun the same command to resume). A non-finite loss stops the run with
:class:`NonFiniteLoss` (exit code 3).

Fault injection, for tests of the loop and of the workflow: ``AUTOLORA_FAULT_NAN_AT=E:B`` makes
the loss of epoch E, batch B (both 1-based) NaN; ``AUTOLORA_FAULT_FAIL_AT=E:B`` raises
RuntimeError there; ``AUTOLORA_FAULT_SIGNAL_AT=E:B`` sends the process SIGUSR1 after that
batch's step (a deterministic stand-in for SLURM's signal; ``AUTOLORA_FAULT_SIGNAL=SIGTERM`` sends
SIGTERM instead); ``AUTOLORA_FAULT_WAIT_SIGNAL_AT=E:B`` blocks after that batch's step until a
stop signal arrives (a job that is still running when the scheduler's signal comes, however fast
or slow the machine: a signal that comes earlier is held until that point), and ``E:end`` blocks
after epoch E's state is committed. A third field ``:once`` fires only in a run's first attempt
(not on resume).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from autolora.errors import ConfigError

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


class TrainingInterrupted(Exception):
    """A stop signal arrived; the state was committed. Exit with EXIT_INTERRUPTED."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite. Exit with EXIT_NON_FINITE."""


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
