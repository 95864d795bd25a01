"""``python -m autolora.gpucheck.worker CONTEXT.json``: run one step of the GPU check in this
process (``autolora.gpucheck.runner.ProcessExecutor`` starts one per step).

Exit status 0 when the step function returned (its checks may still have failed: see its
record), 1 when it raised (the record holds the error and traceback).
"""

from __future__ import annotations

import json
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m autolora.gpucheck.worker CONTEXT.json", file=sys.stderr)
        return 2
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
