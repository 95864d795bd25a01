"""Steps that check the CUDA path computes what the CPU path computes.

- ``training_step_agreement``: one training step of each method (PGD with random start, the loss,
  backward) on the device and on the CPU from the same weights, batch and attack start (drawn by a
  CPU generator, which gives the same start on any device). Compared twice: in full fp32 (TF32
  off) against the fp32 tolerance of ``autolora.fastpath``, and in the device's default
  arithmetic (TF32 convolutions, what training uses) against the reduced-precision rule that
  bf16 is held to (relative to the deviation between two random attack starts).
- ``attacks_agreement``: PGD-10 (no random start) on the device vs the CPU, and a small standard
  AutoAttack run on the device.
- ``demo_cell``: ``autolora train`` and ``evaluate`` of one cell of config/demo.yaml on the
  device; the same training stopped by SIGTERM mid-epoch (exit 75) and resumed, compared with the
  uninterrupted run; and the cell trained with the fast paths and ``gpu_augment``.

In the CPU dry run "the device" is the CPU, so every comparison must come out exact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autolora.gpucheck.runner import StepContext, environment_variables
from autolora.planning import layout

SEED = 0
CHECKPOINTS = ("final", "best_val", "best_test")
PGD_IDENTICAL_PIXELS = 0.99  # informational: sign flips of near-zero input gradients move pixels


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls (restored after): IEEE fp32 on every device."""
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_verb(argv: list[str]) -> int:
    """An `autolora` verb in this process, as the command line runs it; its exit status."""
    from autolora.cli import main

    print(f"$ autolora {shlex.join(argv)}", flush=True)
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code if isinstance(stop.code, int) else 2


# ---- one training step, device vs CPU -----------------------------------------------------------


def _step(method, model, x, y, device, *, seed: int):
    """Loss and CPU-side gradients of one ``method`` step on ``device`` (attack start drawn by a
    CPU generator, so it is the same on every device)."""
    from autolora import fastpath

    loss, gradients = fastpath.step_loss_and_gradients(
        method, model, x.to(device), y.to(device), fastpath.FastPaths(), seed=seed,
        generator_device="cpu",
    )  # fmt: skip
    return loss, {name: g.cpu() for name, g in gradients.items()}


def _bench_case(context: StepContext):
    """The step's backbone and batch geometry (a bench case), the device and the CPU."""
    import torch

    from autolora import bench

    options = context.options
    case = bench.BenchCase(
        options["arch"], options["image_size"], options["batch_size"],
        options["input_upsample"], options["num_classes"],
    )  # fmt: skip
    return case, torch.device(context.device), torch.device("cpu")


def _seeded(case, device, **model_options: Any):
    """The case's model seeded by ``SEED`` (on the CPU), a copy on ``device``, and the CPU batch."""
    import torch

    from autolora import bench

    torch.manual_seed(SEED)
    model = bench.case_model(case, **model_options)
    x, y = bench.random_batch(case, torch.device("cpu"), SEED)
    return model, copy.deepcopy(model).to(device), x, y


