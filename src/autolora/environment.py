"""The environment a result was produced in, for the run and evaluation records.

Code version (git commit and dirty flag of the package's repository, when there is one), package
versions, Python, host, device name, torch thread counts, SLURM job context, time stamps and the
command line. Torch is imported lazily (only ``device_name``, ``torch_threads`` and
``resolve_device`` need it). The records themselves are ``autolora.records``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ConfigError

RECORDED_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "safetensors",
    "autolora",
    "pyautoattack",
    "snakemake",
)

# SLURM variables worth keeping: the job, its node(s), array position and requeue count.
SLURM_VARIABLES = {
    "job_id": "SLURM_JOB_ID",
    "job_name": "SLURM_JOB_NAME",
    "node": "SLURMD_NODENAME",
    "nodelist": "SLURM_JOB_NODELIST",
    "partition": "SLURM_JOB_PARTITION",
    "cluster": "SLURM_CLUSTER_NAME",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "cpus_per_task": "SLURM_CPUS_PER_TASK",
    "gpus": "SLURM_GPUS_ON_NODE",
}


def timestamp() -> str:
    """Now, UTC, ISO 8601 with seconds (``2024-05-01T12:00:00Z``)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def command_line(argv: list[str] | None = None) -> str:
    """The command as a shell would re-run it."""
    argv = sys.argv if argv is None else argv
    return shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``{commit, dirty, version}`` of the code that runs: the git repository holding the
    ``autolora`` package (an editable install), or commit/dirty null for an installed wheel.
    ``dirty``: modified or untracked (not ignored) files; results and logs are git-ignored."""
    package_dir = Path(__file__).resolve().parent
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    commit = dirty = None
    if top is not None:
        commit = _git(Path(top), "rev-parse", "HEAD")
        status = _git(Path(top), "status", "--porcelain")
        dirty = None if status is None else bool(status)
    return {"commit": commit, "dirty": dirty, "version": __version__}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def slurm_context(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The SLURM job this process runs in, or None outside SLURM."""
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in environ:
        return None
    context = {key: environ[var] for key, var in SLURM_VARIABLES.items() if var in environ}
    context.setdefault("node", environ.get("SLURM_JOB_NODELIST", socket.gethostname()))
    name = slurm_job_name(environ["SLURM_JOB_ID"])
    if name is not None:
        context["job_name"] = name
    return context


def slurm_job_name(job_id: str) -> str | None:
    """The job's name as SLURM lists it, or None when SLURM cannot be asked. Inside a job step
    ``SLURM_JOB_NAME`` is the step's name: Snakemake's job step clears it and its inner srun sets
    it to the command (``python``)."""
    try:
        done = subprocess.run(
            ["squeue", "--noheader", "--jobs", job_id, "--format", "%j"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = done.stdout.strip()
    return name if done.returncode == 0 and name and "\n" not in name else None


def device_name(device: Any) -> str:
    """``cpu`` or the CUDA device's name (e.g. ``NVIDIA H100 80GB HBM3``)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def torch_threads() -> dict[str, Any]:
    """Torch's intra-op and inter-op thread counts (a different intra-op count can change the
    order of floating-point reductions on the CPU, hence results) and ``OMP_NUM_THREADS``."""
    import torch

    return {
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def host() -> str:
    return socket.gethostname()


def environment(device: Any) -> dict[str, Any]:
    """The record fields describing where and with what a result was computed."""
    return {
        "code": code_version(),
        "packages": package_versions(),
        "python": python_version(),
        "host": host(),
        "device": device_name(device),
        "threads": torch_threads(),
        "slurm": slurm_context(),
    }


def resolve_device(name: str, option: str = "runtime.device") -> Any:
    """The torch device ``name`` asks for: ``auto`` is CUDA when available, else the CPU. A CUDA
    device where CUDA is not available is a ConfigError naming ``option``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} is {name!r} but CUDA is not available: use auto or cpu")
    return device
