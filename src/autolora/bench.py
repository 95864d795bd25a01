"""Throughput of the training step, PGD-10 evaluation and AutoAttack on the available device.

The arithmetic of a robust fine-tuning step is fixed by the method: ten attack steps (a forward
and an input-gradient backward each, about 2 forwards) plus two training forward/backward passes
(about 3 forwards each): 26 forward-equivalents against 3 for a standard training step. The bench
reports each robust step's time as a multiple of a standard step of the same backbone, input and
fast path in the same run, divided by that inherent multiple (the *overhead*: 1.0 is ideal, the
target is at most 1.15). docs/performance.md explains every column.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from autolora import attacks
from autolora.errors import ConfigError
from autolora.fastpath import (
    FastPaths,
    configure_backends,
    prepare_batch,
    prepare_model,
    training_autocast,
)
from autolora.methods import MethodSettings, build_method
from autolora.models import build_model
from autolora.planning.vocabulary import VANILLA

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


def _case_model(case: BenchCase, **options: Any) -> torch.nn.Module:
    return build_model(case.arch, case.num_classes, input_upsample=case.input_upsample, **options)


def _optimizer(parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=1e-4, momentum=0.9, weight_decay=1e-4)


# ---- the timed calls ---------------------------------------------------------------------------


def standard_step(case: BenchCase, device: torch.device, paths: FastPaths) -> Callable[[], None]:
    """One standard (non-robust) training step: CE forward, backward, SGD update."""
    model = prepare_model(_case_model(case).to(device), paths).train()
    optimizer = _optimizer(model.parameters())
    x, y = random_batch(case, device)
    x = prepare_batch(x, paths)

    def step() -> None:
        with training_autocast(paths, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def robust_step(
    case: BenchCase, method_name: str, device: torch.device, paths: FastPaths
) -> Callable[[], None]:
    """One training step of ``method_name``: PGD-10 with random start, loss, backward, update."""
    settings = MethodSettings(
        eps=EPS, step=STEP, attack_steps=ATTACK_STEPS, kl_divisor=case.batch_size
    )
    method = build_method(method_name, settings)
    model = prepare_model(_case_model(case, **method.model_options()).to(device), paths).train()
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)
    optimizer = _optimizer(method.trainable_parameters(model))
    x, y = random_batch(case, device)
    x = prepare_batch(x, paths)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        with training_autocast(paths, device):
            result = method.training_step(model, x, y, generator=generator)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def pgd_evaluation(case: BenchCase, device: torch.device) -> Callable[[], None]:
    """The clean forward plus PGD-10 (no random start), fp32 eager, eval mode, as evaluation runs."""
    model = _case_model(case).to(device).eval()
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
    model = _case_model(case).to(device).eval()
    x, _ = random_batch(BenchCase(case.arch, case.image_size, n, case.input_upsample), device)
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
    rows = [_timing(case, paths, "standard", standard, None, flops)]
    for method in methods:
        seconds = seconds_per_call(
            robust_step(case, method, device, paths), device, warmup, repeats
        )
        rows.append(_timing(case, paths, method, seconds, standard, flops))
    return rows


def step_flops(case: BenchCase, device: torch.device, methods: Iterable[str]) -> dict[str, int]:
    """Counted FLOPs of one plain eager step: "standard" and each method."""
    plain = FastPaths()
    flops = {"standard": counted_flops(standard_step(case, device, plain))}
    for method in methods:
        flops[method] = counted_flops(robust_step(case, method, device, plain))
    return flops


def _timing(
    case: BenchCase,
    paths: FastPaths,
    method: str,
    seconds: float,
    standard_seconds: float | None,
    flops: Mapping[str, int],
) -> StepTiming:
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


# ---- the grid projection (feeds autolora.planning.costmodel) -------------------------------------------


def _per_arch_throughput(
    entries: Iterable[tuple[str, float]],
) -> dict[str, float]:
    """images/s per arch from (arch, images/s) pairs: the mean seconds per image over the
    arch's cases (224 px and 32->224 cost about the same; the cost model has one figure)."""
    seconds: dict[str, list[float]] = {}
    for arch, images_per_s in entries:
        seconds.setdefault(arch, []).append(1.0 / images_per_s)
    return {arch: 1.0 / statistics.mean(values) for arch, values in seconds.items()}


