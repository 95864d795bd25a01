"""Throughput of the training step, PGD-10 evaluation and AutoAttack on the available device
(``autolora bench``), split by job: ``timing`` (the timed calls and the step table),
``calibration`` (the config's ``cost`` section measured here and the grid projected with it) and
``equivalence`` (a fast path's step and short runs against plain fp32 eager).

The arithmetic of a robust fine-tuning step is fixed by the method: ten attack steps (a forward
and an input-gradient backward each, about 2 forwards) plus two training forward/backward passes
(about 3 forwards each): 26 forward-equivalents against 3 for a standard training step. The bench
reports each robust step's time as a multiple of a standard step of the same backbone, input and
fast path in the same run, divided by that inherent multiple (the *overhead*: 1.0 is ideal, the
target is at most 1.15). docs/performance.md explains every column.

The bench trains with the training loop's own step (``autolora.train.step.TrainingStep``) and
scores with ``autolora.accuracy``: it has no training loop or accuracy count of its own.
"""

from __future__ import annotations

from autolora.bench.calibration import calibration, format_cost_section, project_grid
from autolora.bench.equivalence import (
    RunAccuracy,
    check_fast_path,
    equivalence_summary,
    format_check,
    format_equivalence,
    short_run,
)
from autolora.bench.timing import (
    ALL_ROBUST_EPS,
    ATTACK_STEPS,
    CPU_CASES,
    EPS,
    GPU_CASES,
    INHERENT_ROBUST_MULTIPLE,
    OVERHEAD_TARGET,
    REFERENCE_ARCH,
    REFERENCE_METHOD,
    STEP,
    BenchCase,
    Budget,
    Speedup,
    StepTiming,
    autoattack_images_per_s,
    bench_method,
    case_model,
    counted_flops,
    fast_path_speedups,
    format_speedups,
    format_timings,
    matmul_peak_tflops,
    pgd_evaluation,
    random_batch,
    robust_step,
    seconds_per_call,
    standard_step,
    step_flops,
    step_timing,
    synchronize,
    targets_met,
    time_training_steps,
    timings_as_dicts,
)
from autolora.fastpath import FastPaths, configure_backends

__all__ = [
    "ALL_ROBUST_EPS",
    "ATTACK_STEPS",
    "CPU_CASES",
    "EPS",
    "GPU_CASES",
    "INHERENT_ROBUST_MULTIPLE",
    "OVERHEAD_TARGET",
    "REFERENCE_ARCH",
    "REFERENCE_METHOD",
    "STEP",
    "BenchCase",
    "Budget",
    "FastPaths",
    "RunAccuracy",
    "Speedup",
    "StepTiming",
    "autoattack_images_per_s",
    "bench_method",
    "calibration",
    "case_model",
    "check_fast_path",
    "configure_backends",
    "counted_flops",
    "equivalence_summary",
    "fast_path_speedups",
    "format_check",
    "format_cost_section",
    "format_equivalence",
    "format_speedups",
    "format_timings",
    "matmul_peak_tflops",
    "pgd_evaluation",
    "project_grid",
    "random_batch",
    "robust_step",
    "seconds_per_call",
    "short_run",
    "standard_step",
    "step_flops",
    "step_timing",
    "synchronize",
    "targets_met",
    "time_training_steps",
    "timings_as_dicts",
]
