"""Whether a fast path trains the same: one step's loss and gradients against plain fp32 eager
(``--check``), and short training runs of the tiny model, plain against fast, over seeds
(``--equivalence``). The runs take the training loop's step (``autolora.train.step``) and are
scored by ``autolora.accuracy``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autolora.accuracy import clean_and_pgd_accuracy
from autolora.bench.timing import (
    ATTACK_STEPS,
    EPS,
    STEP,
    BenchCase,
    bench_method,
    case_model,
    random_batch,
)
from autolora.fastpath import FastPaths, configure_backends, prepare_batch, prepare_model
from autolora.models import build_model
from autolora.train.step import TrainingStep

# ---- per-step agreement of a fast path (``--check``) --------------------------------------------


def check_fast_path(
    case: BenchCase, method_name: str, device: torch.device, paths: FastPaths, seed: int = 0
) -> dict[str, Any]:
    """Loss and gradients of one ``method_name`` step under ``paths`` against plain fp32 eager
    (same weights, batch and attack start), with the tolerance of ``autolora.fastpath``."""
    from autolora import fastpath

    method = bench_method(method_name, case.batch_size)
    torch.manual_seed(seed)
    model = case_model(case, **method.model_options()).to(device)
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
    method = bench_method(method_name, batch_size, attack_steps)
    torch.manual_seed(seed)
    model = build_model("tiny", num_classes, **method.model_options()).to(device)
    configure_backends(paths)
    optimizer = torch.optim.SGD(
        method.trainable_parameters(model), lr=lr, momentum=0.9, weight_decay=1e-4
    )
    step = TrainingStep(
        method, prepare_model(model, paths).train(), optimizer, paths=paths, device=device
    )
    order_generator = torch.Generator().manual_seed(seed)
    attack_generator = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(train_size, generator=order_generator).to(device)
        for start in range(0, train_size, batch_size):
            index = order[start : start + batch_size]
            step(prepare_batch(x_train[index], paths), y_train[index], generator=attack_generator)
    configure_backends(FastPaths())
    clean, robust, _ = clean_and_pgd_accuracy(
        model, [(x_test, y_test)], eps=EPS, step=STEP, steps=attack_steps
    )
    return RunAccuracy(paths.label(), method_name, seed, clean, robust)


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
