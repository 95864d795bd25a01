"""Steps that fail on purpose (``--inject-failure``), to show that a failing step is recorded
and the run goes on. They import no torch."""

from __future__ import annotations

import os
import signal
import threading

from autolora.gpucheck.runner import StepContext


def error(context: StepContext) -> None:
    context.record.figure("before_the_failure", 1)
    raise RuntimeError("injected failure (--inject-failure error)")


def crash(context: StepContext) -> None:
    context.record.figure("before_the_crash", 1)
    os.kill(os.getpid(), signal.SIGKILL)


def hang(context: StepContext) -> None:
    context.record.figure("pid", os.getpid())
    threading.Event().wait()  # until the runner stops the process at its time limit
