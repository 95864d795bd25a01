"""Running the steps of the GPU check within a time budget, each in its own process or inline.

``run_plan`` starts the steps in order while the total budget allows (a step is started only with
at least its ``min_s`` left, and given at most its ``budget_s``); a step that fails is recorded and
the next one runs. The executor runs one step:

- ``ProcessExecutor`` (the GPU run): a fresh ``python -m autolora.gpucheck.worker`` per step, in
  its own process group, killed at its time limit. A CUDA error poisons only that process, a hang
  costs only that step's budget, and a step that dies keeps the figures it had saved.
- ``InlineExecutor`` (the CPU dry run): the step function in this process (one torch import in
  all), with no time limit of its own.

Both give the step a ``StepContext`` and classify the outcome the same way. Torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autolora.gpucheck.plan import Step
from autolora.gpucheck.record import StepRecord

RESULT_FILE = "result.json"
LOG_FILE = "log.txt"
CONTEXT_FILE = "context.json"
KILL_GRACE_S = 10.0
RESERVE_S = 5.0  # kept for writing the outputs after the last step

PASSED, FAILED, ERROR, TIMEOUT, CRASHED, SKIPPED = (
    "passed",
    "failed",
    "error",
    "timeout",
    "crashed",
    "skipped",
)


@dataclass
class StepContext:
    """What a step function gets: its options, where to work, the device and its deadline."""

    name: str
    options: dict[str, Any]
    dry_run: bool
    device: str  # "cuda" on the GPU, "cpu" in the dry run (``--device`` overrides)
    repo: Path  # repository root (config/ files)
    work: Path  # this step's folder
    work_root: Path  # every step's folder (a step may read an earlier step's files)
    timeout_s: float
    threads: int | None = None
    started: float = field(default_factory=time.monotonic)
    record: StepRecord = field(default_factory=StepRecord)

    def seconds_left(self) -> float:
        return self.timeout_s - (time.monotonic() - self.started)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("record", "started"):
            data.pop(key)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], record: StepRecord) -> StepContext:
        paths = {k: Path(data[k]) for k in ("repo", "work", "work_root")}
        return cls(**{**data, **paths}, record=record)


@dataclass
class Outcome:
    name: str
    status: str
    seconds: float
    record: dict[str, Any]
    note: str = ""  # why skipped, the error, the signal...

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            **self.record,
        }


def classify(
    record: dict[str, Any] | None, *, returncode: int | None = 0, timed_out: bool = False
) -> tuple[str, str]:
    """(status, note) of a finished step from its record and how its process ended."""
    if timed_out:
        return TIMEOUT, "stopped at its time limit; the figures saved until then are kept"
    if record is None:
        return ERROR, f"ended (exit {returncode}) without writing its record"
    if record.get("error"):
        return ERROR, record["error"]
    if returncode is not None and returncode < 0:
        return CRASHED, f"killed by {signal.Signals(-returncode).name}"
    if returncode:
        return ERROR, f"exit status {returncode}"
    failed = [c["name"] for c in record.get("checks", []) if c["required"] and not c["ok"]]
    if failed:
        return FAILED, "out of tolerance: " + "; ".join(failed)
    return PASSED, ""


def resolve(target: str) -> Callable[[StepContext], None]:
    module, function = target.split(":")
    return getattr(importlib.import_module(f"autolora.gpucheck.{module}"), function)


def run_step(step_function: Callable[[StepContext], None], context: StepContext) -> bool:
    """Run a step function, recording an exception in its record; True when it returned."""
    try:
        step_function(context)
    except Exception as error:  # a failing step is a result, not the end of the run
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        trace = traceback.format_exc()
        print(trace, file=sys.stderr, flush=True)
        context.record.error(message, trace)
        return False
    return True


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a step's log while it runs)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging() -> None:
    """INFO logs of the package to the current stderr (the `autolora` verbs that steps call do
    not reconfigure logging once the root logger has a handler)."""
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


class ContextFactory:
    """Builds each step's context (and folder) for one run."""

    def __init__(
        self,
        *,
        dry_run: bool,
        repo: Path,
        work_root: Path,
        threads: int | None = None,
        device: str | None = None,
    ) -> None:
        self.dry_run, self.repo, self.work_root, self.threads = dry_run, repo, work_root, threads
        self.device = device or ("cpu" if dry_run else "cuda")

    def __call__(self, step: Step, timeout_s: float) -> StepContext:
        work = self.work_root / step.name
        work.mkdir(parents=True, exist_ok=True)
        return StepContext(
            name=step.name,
            options=step.options(self.dry_run),
            dry_run=self.dry_run,
            device=self.device,
            repo=self.repo,
            work=work,
            work_root=self.work_root,
            timeout_s=timeout_s,
            threads=self.threads,
        )


