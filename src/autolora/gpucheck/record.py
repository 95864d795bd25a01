"""What one step of the GPU check records: figures, checks, lines and a one-line headline.

The record is saved as JSON after every change, so that a step stopped at its time limit (or whose
process dies) still leaves everything it measured. Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora.files import write_json


def plain(value: Any) -> Any:
    """``value`` as JSON-able Python: mappings, sequences, str, bool, None, int and float (numpy
    and torch scalars through ``float``/``int``; non-finite floats stay floats)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (Sequence, set, tuple)) and not isinstance(value, (bytes, bytearray)):
        return [plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy / torch scalars and one-element tensors
        return plain(value.item())
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class StepRecord:
    """Figures, checks and report lines of one step, saved to ``path`` after each change.

    A check is ``required`` when its failure makes the step *failed*; an informational check
    (``required=False``: a target, a property expected but not promised) is reported only.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.data: dict[str, Any] = {"figures": {}, "checks": [], "lines": [], "headline": ""}
        self.save()

    def figure(self, name: str, value: Any) -> Any:
        self.data["figures"][name] = plain(value)
        self.save()
        return value

    def figures(self, **values: Any) -> None:
        for name, value in values.items():
            self.data["figures"][name] = plain(value)
        self.save()

    def check(
        self,
        name: str,
        ok: bool,
        *,
        value: Any = None,
        limit: str | None = None,
        required: bool = True,
        detail: str = "",
    ) -> bool:
        """Record a check; returns ``ok``. ``limit`` says what passes (e.g. ``">= 0.9999"``)."""
        ok = bool(ok) and not (isinstance(value, float) and math.isnan(value))
        self.data["checks"].append(
            {
                "name": name,
                "ok": ok,
                "value": plain(value),
                "limit": limit,
                "required": required,
                "detail": detail,
            }
        )
        self.save()
        return ok

    def line(self, text: str) -> None:
        """A line for the final report (also printed to the step's log)."""
        print(text, flush=True)
        self.data["lines"].append(text)
        self.save()

    def headline(self, text: str) -> None:
        self.data["headline"] = text
        self.save()

    def error(self, message: str, trace: str) -> None:
        self.data["error"] = message
        self.data["traceback"] = trace
        self.save()

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.data)