def training_step_agreement(context: StepContext) -> None:
    from autolora import bench, fastpath

    options, record = context.options, context.record
    case, device, cpu = _bench_case(context)
    record.figure("case", case.label)
    fp32_tolerance = fastpath.tolerances(fastpath.FastPaths())
    worst = {"fp32_cosine": 1.0, "fp32_loss": 0.0, "default_cosine": 1.0}
    for name in options["methods"]:
        method = bench.bench_method(name, case.batch_size, options["attack_steps"])
        without_attack = bench.bench_method(name, case.batch_size, 0)
        model, on_device, x, y = _seeded(case, device, **method.model_options())
        with full_fp32():
            # the step without PGD (its random start only) is smooth in the weights and inputs:
            # only rounding can differ; PGD's sign steps can amplify rounding (a near-zero input
            # gradient that flips sign moves a pixel by a whole step), so both are shown
            smooth = fastpath.agreement(
                _step(without_attack, model, x, y, cpu, seed=SEED),
                _step(without_attack, on_device, x, y, device, seed=SEED),
            )
            reference = _step(method, model, x, y, cpu, seed=SEED)
            strict = _step(method, on_device, x, y, device, seed=SEED)
            other_start = _step(method, on_device, x, y, device, seed=SEED + 1)
        default = _step(method, on_device, x, y, device, seed=SEED)
        fp32 = fastpath.agreement(reference, strict)
        deviation = 1.0 - fastpath.agreement(strict, other_start)["grad_cosine"]
        reduced = fastpath.agreement(reference, default)
        reduced_tolerance = fastpath.tolerances(fastpath.FastPaths(bf16=True), deviation)
        record.figure(
            name,
            {
                "loss_cpu": reference[0],
                "loss_device_fp32": strict[0],
                "loss_device_default": default[0],
                "fp32": fp32,
                "fp32_without_attack": smooth,
                "default": reduced,
                "random_start_deviation": deviation,
                "tolerance_fp32": fp32_tolerance,
                "tolerance_default": reduced_tolerance,
            },
        )
        record.check(
            f"{name}: fp32 step without the attack on the device vs the CPU",
            fastpath.within_tolerance(smooth, fastpath.FastPaths()),
            value={"loss_rel_error": smooth["loss_rel_error"],
                   "grad_cosine": smooth["grad_cosine"]},
            limit=f"loss rel. error <= {fp32_tolerance['loss_rel_error']:g}, gradient cosine >= "
            f"{fp32_tolerance['grad_cosine']:g}",
        )  # fmt: skip
        record.check(
            f"{name}: fp32 step on the device vs the CPU",
            fastpath.within_tolerance(fp32, fastpath.FastPaths()),
            value={"loss_rel_error": fp32["loss_rel_error"], "grad_cosine": fp32["grad_cosine"]},
            limit=f"loss rel. error <= {fp32_tolerance['loss_rel_error']:g}, gradient cosine >= "
            f"{fp32_tolerance['grad_cosine']:g}",
        )
        record.check(
            f"{name}: default (TF32) step on the device vs the fp32 CPU step",
            reduced["loss_rel_error"] <= reduced_tolerance["loss_rel_error"]
            and reduced["grad_cosine"] >= reduced_tolerance["grad_cosine"],
            value={"loss_rel_error": reduced["loss_rel_error"],
                   "grad_cosine": reduced["grad_cosine"]},
            limit=f"loss rel. error <= {reduced_tolerance['loss_rel_error']:g}, gradient cosine "
            f">= {reduced_tolerance['grad_cosine']:.6f} (1 - max(0.05, 3 x another start's "
            f"{deviation:.2e}))",
        )  # fmt: skip
        worst["fp32_cosine"] = min(worst["fp32_cosine"], fp32["grad_cosine"])
        worst["fp32_loss"] = max(worst["fp32_loss"], fp32["loss_rel_error"])
        worst["default_cosine"] = min(worst["default_cosine"], reduced["grad_cosine"])
        record.line(
            f"{case.label} {name}: no attack cos {smooth['grad_cosine']:.7f}; "
            f"fp32 loss err {fp32['loss_rel_error']:.1e} cos "
            f"{fp32['grad_cosine']:.7f}; default loss err {reduced['loss_rel_error']:.1e} cos "
            f"{reduced['grad_cosine']:.5f} (another start: 1-cos {deviation:.1e})"
        )
    record.headline(
        f"{case.label}: fp32 max loss err {worst['fp32_loss']:.1e}, min grad cos "
        f"{worst['fp32_cosine']:.7f}; TF32 min cos {worst['default_cosine']:.5f}"
    )


# ---- attacks ------------------------------------------------------------------------------------