class InlineExecutor:
    """Runs each step in this process, its output going to the step's log."""

    def __init__(self, contexts: ContextFactory) -> None:
        self.contexts = contexts

    def __call__(self, step: Step, timeout_s: float) -> Outcome:
        context = self.contexts(step, timeout_s)
        context.record = StepRecord(context.work / RESULT_FILE)
        configure_logging()
        started = time.monotonic()
        with (
            open(context.work / LOG_FILE, "a") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            run_step(resolve(step.run), context)
        status, note = classify(context.record.data)
        return Outcome(step.name, status, time.monotonic() - started, context.record.data, note)


class ProcessExecutor:
    """Runs each step in a fresh worker process (own process group), killed at its limit."""

    def __init__(self, contexts: ContextFactory, python: str = sys.executable) -> None:
        self.contexts = contexts
        self.python = python

    def __call__(self, step: Step, timeout_s: float) -> Outcome:
        context = self.contexts(step, timeout_s)
        context_file = context.work / CONTEXT_FILE
        context_file.write_text(json.dumps({"run": step.run, **context.to_json()}))
        result = context.work / RESULT_FILE
        result.unlink(missing_ok=True)
        started = time.monotonic()
        with open(context.work / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [self.python, "-m", "autolora.gpucheck.worker", str(context_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: DataLoader workers die with it
                env={**os.environ, "AUTOLORA_GPU_CHECK_PARENT": str(os.getpid())},
            )
            timed_out = False
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop_group(process)
        record = _read_record(result)
        status, note = classify(record, returncode=process.returncode, timed_out=timed_out)
        return Outcome(step.name, status, time.monotonic() - started, record or {}, note)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group, SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def run_plan(
    steps: Sequence[Step],
    *,
    budget_s: float,
    execute: Callable[[Step, float], Outcome],
    clock: Callable[[], float] = time.monotonic,
    on_start: Callable[[Step, float], None] | None = None,
    on_outcome: Callable[[list[Outcome]], None] | None = None,
    reserve_s: float = RESERVE_S,
) -> list[Outcome]:
    """Run ``steps`` in order within ``budget_s`` seconds by ``clock``; one outcome per step."""
    started = clock()
    outcomes: list[Outcome] = []
    stop_reason = ""
    for step in steps:
        left = budget_s - (clock() - started) - reserve_s
        if stop_reason or left < step.min_s:
            note = stop_reason or (
                f"time budget: {max(left, 0):.0f} s left, the step needs {step.min_s:.0f} s"
            )
            outcomes.append(Outcome(step.name, SKIPPED, 0.0, {}, note))
        else:
            timeout_s = min(step.budget_s, left)
            if on_start:
                on_start(step, timeout_s)
            began = clock()
            outcome = execute(step, timeout_s)
            outcome.seconds = clock() - began
            outcomes.append(outcome)
            if step.essential and outcome.status in (ERROR, CRASHED, TIMEOUT):
                stop_reason = f"not run: step {step.name} did not complete"
        if on_outcome:
            on_outcome(outcomes)
    return outcomes


@contextlib.contextmanager
def environment_variables(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration; restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
