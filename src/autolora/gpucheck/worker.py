"""``python -m autolora.gpucheck.worker CONTEXT.json``: run one step of the GPU check in this
process (``autolora.gpucheck.runner.ProcessExecutor`` starts one per step).

Exit status 0 when the step function returned (its checks may still have failed: see its
record), 1 when it raised (the record holds the error and traceback).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from autolora.gpucheck.record import StepRecord
from autolora.gpucheck.runner import (
    RESULT_FILE,
    StepContext,
    configure_logging,
    resolve,
    run_step,
)

PR_SET_PDEATHSIG = 1
PARENT_PID_VARIABLE = "AUTOLORA_GPU_CHECK_PARENT"


def die_with_parent() -> None:
    """SIGKILL this worker (and so its DataLoader workers) when the runner dies: the worker has
    its own session, so a runner killed at the device tool's time limit would otherwise leave it
    running on the GPU. Best effort (Linux ``prctl``)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(PARENT_PID_VARIABLE)
    if expected and os.getppid() != int(expected):  # the runner died before prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m autolora.gpucheck.worker CONTEXT.json", file=sys.stderr)
        return 2
    die_with_parent()
    data = json.loads(Path(argv[0]).read_text())
    target = data.pop("run")
    record = StepRecord(Path(data["work"]) / RESULT_FILE)
    context = StepContext.from_json(data, record)
    configure_logging()
    if context.threads:
        import torch

        torch.set_num_threads(context.threads)
    return 0 if run_step(resolve(target), context) else 1


if __name__ == "__main__":
    sys.exit(main())