def attacks_agreement(context: StepContext) -> None:
    import time

    import torch

    from autolora import attacks, bench

    options, record = context.options, context.record
    case, device, cpu = _bench_case(context)
    model, on_device, x, _ = _seeded(case, device)
    model.eval()
    on_device.eval()
    with full_fp32(), torch.no_grad():
        y = model(x).argmax(1)  # every point starts correctly classified
    with full_fp32():
        adv_cpu = attacks.pgd(
            model, x, y, eps=bench.EPS, step=bench.STEP, steps=10, random_start=False
        )
        adv_device = attacks.pgd(
            on_device, x.to(device), y.to(device), eps=bench.EPS, step=bench.STEP, steps=10,
            random_start=False,
        ).cpu()  # fmt: skip
        with torch.no_grad():
            robust_cpu = float((model(adv_cpu).argmax(1) == y).float().mean()) * 100
            predicted = on_device(adv_device.to(device)).argmax(1).cpu()
            robust_device = float((predicted == y).float().mean()) * 100
    identical = float((adv_cpu == adv_device).float().mean())
    distance = float((adv_device - x).abs().max())
    record.figures(
        case=case.label,
        pgd10={
            "identical_pixel_fraction": identical,
            "max_abs_difference": float((adv_cpu - adv_device).abs().max()),
            "linf_distance_device": distance,
            "robust_accuracy_cpu": robust_cpu,
            "robust_accuracy_device": robust_device,
        },
    )
    in_box = 0 <= float(adv_device.min()) <= float(adv_device.max()) <= 1
    record.check(
        "PGD-10 on the device stays in the eps-ball and [0, 1]",
        distance <= bench.EPS + 1e-6 and in_box, value=distance, limit=f"<= {bench.EPS:.6f}",
    )  # fmt: skip
    record.check(
        "PGD-10 robust accuracy: device vs CPU",
        abs(robust_device - robust_cpu) <= 100 * 2 / case.batch_size,
        value=[robust_device, robust_cpu], limit="within 2 images",
    )  # fmt: skip
    record.check(
        "PGD-10 adversarial pixels identical on the device and the CPU",
        identical >= PGD_IDENTICAL_PIXELS, value=identical, limit=f">= {PGD_IDENTICAL_PIXELS}",
        required=False,
    )  # fmt: skip

    n = options["autoattack_n"]
    x_aa = x[:n].to(device)
    with torch.no_grad():
        y_aa = on_device(x_aa).argmax(1)
    started = time.perf_counter()
    result = attacks.autoattack_evaluation(
        on_device, x_aa, y_aa, eps=bench.EPS, device=device, batch_size=n, log=print
    )
    seconds = time.perf_counter() - started
    record.figure(
        "autoattack",
        {"n": result.n, "clean_accuracy": result.clean_accuracy, "seconds": seconds,
         "robust_accuracy": result.robust_accuracy, "progression": result.progression},
    )  # fmt: skip
    steps = [entry["robust_accuracy"] for entry in result.progression]
    record.check(
        "AutoAttack on the device: clean 100 % (labels = predictions), robust <= clean, "
        "progression non-increasing",
        result.clean_accuracy == 100.0
        and result.robust_accuracy <= result.clean_accuracy
        and all(a >= b for a, b in zip([100.0, *steps], steps, strict=False))
        and (not steps or steps[-1] == result.robust_accuracy),
        value={"clean": result.clean_accuracy, "robust": result.robust_accuracy},
    )
    record.headline(
        f"PGD-10: {identical:.2%} pixels identical, robust {robust_device:.1f} vs "
        f"{robust_cpu:.1f} %; AutoAttack n={n}: robust {result.robust_accuracy:.1f} % in "
        f"{seconds:.1f} s"
    )


# ---- a demo cell through `autolora train` / `evaluate` ------------------------------------------


