"""``scripts/gpu-check --prepare``: the Python packages the GPU machine lacks, made ready to
travel with the working tree (the device tool's ``carry``).

The GPU machine's image has torch, torchvision, numpy, PyYAML, safetensors, pandas and SciPy but
not ``pyautoattack``, and cannot reach a package registry. ``pyautoattack`` is pure Python; its
wheel is 42 MB because of an example model, so only its modules and metadata are copied, from
the pinned version installed here or else from its wheel on PyPI, into ``.gpu-check/site``
(git-ignored), which ``scripts/gpu-check`` puts on ``PYTHONPATH``. ``MANIFEST.json`` lists every
file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from autolora.errors import ConfigError
from autolora.files import write_json

CARRY_DIR = ".gpu-check"
SITE_DIR = "site"
PACKAGES = {"pyautoattack": "0.2.0"}  # the pin of pyproject.toml
EXCLUDED_PARTS = {"examples", "__pycache__"}


def _wanted(path: PurePosixPath, package: str) -> bool:
    """A module of the package or its METADATA (what imports and version look-ups need)."""
    if path.parts[0] == package:
        return path.suffix == ".py" and not EXCLUDED_PARTS & set(path.parts)
    return path.parts[0].endswith(".dist-info") and path.name == "METADATA"


def _from_installed(package: str, version: str, site: Path) -> list[Path] | None:
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != version:
        return None
    copied = []
    for file in distribution.files or []:
        path = PurePosixPath(str(file))
        if _wanted(path, package):
            target = site.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(distribution.locate_file(file), target)
            copied.append(target)
    return copied


def _from_wheel(package: str, version: str, site: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", folder, f"{package}=={version}"],
            capture_output=True, text=True,
        )  # fmt: skip
        wheels = list(Path(folder).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ConfigError(
                f"{package}=={version} is not installed here and `pip download` failed "
                f"({done.stderr.strip().splitlines()[-1:] or done.returncode}): run "
                "`make install` first or check the network"
            )
        copied = []
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                path = PurePosixPath(name)
                if _wanted(path, package):
                    target = site.joinpath(*path.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(wheel.read(name))
                    copied.append(target)
        return copied


def prepare_carry(repo: Path) -> Path:
    """Fill ``repo/.gpu-check/site`` with the packages the GPU machine lacks; return the folder
    to name in the device tool's ``carry``."""
    carry = repo / CARRY_DIR
    site = carry / SITE_DIR
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    sources, files = {}, {}
    for package, version in PACKAGES.items():
        copied = _from_installed(package, version, site)
        sources[package] = f"{version} (installed here)"
        if not copied:
            copied = _from_wheel(package, version, site)
            sources[package] = f"{version} (wheel from PyPI)"
        for path in copied:
            files[str(path.relative_to(carry))] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_json(carry / "MANIFEST.json", {"packages": sources, "files": files})
    return carry