def calibration(
    rows: Sequence[StepTiming], evaluation: Sequence[Mapping[str, Any]], fast_path: str
) -> dict[str, Any]:
    """The config's ``cost`` section measured on this device for one fast path.

    The cost model prices an image at ``backbone[arch] * method[m] / train_images_per_s``:
    ``train_images_per_s`` is vanilla RFT on the reference backbone (ResNet-18 when measured,
    else the first measured one), ``backbone`` the reference's vanilla throughput over each
    arch's, ``method`` vanilla's throughput over the method's (mean over the measured archs).
    """
    timed = [r for r in rows if r.fast_path == fast_path and r.method != "standard"]
    by_method: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in timed):
        by_method[method] = _per_arch_throughput(
            (r.arch, r.images_per_s) for r in timed if r.method == method
        )
    if REFERENCE_METHOD not in by_method:
        raise ConfigError(
            f"projecting a grid needs the reference method {REFERENCE_METHOD!r} among --methods "
            "(the cost model's throughputs are vanilla RFT's)"
        )
    vanilla = by_method[REFERENCE_METHOD]
    reference = REFERENCE_ARCH if REFERENCE_ARCH in vanilla else next(iter(vanilla))
    section: dict[str, Any] = {
        "train_images_per_s": vanilla[reference],
        "backbone": {arch: vanilla[reference] / value for arch, value in vanilla.items()},
        "method": {
            method: statistics.mean(vanilla[a] / value for a, value in per_arch.items())
            for method, per_arch in by_method.items()
        },
    }
    for key, field_name in (
        ("pgd10_images_per_s", "eval_images_per_s"),
        ("autoattack_images_per_s", "autoattack_images_per_s"),
    ):
        measured = _per_arch_throughput((e["arch"], e[key]) for e in evaluation if key in e)
        if reference in measured:
            section[field_name] = measured[reference]
    return section


def format_cost_section(section: Mapping[str, Any]) -> str:
    """YAML lines to paste into the config's ``cost`` section."""

    def number(value: float) -> str:
        return f"{value:.4g}"

    lines = ["cost:"]
    for key in ("train_images_per_s", "eval_images_per_s", "autoattack_images_per_s"):
        if key in section:
            lines.append(f"  {key}: {number(section[key])}")
    for key in ("backbone", "method"):
        table = ", ".join(f"{name}: {number(v)}" for name, v in section[key].items())
        lines.append(f"  {key}: {{{table}}}")
    return "\n".join(lines)