def _demo_spec(context: StepContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cell of the config named by the options, on this step's device; and the config."""
    from autolora.planning.grid import expand_grid, load_config

    options = context.options
    config = load_config(context.repo / options["config"])
    cells = expand_grid(config).cells
    matches = [
        key
        for key, spec in cells.items()
        if spec["dataset"] == options["dataset"]
        and spec["method"] == options["method"]
        and spec["seed"] == options["seed"]
        and spec.get("variant") is None
    ]
    if not matches:
        raise RuntimeError(f"{options['config']} has no cell {options}")
    spec = copy.deepcopy(cells[matches[0]])
    runtime = dict(spec["overrides"].get("runtime") or {})
    spec["overrides"]["runtime"] = {**runtime, "device": context.device}
    return spec, config


def _inputs(context: StepContext, spec: dict, config: dict) -> tuple[Path, Path]:
    """The cell's synthetic dataset and pre-trained tiny backbone, made by the `autolora` verbs
    the workflow's rules run."""
    options = context.options
    dataset = {**config["datasets"][spec["dataset"]], **options["data"]}
    data = context.work / "data" / spec["dataset"]
    argv = ["data", "synthesize", "--out", str(data), "--name", spec["dataset"],
            "--num-classes", str(dataset["num_classes"]), "--train", str(dataset["train"]),
            "--test", str(dataset["test"]), "--image-size", str(dataset["image_size"]),
            "--seed", str(dataset["seed"])]  # fmt: skip
    if run_verb(argv) != 0:
        raise RuntimeError("autolora data synthesize failed (see the log)")
    pretrain = {**((config.get("weights") or {}).get("pretrain") or {}), **options["pretrain"]}
    weights = context.work / "weights" / f"{spec['arch']}-eps{spec['eps_pt']}.safetensors"
    argv = ["pretrain", "--arch", spec["arch"], "--eps", str(spec["eps_pt"]), "--out", str(weights)]
    for key, value in pretrain.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if run_verb(argv) != 0:
        raise RuntimeError("autolora pretrain failed (see the log)")
    return data, weights


def _compare_runs(out: Path, reference: Path) -> dict[str, Any]:
    """Bit-identity and largest difference of the checkpoints of two runs of one cell."""
    import torch
    from safetensors.torch import load_file

    identical, largest = True, 0.0
    for name in CHECKPOINTS:
        if not (reference / f"{name}.safetensors").is_file():
            continue
        ours = load_file(str(out / f"{name}.safetensors"))
        theirs = load_file(str(reference / f"{name}.safetensors"))
        if ours.keys() != theirs.keys():
            return {"identical": False, "max_abs_difference": math.inf, "detail": "keys differ"}
        for key, tensor in ours.items():
            if not torch.equal(tensor, theirs[key]):
                identical = False
                if tensor.is_floating_point():
                    difference = float((tensor.double() - theirs[key].double()).abs().max())
                    largest = max(largest, difference)
    history = [_history_without_time(path) for path in (out, reference)]
    return {
        "identical": identical,
        "max_abs_difference": largest,
        "history_identical": history[0] == history[1],
    }


def _history_without_time(run: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run / layout.HISTORY).read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    return [[row[i] for i in keep] for row in rows]


def demo_cell(context: StepContext) -> None:
    from autolora.checkpoints import read_state_info
    from autolora.train import (
        EXIT_INTERRUPTED,
        FAULT_SIGNAL_ENV,
        FAULT_SIGNAL_NAME_ENV,
    )

    options, record = context.options, context.record
    spec, config = _demo_spec(context)
    data, weights = _inputs(context, spec, config)
    spec_file = context.work / "spec.json"
    spec_file.write_text(json.dumps(spec, sort_keys=True))
    record.figures(cell=spec, device=context.device)

    def train(out: Path, spec_path: Path = spec_file) -> int:
        return run_verb(["train", "--spec", str(spec_path), "--data", str(data),
                         "--weights", str(weights), "--out", str(out)])  # fmt: skip

    no_faults = {FAULT_SIGNAL_ENV: None, FAULT_SIGNAL_NAME_ENV: None}
    reference, resumed = context.work / "reference", context.work / "resumed"
    with environment_variables(**no_faults):
        codes = {"uninterrupted": train(reference)}
    record.check("autolora train on the device completes", codes["uninterrupted"] == 0,
                 value=codes["uninterrupted"], limit="exit 0")  # fmt: skip

    epoch, batch = (int(part) for part in options["signal_at"].split(":"))
    with environment_variables(
        **{FAULT_SIGNAL_ENV: f"{epoch}:{batch}:once", FAULT_SIGNAL_NAME_ENV: "SIGTERM"}
    ):
        codes["sigterm"] = train(resumed)
    state = read_state_info(resumed / layout.STATE_DIR) or {}
    in_epoch = state.get("in_epoch") or {}
    record.figure("state_after_sigterm", {"epoch": state.get("epoch"), "in_epoch": in_epoch})
    record.check(
        f"SIGTERM after epoch {epoch} batch {batch}: exit {EXIT_INTERRUPTED}, state saved there",
        codes["sigterm"] == EXIT_INTERRUPTED and in_epoch.get("next_batch") == batch
        and in_epoch.get("epoch") == epoch,
        value={"exit": codes["sigterm"], "in_epoch": in_epoch},
    )  # fmt: skip
    with environment_variables(**no_faults):
        codes["resume"] = train(resumed)
    run = json.loads((resumed / layout.RUN_RECORD).read_text()) if codes["resume"] == 0 else {}
    attempts = run.get("attempts", [])
    record.check(
        "the rerun resumes mid-epoch and completes",
        codes["resume"] == 0 and len(attempts) == 2 and attempts[1]["resumed_at_batch"] == batch,
        value={"exit": codes["resume"], "attempts": len(attempts)},
    )
    if codes["uninterrupted"] == 0 and codes["resume"] == 0:
        comparison = _compare_runs(resumed, reference)
        record.figure("resume_vs_uninterrupted", comparison)
        record.check(
            "resumed run bit-identical to the uninterrupted one (promised on the CPU only)",
            comparison["identical"] and comparison["history_identical"],
            value=comparison["max_abs_difference"],
            required=context.device == "cpu",
        )

    evaluation = context.work / "eval-selected.json"
    argv = ["evaluate", "--run", str(resumed), "--data", str(data), "--checkpoint", "selected",
            "--out", str(evaluation)]  # fmt: skip
    codes["evaluate"] = run_verb(argv + ([] if options["autoattack"] else ["--no-autoattack"]))
    metrics = json.loads(evaluation.read_text()) if codes["evaluate"] == 0 else {}
    record.figure("evaluation", {k: metrics.get(k) for k in ("metrics", "n", "device")})
    record.check(
        "autolora evaluate on the device completes"
        + (" with AutoAttack" if options["autoattack"] else ""),
        codes["evaluate"] == 0
        and (not options["autoattack"] or metrics["metrics"]["AA"] is not None),
        value=codes["evaluate"],
    )

    fast_spec = copy.deepcopy(spec)
    fast_runtime = {**fast_spec["overrides"]["runtime"], **options["fast_runtime"]}
    fast_runtime["deterministic"] = False
    fast_spec["overrides"]["runtime"] = fast_runtime
    fast_file = context.work / "spec-fast.json"
    fast_file.write_text(json.dumps(fast_spec, sort_keys=True))
    with environment_variables(**no_faults):
        codes["fast_paths"] = train(context.work / "fast", fast_file)
    fast_history = _history_rows(context.work / "fast") if codes["fast_paths"] == 0 else []
    record.check(
        "training with " + "+".join(k for k, v in options["fast_runtime"].items() if v)
        + " completes with finite losses",
        codes["fast_paths"] == 0
        and all(math.isfinite(float(row["train_loss"])) for row in fast_history),
        value=codes["fast_paths"],
    )  # fmt: skip
    reference_history = _history_rows(reference) if codes["uninterrupted"] == 0 else []
    record.figures(
        exit_codes=codes,
        test_pgd10={
            "plain": [_number(r.get("test_pgd10")) for r in reference_history],
            "fast_paths": [_number(r.get("test_pgd10")) for r in fast_history],
        },
    )
    measured = metrics.get("metrics") or {}
    identical = (record.data["figures"].get("resume_vs_uninterrupted") or {}).get("identical")
    record.headline(
        f"exit {codes['uninterrupted']}/{codes['sigterm']}/{codes['resume']}/"
        f"{codes['evaluate']}/{codes['fast_paths']} (train/TERM/resume/eval/fast); resume "
        f"identical {identical}; SA {_fmt(measured.get('SA'))} PGD-10 "
        f"{_fmt(measured.get('PGD10'))} AA {_fmt(measured.get('AA'))}"
    )


def _history_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / layout.HISTORY, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
