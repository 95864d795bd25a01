"""Step ``environment``: what the figures were measured on, and whether the device computes.

Records the device (name, compute capability, memory, multiprocessors), the driver (from
``nvidia-smi``, read only), Python, torch, CUDA, cuDNN, the TF32 switches, the packages the
other steps need and the code version; checks a matmul on the device against float64 on the CPU
and times the dense matmul peak that the bench's ``% peak`` column uses. Raises when the device
cannot be used at all, so that the runner skips the steps that need it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

from autolora.gpucheck.runner import StepContext

NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm")
MATMUL_RTOL = 1e-5  # fp32 against float64; TF32 would give ~1e-3
PACKAGES = ("torch", "torchvision", "numpy", "safetensors", "pyyaml", "pyautoattack")


def nvidia_smi() -> dict[str, str] | None:
    """The first GPU's name, driver and clocks from ``nvidia-smi`` (read only), or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    values = [v.strip() for v in done.stdout.splitlines()[0].split(",")]
    return dict(zip(NVIDIA_SMI_FIELDS, values, strict=False))


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(context: StepContext) -> None:
    import torch

    from autolora import bench
    from autolora.environment import code_version
    from autolora.gpucheck.correctness import full_fp32

    record = context.record
    device = torch.device(context.device)
    record.figures(
        python=f"{platform.python_implementation()} {platform.python_version()}",
        executable=sys.executable,
        packages={name: package_version(name) for name in PACKAGES},
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        code=code_version(),
        tf32={
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
    )
    name = "cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"CUDA is not available to torch {torch.__version__} (built for CUDA "
                f"{torch.version.cuda}) in {sys.executable}: run on a GPU machine, choose "
                "another interpreter with AUTOLORA_PYTHON, or use --dry-run"
            )
        properties = torch.cuda.get_device_properties(device)
        name = properties.name
        record.figures(
            device=name,
            capability=f"{properties.major}.{properties.minor}",
            memory_gib=round(properties.total_memory / 2**30, 1),
            multiprocessors=properties.multi_processor_count,
            device_count=torch.cuda.device_count(),
            nvidia_smi=nvidia_smi(),
        )
    else:
        record.figure("device", "cpu")

    record.check(
        "pyautoattack importable (AutoAttack steps)",
        _importable("pyautoattack"),
        detail="missing: run `scripts/gpu-check --prepare` before the device call and name "
        ".gpu-check in its carry list",
    )

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(512, 512, generator=generator) for _ in range(2))
    reference = a.double() @ b.double()
    with full_fp32():
        product = (a.to(device) @ b.to(device)).cpu().double()
    error = float((product - reference).norm() / reference.norm())
    record.check(
        "fp32 matmul on the device vs float64", error <= MATMUL_RTOL, value=error,
        limit=f"<= {MATMUL_RTOL:g}",
    )  # fmt: skip
    peak = bench.matmul_peak_tflops(device, size=context.options.get("peak_size"))
    record.figure("matmul_peak_tflops", peak)
    smi = record.data["figures"].get("nvidia_smi") or {}
    driver = f", driver {smi['driver_version']}" if smi.get("driver_version") else ""
    capability = record.data["figures"].get("capability")
    record.headline(
        f"{name}{f' (sm {capability})' if capability else ''}{driver}; torch {torch.__version__}"
        f" CUDA {torch.version.cuda} cuDNN {record.data['figures']['cudnn']}; "
        f"{'bf16' if device.type == 'cuda' else 'fp32'} matmul {peak:.3g} TFLOP/s"
    )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
