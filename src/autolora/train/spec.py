"""The cell spec and the runtime settings of ``autolora train`` from JSON text or a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autolora.errors import ConfigError
from autolora.files import read_json
from autolora.planning.cells import runtime_values


def parse_spec(text: str) -> tuple[dict[str, Any], Path | None]:
    """A cell spec from JSON text or a .json/.yaml file; returns (spec, file or None)."""
    return _parse_mapping(text, "--spec", "the cell spec")


def parse_runtime(text: str) -> dict[str, Any]:
    """Runtime settings (``autolora.cells.RuntimeConfig`` keys) from JSON text or a file."""
    runtime, _ = _parse_mapping(text, "--runtime", "runtime settings")
    return runtime_values(runtime, "--runtime")


def _parse_mapping(text: str, option: str, what: str) -> tuple[dict[str, Any], Path | None]:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError as error:
            raise ConfigError(
                f"{option} is not valid JSON ({error}): pass JSON text or a file"
            ) from None
        return value, None
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"{option} {text!r} is neither JSON text nor an existing .json/.yaml file"
        )
    if path.suffix in (".yaml", ".yml"):
        import yaml

        value = yaml.safe_load(path.read_text())
    elif path.suffix == ".json":
        value = read_json(path, f"fix the {option} file {path} (a JSON mapping)")
    else:
        raise ConfigError(f"{option} file {path} must end in .json, .yaml or .yml")
    if not isinstance(value, dict):
        raise ConfigError(f"{option} file {path} must hold a mapping ({what})")
    return value, path