def project_grid(
    config_path: str | Path,
    rows: Sequence[StepTiming],
    evaluation: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """GPU-hours of the configured grid with the measured throughputs, per timed fast path.

    Reuses ``autolora.planning.costmodel.estimate`` with the config's ``cost`` section replaced by the
    measurement (``calibration``). Only cells whose backbone was benchmarked are projected;
    the others are counted in ``unprojected_cells``.
    """
    from autolora.planning.costmodel import estimate
    from autolora.planning.grid import expand_grid, load_config

    config = load_config(config_path)
    grid = expand_grid(config)
    n = (config.get("evaluation") or {}).get("n")
    autoattack_cells = grid.autoattack_cells(config)
    configured = estimate(grid.cells, config, n, autoattack_cells=autoattack_cells)
    lines = [
        f"projected GPU-hours of {config_path} ({len(grid.cells)} cells; the config's cost "
        f"section gives {configured.gpu_hours:.1f} h):"
    ]
    projections = []
    for fast_path in dict.fromkeys(r.fast_path for r in rows):
        section = calibration(rows, evaluation, fast_path)
        cells = {k: s for k, s in grid.cells.items() if s["arch"] in section["backbone"]}
        configured_cost = dict(config.get("cost") or {})
        cost = {
            **configured_cost,
            **section,
            "method": {**(configured_cost.get("method") or {}), **section["method"]},
        }
        projected = estimate(cells, {**config, "cost": cost}, n, autoattack_cells=autoattack_cells)
        skipped = sorted({s["arch"] for s in grid.cells.values()} - set(section["backbone"]))
        projections.append(
            {
                "fast_path": fast_path,
                "cost": section,
                "cells": projected.cells,
                "unprojected_cells": len(grid.cells) - len(cells),
                "unmeasured_archs": skipped,
                "train_gpu_hours": projected.train_gpu_hours,
                "evaluate_gpu_hours": projected.evaluate_gpu_hours,
                "gpu_hours": projected.gpu_hours,
                "longest_train_min": projected.longest_train_min,
            }
        )
        lines.append(
            f"  {fast_path}: {projected.gpu_hours:.1f} h (train {projected.train_gpu_hours:.1f}, "
            f"evaluate {projected.evaluate_gpu_hours:.1f}) for {projected.cells} cells; "
            f"longest cell {projected.longest_train_min / 60:.1f} h"
            + (
                f"; {len(grid.cells) - len(cells)} cells of unbenchmarked backbones "
                f"({', '.join(skipped)}) not projected"
                if skipped
                else ""
            )
        )
        lines.append(f"  calibration for {fast_path} (paste into {config_path}):")
        lines.extend("    " + line for line in format_cost_section(section).splitlines())
    lines.append(
        "  (steps on a resident batch: data loading not included; AutoAttack as measured, see "
        "docs/performance.md)"
    )
    return {
        "summary": "\n".join(lines),
        "configured_gpu_hours": configured.gpu_hours,
        "projections": projections,
    }


# ---- per-step agreement of a fast path (``--check``) --------------------------------------------


def check_fast_path(
    case: BenchCase, method_name: str, device: torch.device, paths: FastPaths, seed: int = 0
) -> dict[str, Any]:
    """Loss and gradients of one ``method_name`` step under ``paths`` against plain fp32 eager
    (same weights, batch and attack start), with the tolerance of ``autolora.fastpath``."""
    from autolora import fastpath

    settings = MethodSettings(
        eps=EPS, step=STEP, attack_steps=ATTACK_STEPS, kl_divisor=case.batch_size
    )
    method = build_method(method_name, settings)
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)
    torch.manual_seed(seed)
    model = _case_model(case, **method.model_options()).to(device)
    x, y = random_batch(case, device, seed)
    plain = fastpath.step_loss_and_gradients(method, model, x, y, FastPaths(), seed=seed)
    measured = fastpath.agreement(
        plain, fastpath.step_loss_and_gradients(method, model, x, y, paths, seed=seed)
    )
    deviation = None
    if paths.bf16:
        other_start = fastpath.step_loss_and_gradients(
            method, model, x, y, FastPaths(), seed=seed + 1
        )
        deviation = 1.0 - fastpath.agreement(plain, other_start)["grad_cosine"]
    return {
        "case": case.label,
        "method": method_name,
        "fast_path": paths.label(),
        **measured,
        "random_start_deviation": deviation,
        "tolerance": fastpath.tolerances(paths, deviation),
        "ok": fastpath.within_tolerance(measured, paths, deviation),
    }


def format_check(result: Mapping[str, Any]) -> str:
    limits = result["tolerance"]
    return (
        f"{result['case']} {result['method']} {result['fast_path']}: loss rel. error "
        f"{result['loss_rel_error']:.2e} (<= {limits['loss_rel_error']:.0e}), gradient cosine "
        f"{result['grad_cosine']:.6f} (>= {limits['grad_cosine']:.6f}) "
        + ("ok" if result["ok"] else "OUT OF TOLERANCE")
    )


# ---- equivalence of a short training run -------------------------------------------------------


@dataclass(frozen=True)
class RunAccuracy:
    fast_path: str
    method: str
    seed: int
    clean_accuracy: float  # percent
    pgd_accuracy: float  # percent, PGD-10 (attack_steps), no random start, fp32 eager


