"""Steps that measure speed: `autolora bench` runs, the grid projection from them, and the data
path (``autolora.data.gpu_augment``) against the training step's consumption.

The bench steps call the `autolora bench` verb itself (the step table, the fast-path checks, the
two targets, the projection, the calibrated ``cost:`` block; docs/performance.md) with a
``--budget-s`` that ends before the step's time limit, and copy the figures of its JSON into the
step's record, partial ones too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from autolora.files import read_json
from autolora.gpucheck.correctness import run_verb
from autolora.gpucheck.runner import StepContext

BENCH_JSON = "bench.json"
OVERHEAD_TARGET = 1.15
SPEEDUP_TARGET = 3.0
WAIT_FRACTION_LIMIT = 0.05  # the GPU "waits" when more than 5 % of a step's time is spent on data


# ---- `autolora bench` ---------------------------------------------------------------------------


def bench(context: StepContext) -> None:
    options, record = context.options, context.record
    json_path = context.work / BENCH_JSON
    args = list(options["args"])
    if "--device" in args:  # the run's device (``--device`` of the check may override it)
        args[args.index("--device") + 1] = context.device
    argv = ["bench", *args, "--json", str(json_path)]
    equivalence = "--equivalence" in argv
    if not equivalence:
        budget = max(0.0, context.seconds_left() - options["unit_margin_s"])
        argv += ["--budget-s", f"{budget:.0f}"]
    if context.threads:
        argv += ["--threads", str(context.threads)]
    failure = None
    try:
        code = run_verb(argv)
    except Exception as error:  # keep what the bench saved, then report the failure
        code, failure = None, error
    record.figure("exit_code", code)
    if json_path.is_file():
        data = read_json(json_path)
        (_record_equivalence if equivalence else _record_bench)(record, data)
    if failure is not None:
        raise failure
    if code == 2 or not json_path.is_file():
        raise RuntimeError(f"autolora bench exited {code} without results (see the log)")


def _record_bench(record, data: dict[str, Any]) -> None:
    rows, speedups = data["timings"], data["speedups"]
    record.figures(
        device=data["device"],
        torch=data["torch"],
        peak_tflops=data["peak_tflops"],
        complete=data["complete"],
        skipped=data["skipped"],
        timings=[
            {key: row[key] for key in ("case", "fast_path", "method", "images_per_s",
                                       "multiple_of_standard", "overhead_vs_inherent",
                                       "counted_multiple", "tflops")}
            for row in rows
        ],
        speedups=speedups,
        evaluation=data["evaluation"],
        projection=(data.get("projection") or {}).get("projections"),
    )  # fmt: skip
    for check in data["checks"]:
        limits = check["tolerance"]
        record.check(
            f"fast path {check['fast_path']}: {check['case']} {check['method']}",
            check["ok"],
            value={"loss_rel_error": check["loss_rel_error"], "grad_cosine": check["grad_cosine"]},
            limit=f"loss rel. error <= {limits['loss_rel_error']:g}, gradient cosine >= "
            f"{limits['grad_cosine']:.6f}",
        )
    met = {"overhead": [0, 0], "speedup": [0, 0]}
    for row in rows:
        overhead = row["overhead_vs_inherent"]
        if overhead is not None:
            ok = record.check(
                f"target overhead <= {OVERHEAD_TARGET}: {row['case']} {row['fast_path']} "
                f"{row['method']}",
                overhead <= OVERHEAD_TARGET, value=overhead, required=False,
            )  # fmt: skip
            met["overhead"][0] += ok
            met["overhead"][1] += 1
    for speedup in speedups:
        ok = record.check(
            f"target speed-up >= {SPEEDUP_TARGET:g}x: {speedup['case']} {speedup['method']} "
            f"{speedup['fast_path']}",
            speedup["speedup"] >= SPEEDUP_TARGET, value=speedup["speedup"], required=False,
        )  # fmt: skip
        met["speedup"][0] += ok
        met["speedup"][1] += 1
    record.check(
        "everything measured within the budget", data["complete"], value=data["skipped"],
        required=False,
    )  # fmt: skip
    for line in _target_lines(rows, speedups):
        record.line(line)
    checks_ok = sum(c["ok"] for c in data["checks"])
    record.headline(
        f"{len(rows)} step timings; fast-path checks {checks_ok}/{len(data['checks'])} ok; "
        f"targets met: overhead {met['overhead'][0]}/{met['overhead'][1]}, speed-up "
        f"{met['speedup'][0]}/{met['speedup'][1]}"
        + ("" if data["complete"] else f"; {len(data['skipped'])} parts skipped (budget)")
    )


def _target_lines(rows: list[dict], speedups: list[dict]) -> list[str]:
    """One line per case and method: the multiple of a standard step and its overhead for each
    fast path, and the fast variant's speed-up."""
    lines = []
    speedup = {(s["case"], s["method"]): s["speedup"] for s in speedups}
    for case in dict.fromkeys(r["case"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["case"] == case):
            parts = []
            for row in (r for r in rows if r["case"] == case and r["method"] == method):
                label = "plain" if row["fast_path"] == "plain fp32 eager" else "fast"
                if row["overhead_vs_inherent"] is None:
                    parts.append(f"{label} {row['images_per_s']:.0f} img/s")
                    continue
                verdict = "ok" if row["overhead_vs_inherent"] <= OVERHEAD_TARGET else "MISS"
                parts.append(
                    f"{label} {row['images_per_s']:.0f} img/s x std "
                    f"{row['multiple_of_standard']:.2f} overhead "
                    f"{row['overhead_vs_inherent']:.2f} {verdict}"
                )
            if (case, method) in speedup:
                value = speedup[(case, method)]
                parts.append(f"speed-up {value:.2f}x {'ok' if value >= SPEEDUP_TARGET else 'MISS'}")
            lines.append(f"{case} {method}: " + "; ".join(parts))
    return lines


def _record_equivalence(record, data: dict[str, Any]) -> None:
    record.figures(runs=data["runs"], summary=data["summary"])
    for entry in data["summary"]:
        for metric in ("clean_accuracy", "pgd_accuracy"):
            values = entry[metric]
            record.check(
                f"short runs {entry['method']} {entry['fast_path']} {metric}: within seed noise",
                values["within_seed_noise"], value=values["paired_difference"],
                limit="|paired difference| <= max(1 point, 2 standard errors)",
            )  # fmt: skip
            record.line(
                f"{entry['method']} {metric}: plain {values['plain'][0]:.2f} ± "
                f"{values['plain'][1]:.2f}, {entry['fast_path']} {values['fast'][0]:.2f} ± "
                f"{values['fast'][1]:.2f}, paired diff {values['paired_difference']:+.2f}"
            )
    inside = sum(
        e[m]["within_seed_noise"]
        for e in data["summary"]
        for m in ("clean_accuracy", "pgd_accuracy")
    )
    record.headline(
        f"{len(data['runs'])} short runs; {inside}/{2 * len(data['summary'])} accuracy "
        "differences within seed noise"
    )


# ---- the grid projection from both bench steps ---------------------------------------------------


def projection(context: StepContext) -> None:
    from autolora import bench as bench_module
    from autolora.bench import StepTiming

    options, record = context.options, context.record
    names = [f.name for f in dataclasses.fields(StepTiming)]
    rows: list[StepTiming] = []
    evaluation: list[dict] = []
    seen: set[tuple] = set()
    sources = []
    for step in options["from"]:
        path = context.work_root / step / BENCH_JSON
        if not path.is_file():
            continue
        data = read_json(path)
        sources.append(step)
        for timing in data["timings"]:
            key = (timing["case"], timing["fast_path"], timing["method"])
            if key not in seen:
                seen.add(key)
                rows.append(StepTiming(**{name: timing[name] for name in names}))
        cases = {entry["case"] for entry in evaluation}
        evaluation += [entry for entry in data["evaluation"] if entry["case"] not in cases]
    if not any(row.method == bench_module.REFERENCE_METHOD for row in rows):
        raise RuntimeError(
            f"no {bench_module.REFERENCE_METHOD} timings in the bench results of "
            f"{', '.join(options['from'])} to project the grid from"
        )
    config = context.repo / options["config"]
    result = bench_module.project_grid(config, rows, evaluation)
    print(result["summary"])
    record.figures(
        sources=sources,
        config=options["config"],
        configured_gpu_hours=result["configured_gpu_hours"],
        projections=result["projections"],
    )
    for entry in result["projections"]:
        record.line(
            f"{entry['fast_path']}: {_hours(entry['gpu_hours'])} GPU-hours for {entry['cells']} "
            f"cells (train {_hours(entry['train_gpu_hours'])}, evaluate "
            f"{_hours(entry['evaluate_gpu_hours'])}); longest cell "
            f"{entry['longest_train_min'] / 60:.1f} h"
        )
        for line in bench_module.format_cost_section(entry["cost"]).splitlines():
            record.line(f"  {line}")
    record.check(
        "every backbone of the grid measured",
        all(entry["unprojected_cells"] == 0 for entry in result["projections"]),
        value=sorted({a for e in result["projections"] for a in e["unmeasured_archs"]}),
        required=False,
    )
    record.headline(
        f"{result['projections'][0]['cells']} cells: "
        + "; ".join(f"{e['fast_path']} {_hours(e['gpu_hours'])} h" for e in result["projections"])
        + f" (config's cost: {_hours(result['configured_gpu_hours'])} h)"
    )


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# ---- the data path ------------------------------------------------------------------------------


def _dataset(context: StepContext, spec: dict[str, Any], batch_size: int, batches: int) -> Path:
    from autolora.data.synthetic import TRAIN_FRACTION, write_synthetic_dataset

    images = (batches + 1) * batch_size  # one batch more: the first one warms the workers up
    return write_synthetic_dataset(
        context.work / spec["name"],
        name=spec["name"],
        num_classes=10,
        train_size=math.ceil(images / TRAIN_FRACTION) + 1,
        test_size=1,
        image_size=spec["image_size"],
        seed=5,
        augmentation=spec["augmentation"],
        input_upsample=spec.get("input_upsample"),
    )


def _images_per_s(batches, device, count: int) -> tuple[float, list]:
    """Images per second of ``count`` batches after the first (worker start-up), and the first
    batch's (x, y)."""
    from autolora import bench

    iterator = iter(batches)
    first = next(iterator)
    bench.synchronize(device)
    started, images = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(iterator)
        images += x.shape[0]
    bench.synchronize(device)
    return images / (time.perf_counter() - started), first


def _wait_fraction(batches, step, count: int) -> float:
    """Share of the time the training step waits for the next batch: time spent in ``next``
    (the step itself synchronises once, on its loss) over the whole loop, first batch excluded."""
    iterator = iter(batches)
    next(iterator)
    step()
    waited, started = 0.0, time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - before
        step()
    return waited / (time.perf_counter() - started)


def data_path(context: StepContext) -> None:
    import torch

    from autolora import bench
    from autolora.accuracy import batches_on
    from autolora.data.gpu_augment import DeviceAugmenter, device_batches, make_device_loader
    from autolora.data.loaders import make_loader
    from autolora.data.prepared import PreparedDataset
    from autolora.data.transforms import TransformSpec
    from autolora.fastpath import FastPaths, configure_backends
    from autolora.planning.grid import load_config

    options, record = context.options, context.record
    device = torch.device(context.device)
    batch_size, count = options["batch_size"], options["batches"]
    workers = options["num_workers"]
    if workers is None:
        config = load_config(context.repo / options["config"])
        workers = int(((config.get("training") or {}).get("runtime") or {}).get("num_workers", 0))
    fast = FastPaths(**{flag: True for flag in options["fast"]})
    memory_format = torch.channels_last if fast.channels_last else None
    pin = device.type == "cuda"
    record.figures(num_workers=workers, batch_size=batch_size, batches=count)
    verdicts = []
    for spec in options["datasets"]:
        view = PreparedDataset.open(_dataset(context, spec, batch_size, count)).split(
            "paper", "train"
        )
        transform = TransformSpec.from_metadata(view.metadata)
        augmenter = DeviceAugmenter(transform)

        def device_loader(workers=workers, view=view, augmenter=augmenter):
            loader = make_device_loader(
                view, seed=0, epoch=0, batch_size=batch_size, num_workers=workers,
                pin_memory=pin,
            )  # fmt: skip
            return device_batches(loader, augmenter, device, memory_format)

        def cpu_loader(workers=workers, view=view):
            loader = make_loader(
                view, train=True, seed=0, epoch=0, batch_size=batch_size,
                num_workers=workers, pin_memory=pin,
            )  # fmt: skip
            return batches_on(loader, device, memory_format)

        x_cpu, _ = next(iter(cpu_loader(0)))
        x_device, _ = next(iter(device_loader(0)))
        levels = float((x_cpu - x_device).abs().mul(255).round().max())
        allowed = 0.0 if transform.augmentation == "pad_crop" else 1.0
        record.check(
            f"{spec['name']}: device augmentation vs the CPU transform ({transform.augmentation})",
            levels <= allowed, value=levels, limit=f"<= {allowed:g} levels of 255",
        )  # fmt: skip

        supply_device, _ = _images_per_s(device_loader(), device, count)
        supply_cpu, _ = _images_per_s(cpu_loader(), device, count)
        case = bench.BenchCase(
            options["arch"], transform.image_size, batch_size, spec.get("input_upsample")
        )
        demand = {}
        for paths in (FastPaths(), fast):
            configure_backends(paths)
            seconds = bench.seconds_per_call(
                bench.robust_step(case, "vanilla", device, paths),
                device,
                warmup=options["warmup"],
                repeats=options["repeats"],
            )
            demand[paths.label()] = batch_size / seconds
        waiting = _wait_fraction(
            device_loader(), bench.robust_step(case, "vanilla", device, fast), count
        )
        configure_backends(FastPaths())
        fastest = max(demand.values())
        figures = {
            "case": case.label,
            "augmentation": transform.augmentation,
            "supply_gpu_augment_images_per_s": supply_device,
            "supply_cpu_transform_images_per_s": supply_cpu,
            "demand_vanilla_images_per_s": demand,
            "headroom_gpu_augment": supply_device / fastest,
            "headroom_cpu_transform": supply_cpu / fastest,
            "wait_fraction_gpu_augment_fast": waiting,
        }
        record.figure(spec["name"], figures)
        record.check(
            f"{spec['name']}: the GPU does not wait for gpu_augment batches ({fast.label()})",
            waiting <= WAIT_FRACTION_LIMIT, value=waiting, limit=f"<= {WAIT_FRACTION_LIMIT}",
            required=False,
        )  # fmt: skip
        line = (
            f"{spec['name']} ({workers} workers, b{batch_size}): gpu_augment {supply_device:.0f} "
            f"img/s, CPU transform {supply_cpu:.0f} img/s; vanilla step consumes "
            + ", ".join(f"{v:.0f} ({k})" for k, v in demand.items())
            + f" img/s; waits {waiting:.1%} of the time with gpu_augment"
        )
        record.line(line)
        verdicts.append(
            f"{spec['name']} supply/demand {supply_device / fastest:.1f}x, waits {waiting:.0%}"
        )
    record.headline("; ".join(verdicts))
