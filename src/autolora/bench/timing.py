"""The timed calls of the bench (a standard step, each method's robust step, PGD-10 evaluation,
AutoAttack) on one backbone and input geometry, their FLOPs, and the step table.

The steps are ``autolora.train.step.TrainingStep``, the training loop's own: the bench times the
code that trains, on a resident batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from autolora import attacks
from autolora.errors import ConfigError
from autolora.fastpath import FastPaths, configure_backends, prepare_batch, prepare_model
from autolora.methods import Method, MethodSettings, StepResult, build_method
from autolora.models import build_model
from autolora.planning.protocol import protocol_choices
from autolora.planning.vocabulary import VANILLA
from autolora.train.step import TrainingStep

ATTACK_STEPS = 10
FORWARDS_PER_ATTACK_STEP = 2  # forward + input-gradient backward (no weight gradients)
FORWARDS_PER_TRAINING_PASS = 3  # forward + backward to inputs and weights
TRAINING_PASSES_PER_ROBUST_STEP = 2  # natural and adversarial forward/backward
INHERENT_ROBUST_MULTIPLE = (
    ATTACK_STEPS * FORWARDS_PER_ATTACK_STEP
    + TRAINING_PASSES_PER_ROBUST_STEP * FORWARDS_PER_TRAINING_PASS
) / FORWARDS_PER_TRAINING_PASS  # 26 / 3 = 8.67
OVERHEAD_TARGET = 1.15
EPS = 8 / 255
STEP = 2 / 255
ALL_ROBUST_EPS = 1e-7  # no prediction flips: every AutoAttack attack runs on every point
REFERENCE_METHOD = VANILLA  # the cost model's throughputs are vanilla RFT's
REFERENCE_ARCH = "resnet18"


@dataclass(frozen=True)
class BenchCase:
    """One backbone and input geometry. ``image_size`` is what the loader yields; the model
    upsamples to ``input_upsample`` when set (CIFAR's 32 -> 224 path)."""

    arch: str
    image_size: int
    batch_size: int
    input_upsample: int | None = None
    num_classes: int = 10

    @property
    def label(self) -> str:
        geometry = f"{self.image_size}px"
        if self.input_upsample:
            geometry += f"->{self.input_upsample}"
        return f"{self.arch} {geometry} b{self.batch_size}"


CPU_CASES = (BenchCase("tiny", 32, 16),)
GPU_CASES = (
    BenchCase("resnet18", 224, 128),
    BenchCase("resnet18", 32, 128, input_upsample=224),
    BenchCase("resnet50", 224, 128),
    BenchCase("resnet50", 32, 128, input_upsample=224),
)


@dataclass(frozen=True)
class StepTiming:
    """One timed training step. ``multiple_of_standard``: seconds / the standard step's seconds
    (same case and fast path); ``overhead_vs_inherent``: that multiple / 26/3;
    ``counted_multiple``: the step's counted FLOPs / the standard step's (checks the 26/3)."""

    case: str
    arch: str
    fast_path: str
    method: str
    images_per_s: float
    seconds_per_step: float
    flops_per_step: float
    multiple_of_standard: float | None
    overhead_vs_inherent: float | None
    counted_multiple: float | None

    @property
    def tflops(self) -> float:
        return self.flops_per_step / self.seconds_per_step / 1e12


# ---- timing primitives -------------------------------------------------------------------------


class Budget:
    """Seconds in which new measurements may start (``None``: no limit). ``skip(what)`` is true,
    and records ``what`` in ``skipped``, once the time is up; a measurement already running is
    never cut. ``clock`` is injectable for tests."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = None if seconds is None else clock() + seconds
        self.skipped: list[str] = []

    def skip(self, what: str) -> bool:
        if self.deadline is None or self.clock() < self.deadline:
            return False
        self.skipped.append(what)
        return True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class _FlopCount(TorchDispatchMode):
    """Sums torch's registered FLOP formulas (matmuls, convolutions and their backwards) over the
    operators that run inside it. ``FlopCounterMode`` does the same but its module tracker
    breaks ``torch.autograd.grad`` on a leaf input, which every PGD step calls."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward), from torch's
    FLOP formulas; run it on an eager (uncompiled) step."""
    with _FlopCount() as counter:
        fn()
    return int(counter.total)


def matmul_peak_tflops(device: torch.device, size: int | None = None, repeats: int = 10) -> float:
    """Measured dense matmul throughput: bf16 on a GPU (the tensor-core peak the fast path can
    reach), fp32 on the CPU."""
    on_gpu = device.type == "cuda"
    size = size or (8192 if on_gpu else 1024)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = seconds_per_call(lambda: a @ b, device, warmup=2, repeats=repeats if on_gpu else 3)
    return 2 * size**3 / seconds / 1e12


def random_batch(
    case: BenchCase, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(case.batch_size, 3, case.image_size, case.image_size, generator=generator)
    y = torch.randint(0, case.num_classes, (case.batch_size,), generator=generator)
    return x.to(device), y.to(device)


def case_model(case: BenchCase, **options: Any) -> torch.nn.Module:
    return build_model(case.arch, case.num_classes, input_upsample=case.input_upsample, **options)


def _optimizer(parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=1e-4, momentum=0.9, weight_decay=1e-4)


def bench_method(name: str, batch_size: int, attack_steps: int = ATTACK_STEPS) -> Method:
    """The method ``name`` with the bench's attack (ε 8/255, step 2/255), the ``paper``
    protocol's choices of where the LoRa update acts and where TWINS' γ applies (as the paper
    grid trains it), and fixed λ (0.5, 3.0) when it has a λ pass (the λ pass is no step's or fast
    path's business)."""
    paper = protocol_choices("paper")
    settings = MethodSettings(
        eps=EPS,
        step=STEP,
        attack_steps=attack_steps,
        kl_divisor=batch_size,
        lora_blocks=paper["lora_blocks"],
        twins_gamma_on=paper["twins_gamma_on"],
    )
    method = build_method(name, settings)
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)
    return method


class StandardTraining:
    """Cross-entropy on the clean batch: the standard step that robust steps are measured
    against, taken like a method's (``autolora.train.step.TrainingStep``)."""

    def model_options(self) -> dict[str, Any]:
        return {}

    def trainable_parameters(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        return model.parameters()

    def training_step(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator=None
    ) -> StepResult:
        return StepResult(F.cross_entropy(model(x), y))


# ---- the timed calls ---------------------------------------------------------------------------


def _timed_step(
    case: BenchCase, method: Method | StandardTraining, device: torch.device, paths: FastPaths
) -> Callable[[], None]:
    """One ``TrainingStep`` of ``method`` on a fresh model of ``case`` and its resident batch."""
    model = prepare_model(case_model(case, **method.model_options()).to(device), paths).train()
    optimizer = _optimizer(method.trainable_parameters(model))
    step = TrainingStep(method, model, optimizer, paths=paths, device=device)
    x, y = random_batch(case, device)
    x = prepare_batch(x, paths)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda: step(x, y, generator=generator)


def standard_step(case: BenchCase, device: torch.device, paths: FastPaths) -> Callable[[], None]:
    """One standard (non-robust) training step: CE forward, backward, SGD update."""
    return _timed_step(case, StandardTraining(), device, paths)


def robust_step(
    case: BenchCase, method_name: str, device: torch.device, paths: FastPaths
) -> Callable[[], None]:
    """One training step of ``method_name``: PGD-10 with random start, loss, backward, update."""
    return _timed_step(case, bench_method(method_name, case.batch_size), device, paths)


def pgd_evaluation(case: BenchCase, device: torch.device) -> Callable[[], None]:
    """The clean forward plus PGD-10 (no random start), fp32 eager, eval mode, as evaluation runs."""
    model = case_model(case).to(device).eval()
    x, y = random_batch(case, device)

    def evaluate() -> None:
        with torch.no_grad():
            model(x)
        attacks.pgd(model, x, y, eps=EPS, step=STEP, steps=ATTACK_STEPS, random_start=False)

    return evaluate


def autoattack_images_per_s(
    case: BenchCase, device: torch.device, n: int, *, all_robust: bool
) -> float:
    """Standard AutoAttack throughput on ``n`` random images of an untrained model.

    Labels are the model's predictions, so every point starts correctly classified. With
    ``all_robust`` the radius is 1e-7, so no point is ever broken and all four attacks run on
    every point: the slowest case (a robust model is faster, as broken points leave early).
    Otherwise the radius is 8/255 and APGD-CE breaks nearly every point: the fastest case.
    """
    model = case_model(case).to(device).eval()
    x, _ = random_batch(replace(case, batch_size=n), device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    eps = ALL_ROBUST_EPS if all_robust else EPS
    synchronize(device)
    start = time.perf_counter()
    attacks.autoattack_evaluation(
        model, x, y, eps=eps, device=device, batch_size=n, log=lambda _: None
    )
    synchronize(device)
    return n / (time.perf_counter() - start)


def time_training_steps(
    case: BenchCase,
    device: torch.device,
    paths: FastPaths,
    methods: Iterable[str],
    *,
    warmup: int,
    repeats: int,
    flops: Mapping[str, int] | None = None,
) -> list[StepTiming]:
    """The standard step, then each method's robust step, on one case and fast path. ``flops``
    (from ``step_flops``) avoids counting again for a second fast path."""
    methods = list(methods)
    configure_backends(paths)
    flops = dict(flops) if flops is not None else step_flops(case, device, methods)
    standard = seconds_per_call(standard_step(case, device, paths), device, warmup, repeats)
    rows = [step_timing(case, paths, "standard", standard, None, flops)]
    for method in methods:
        seconds = seconds_per_call(
            robust_step(case, method, device, paths), device, warmup, repeats
        )
        rows.append(step_timing(case, paths, method, seconds, standard, flops))
    return rows


def step_flops(case: BenchCase, device: torch.device, methods: Iterable[str]) -> dict[str, int]:
    """Counted FLOPs of one plain eager step: "standard" and each method."""
    plain = FastPaths()
    flops = {"standard": counted_flops(standard_step(case, device, plain))}
    for method in methods:
        flops[method] = counted_flops(robust_step(case, method, device, plain))
    return flops


def step_timing(
    case: BenchCase,
    paths: FastPaths,
    method: str,
    seconds: float,
    standard_seconds: float | None,
    flops: Mapping[str, int],
) -> StepTiming:
    """The table row of ``method``'s step on ``case`` under ``paths``: ``seconds`` per step,
    measured against the standard step's ``standard_seconds`` (None for the standard step) and
    the counted ``flops`` of ``step_flops``."""
    multiple = None if standard_seconds is None else seconds / standard_seconds
    return StepTiming(
        case=case.label,
        arch=case.arch,
        fast_path=paths.label(),
        method=method,
        images_per_s=case.batch_size / seconds,
        seconds_per_step=seconds,
        flops_per_step=float(flops[method]),
        multiple_of_standard=multiple,
        overhead_vs_inherent=None if multiple is None else multiple / INHERENT_ROBUST_MULTIPLE,
        counted_multiple=None if method == "standard" else flops[method] / flops["standard"],
    )


# ---- reporting ---------------------------------------------------------------------------------


def _optional(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_timings(rows: Iterable[StepTiming], peak_tflops: float) -> str:
    """The step table. ``x std`` is the measured multiple of the standard step, ``overhead`` that
    multiple / 26/3 (target <= 1.15), ``flop x`` the counted-FLOP multiple."""
    header = (
        f"{'case':<24} {'fast path':<40} {'method':<9} {'img/s':>9} {'x std':>7} "
        f"{'overhead':>8} {'flop x':>7} {'TFLOP/s':>9} {'% peak':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.case:<24} {row.fast_path:<40} {row.method:<9} {row.images_per_s:>9.1f} "
            f"{_optional(row.multiple_of_standard, '.2f'):>7} "
            f"{_optional(row.overhead_vs_inherent, '.2f'):>8} "
            f"{_optional(row.counted_multiple, '.2f'):>7} {row.tflops:>9.3g} "
            f"{100 * row.tflops / peak_tflops:>6.1f}%"
        )
    return "\n".join(lines)


def timings_as_dicts(rows: Iterable[StepTiming]) -> list[dict]:
    return [{**asdict(row), "tflops": row.tflops} for row in rows]


@dataclass(frozen=True)
class Speedup:
    case: str
    method: str
    fast_path: str
    speedup: float  # images/s of the fast path / images/s of plain fp32 eager


def fast_path_speedups(rows: Iterable[StepTiming]) -> list[Speedup]:
    """For each case and method timed under plain fp32 eager and another fast path: the ratio."""
    rows = list(rows)
    plain_label = FastPaths().label()
    plain = {(r.case, r.method): r for r in rows if r.fast_path == plain_label}
    return [
        Speedup(row.case, row.method, row.fast_path, row.images_per_s / base.images_per_s)
        for row in rows
        if row.fast_path != plain_label and (base := plain.get((row.case, row.method)))
    ]


def format_speedups(speedups: Iterable[Speedup]) -> list[str]:
    return [
        f"{s.case} {s.method}: {s.fast_path} is {s.speedup:.2f}x plain fp32 eager" for s in speedups
    ]


def targets_met(rows: Iterable[StepTiming], speedups: Iterable[Speedup]) -> list[str]:
    """The issue's two targets, one line per timed row: overhead <= 1.15, fast path >= 3x."""
    lines = []
    for row in rows:
        if row.overhead_vs_inherent is not None:
            verdict = "meets" if row.overhead_vs_inherent <= OVERHEAD_TARGET else "misses"
            lines.append(
                f"{row.case} {row.fast_path} {row.method}: overhead "
                f"{row.overhead_vs_inherent:.2f} {verdict} the <= {OVERHEAD_TARGET} target"
            )
    for s in speedups:
        verdict = "meets" if s.speedup >= 3.0 else "misses"
        lines.append(f"{s.case} {s.method}: speed-up {s.speedup:.2f}x {verdict} the >= 3x target")
    return lines
