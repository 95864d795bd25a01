"""Figures 1a/2a (gradient similarity per epoch) and 1b/2b (test PGD-10 per epoch).

One PNG per figure kind and dataset: a line per method, the mean over seeds at each epoch, with a
band of ± one sample std (ddof=1) where at least two seeds reach that epoch. Drawn with matplotlib's
Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from autolora.errors import DataError
from autolora.files import atomic_path, read_verified
from autolora.planning import layout
from autolora.planning.grid import TableEntry
from autolora.planning.vocabulary import METHOD_LABELS, dataset_label
from autolora.records import RunRecord

FIGURES = {  # history column: (title, y label)
    "grad_similarity": (
        "Gradient similarity (natural vs adversarial objective)",
        "cosine similarity",
    ),
    "test_pgd10": ("Test PGD-10 robust accuracy", "PGD-10 accuracy (%)"),
}
FIGURE_SIZE_IN = (6.0, 4.0)
FIGURE_DPI = 100


@dataclass
class MethodSeries:
    """What one method's line shows: per-epoch mean and std over seeds, and each seed's values."""

    method: str
    epochs: list[int]
    mean: list[float]
    std: list[float]
    per_seed: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> {epoch: value}


def read_history(cell_dir: str | Path) -> pd.DataFrame | None:
    """A finished cell's ``history.csv``, checked against the sha256 its run record gives; None
    when the cell has not finished (no ``run.json``): an unfinished run's curve is not drawn."""
    cell_dir = Path(cell_dir)
    run_path = cell_dir / layout.RUN_RECORD
    if not run_path.is_file():
        return None
    fix = f"rerun the cell (delete {cell_dir} and `snakemake` it again)"
    recorded = RunRecord.read(run_path, fix).output("history")
    path = cell_dir / layout.HISTORY
    if recorded is None:
        raise DataError(f"{run_path} lists no history output; {fix}")
    data = read_verified(
        path, recorded["sha256"], recorded_in=str(run_path), fix=fix, what="history"
    )
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: unreadable training history ({error}); {fix}") from None
    if "epoch" not in frame.columns:
        raise DataError(f"{path}: no 'epoch' column; {fix}")
    return frame


def method_series(
    method: str, histories: dict[int, pd.DataFrame], column: str
) -> MethodSeries | None:
    """Mean/std over seeds of ``column`` at each epoch; None when no seed has a value."""
    per_seed: dict[int, dict[int, float]] = {}
    for seed, history in sorted(histories.items()):
        if column not in history.columns:
            continue
        values = history[["epoch", column]].dropna()
        if len(values):
            per_seed[seed] = {
                int(e): float(v) for e, v in zip(values["epoch"], values[column], strict=True)
            }
    if not per_seed:
        return None
    epochs = sorted({e for series in per_seed.values() for e in series})
    means, stds = [], []
    for epoch in epochs:
        at_epoch = np.array([s[epoch] for s in per_seed.values() if epoch in s])
        means.append(float(at_epoch.mean()))
        stds.append(float(at_epoch.std(ddof=1)) if at_epoch.size > 1 else float("nan"))
    return MethodSeries(method, epochs, means, stds, per_seed)


def draw_figure(
    series: Sequence[MethodSeries], *, title: str, ylabel: str, path: str | Path
) -> None:
    """Write a PNG with one line (+ std band) per method; an empty plot says that no data exist yet."""
    figure = build_figure(series, title=title, ylabel=ylabel)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def build_figure(series: Sequence[MethodSeries], *, title: str, ylabel: str) -> Figure:
    """The figure ``draw_figure`` writes: epochs on integer ticks only."""
    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for line in series:
        epochs, mean, std = np.array(line.epochs), np.array(line.mean), np.array(line.std)
        n_seeds = len(line.per_seed)
        (drawn,) = axes.plot(
            epochs,
            mean,
            marker=".",
            label=f"{METHOD_LABELS.get(line.method, line.method)}"
            f" ({n_seeds} seed{'s' if n_seeds != 1 else ''})",
        )
        band = ~np.isnan(std)
        if band.any():
            axes.fill_between(
                epochs[band],
                (mean - std)[band],
                (mean + std)[band],
                color=drawn.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if not series:
        axes.text(
            0.5, 0.5, "no training history yet", ha="center", va="center", transform=axes.transAxes
        )
    else:
        axes.legend()
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no tick at epoch 1.25
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def figure_path(out_dir: str | Path, column: str, arch: str, dataset: str) -> Path:
    return Path(out_dir) / layout.figure_name(column, arch, dataset)


def draw_figures(
    entries: Iterable[TableEntry], results_root: str | Path, out_dir: str | Path
) -> dict[Path, list[MethodSeries]]:
    """Every figure (both kinds, per arch and dataset) of ``entries``; returns what each PNG plots."""
    groups: dict[tuple[str, str], dict[str, dict[int, pd.DataFrame]]] = {}
    for entry in entries:
        methods = groups.setdefault((entry.arch, entry.dataset), {})
        seeds = methods.setdefault(entry.method, {})
        history = read_history(Path(results_root) / entry.cell_id)
        if history is not None:
            seeds[entry.seed] = history
    plotted = {}
    for (arch, dataset), methods in groups.items():
        for column, (title, ylabel) in FIGURES.items():
            series = [s for m, h in methods.items() if (s := method_series(m, h, column))]
            path = figure_path(out_dir, column, arch, dataset)
            draw_figure(
                series,
                title=f"{title}: {dataset_label(dataset)}, {arch}",
                ylabel=ylabel,
                path=path,
            )
            plotted[path] = series
    return plotted