def short_run(
    method_name: str,
    paths: FastPaths,
    seed: int,
    *,
    epochs: int,
    train_size: int,
    test_size: int,
    image_size: int = 32,
    num_classes: int = 4,
    batch_size: int = 32,
    attack_steps: int = ATTACK_STEPS,
    lr: float = 0.05,
    device: torch.device | None = None,
) -> RunAccuracy:
    """Train the tiny model from ``seed`` on synthetic data with ``paths`` and evaluate it in
    fp32 eager. Everything random (init, order, attack starts) depends on ``seed`` only, so a
    plain and a fast run of one seed differ only by the fast path's arithmetic."""
    from autolora.data.synthetic import generate_synthetic_arrays

    device = device or torch.device("cpu")

    def tensors(count: int, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = generate_synthetic_arrays(
            num_classes=num_classes, count=count, image_size=image_size, seed=100, part=part
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        return x.to(device), torch.from_numpy(labels).to(device)

    x_train, y_train = tensors(train_size, "train")
    x_test, y_test = tensors(test_size, "test")
    settings = MethodSettings(eps=EPS, step=STEP, attack_steps=attack_steps, kl_divisor=batch_size)
    method = build_method(method_name, settings)
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)  # the λ pass is no fast path's business
    torch.manual_seed(seed)
    model = build_model("tiny", num_classes, **method.model_options()).to(device)
    configure_backends(paths)
    step_model = prepare_model(model, paths).train()
    optimizer = torch.optim.SGD(
        method.trainable_parameters(model), lr=lr, momentum=0.9, weight_decay=1e-4
    )
    order_generator = torch.Generator().manual_seed(seed)
    attack_generator = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(train_size, generator=order_generator).to(device)
        for start in range(0, train_size, batch_size):
            index = order[start : start + batch_size]
            x = prepare_batch(x_train[index], paths)
            with training_autocast(paths, device):
                result = method.training_step(
                    step_model, x, y_train[index], generator=attack_generator
                )
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
    configure_backends(FastPaths())
    model.eval()
    with torch.no_grad():
        clean = (model(x_test).argmax(1) == y_test).float().mean().item()
    x_adv = attacks.pgd(
        model, x_test, y_test, eps=EPS, step=STEP, steps=attack_steps, random_start=False
    )
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y_test).float().mean().item()
    return RunAccuracy(paths.label(), method_name, seed, 100 * clean, 100 * robust)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def equivalence_summary(runs: Sequence[RunAccuracy]) -> list[dict[str, Any]]:
    """Per method and non-plain fast path: mean ± std over seeds of both accuracies, the mean
    paired difference (fast - plain, same seed) and whether |difference| is within seed noise
    (at most twice the standard error of a difference of two means, or 1 point)."""
    plain_label = FastPaths().label()
    plain = {(r.method, r.seed): r for r in runs if r.fast_path == plain_label}
    summary = []
    for method in dict.fromkeys(r.method for r in runs):
        for fast_path in dict.fromkeys(r.fast_path for r in runs if r.method == method):
            if fast_path == plain_label:
                continue
            fast = [r for r in runs if r.method == method and r.fast_path == fast_path]
            paired = [(plain[(method, r.seed)], r) for r in fast if (method, r.seed) in plain]
            entry: dict[str, Any] = {"method": method, "fast_path": fast_path, "seeds": len(paired)}
            for metric in ("clean_accuracy", "pgd_accuracy"):
                base = [getattr(p, metric) for p, _ in paired]
                other = [getattr(f, metric) for _, f in paired]
                (base_mean, base_std), (other_mean, other_std) = _mean_std(base), _mean_std(other)
                difference = statistics.mean(o - b for b, o in zip(base, other, strict=True))
                noise = 2 * math.sqrt((base_std**2 + other_std**2) / max(1, len(paired)))
                entry[metric] = {
                    "plain": [base_mean, base_std],
                    "fast": [other_mean, other_std],
                    "paired_difference": difference,
                    "within_seed_noise": abs(difference) <= max(noise, 1.0),
                }
            summary.append(entry)
    return summary


def format_equivalence(summary: Iterable[Mapping[str, Any]]) -> str:
    lines = []
    for entry in summary:
        for metric, name in (("clean_accuracy", "clean"), ("pgd_accuracy", "PGD-10")):
            m = entry[metric]
            lines.append(
                f"{entry['method']:<9} {name:<7} plain {m['plain'][0]:6.2f} ± {m['plain'][1]:5.2f}"
                f"  {entry['fast_path']} {m['fast'][0]:6.2f} ± {m['fast'][1]:5.2f}"
                f"  paired diff {m['paired_difference']:+.2f}"
                f"  ({'within' if m['within_seed_noise'] else 'OUTSIDE'} seed noise, "
                f"{entry['seeds']} seeds)"
            )
    return "\n".join(lines)
