"""``history.csv``: one row per finished epoch, and the epoch's log line."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from autolora.files import write_text

HISTORY_LEADING = ("epoch", "lr", "lora_train_sa", "lambda1", "lambda2")
HISTORY_TRAILING = (
    "grad_similarity",
    "val_sa",
    "val_pgd10",
    "test_sa",
    "test_pgd10",
    "reloaded_best",
    "next_lr",
    "autolr",
    "seconds",
)


def history_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Fixed leading/trailing columns around the method's ``train_*`` metrics (sorted), so the
    file is the same whether the rows came from memory or from a resumed state."""
    present = {key for row in rows for key in row}
    middle = sorted(present - set(HISTORY_LEADING) - set(HISTORY_TRAILING))
    return [
        *(c for c in HISTORY_LEADING if c in present),
        *middle,
        *(c for c in HISTORY_TRAILING if c in present),
    ]


def write_history(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write history.csv atomically; returns its sha256."""
    columns = history_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return write_text(path, buffer.getvalue())


def epoch_line(row: dict[str, Any]) -> str:
    def number(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.2f}"

    return (
        f"epoch {row['epoch']}: lr {row['lr']:.3g} loss {row.get('train_loss', float('nan')):.4f} "
        f"val SA {number('val_sa')} PGD-10 {number('val_pgd10')} | test SA {number('test_sa')} "
        f"PGD-10 {number('test_pgd10')} | {row['seconds']:.1f}s"
        + (" | reloaded best-val weights" if row.get("reloaded_best") else "")
    )
