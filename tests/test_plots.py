"""Figures 1/2: PNGs of gradient similarity and test PGD-10 per epoch, mean over seeds per method."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest
from PIL import Image
from records_factory import entry, metrics_of, write_cell

from autolora.reporting.plots import (
    FIGURE_DPI,
    FIGURE_SIZE_IN,
    build_figure,
    draw_figures,
    figure_path,
    method_series,
)


def history(seed: int, epochs: int, *, similarity: bool = True):
    return [
        {
            "epoch": e,
            "grad_similarity": (0.5 - 0.1 * e + 0.01 * seed) if similarity else "",
            "test_pgd10": 40.0 + e + seed / 10,
        }
        for e in range(1, epochs + 1)
    ]


def test_figures_plot_the_mean_over_seeds_of_the_history(tmp_path):
    entries = []
    for method in ("vanilla", "twins"):
        for seed, epochs in ((0, 4), (6, 4), (66, 3)):  # seed 66 stopped after 3 epochs
            e = entry("figures", "cifar10", method, seed)
            write_cell(
                tmp_path,
                e,
                metrics_of(80, 50, 45),
                history=history(seed, epochs),
                results="results",
            )
            entries.append(e)
    plotted = draw_figures(entries, tmp_path / "results", tmp_path / "figures")

    similarity = figure_path(tmp_path / "figures", "grad_similarity", "resnet18", "cifar10")
    pgd = figure_path(tmp_path / "figures", "test_pgd10", "resnet18", "cifar10")
    assert set(plotted) == {similarity, pgd}
    for path in (similarity, pgd):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (FIGURE_SIZE_IN[0] * FIGURE_DPI, FIGURE_SIZE_IN[1] * FIGURE_DPI)
    vanilla = next(s for s in plotted[pgd] if s.method == "vanilla")
    assert vanilla.epochs == [1, 2, 3, 4]
    # epoch 2: seeds 0, 6, 66 -> 42.0, 42.6, 48.6
    assert vanilla.mean[1] == pytest.approx(statistics.mean([42.0, 42.6, 48.6]))
    assert vanilla.std[1] == pytest.approx(statistics.stdev([42.0, 42.6, 48.6]))
    # epoch 4: only seeds 0 and 6 reached it
    assert vanilla.mean[3] == pytest.approx((44.0 + 44.6) / 2)
    assert vanilla.per_seed[66] == {1: 41.0 + 6.6, 2: 42.0 + 6.6, 3: 43.0 + 6.6}
    twins = next(s for s in plotted[similarity] if s.method == "twins")
    assert twins.mean[0] == pytest.approx(statistics.mean([0.4, 0.46, 1.06]))


def test_history_without_similarity_draws_an_empty_figure(tmp_path):
    e = entry("figures", "dtd", "vanilla", 0)
    write_cell(tmp_path, e, metrics_of(80, 50, 45), history=history(0, 2, similarity=False))
    missing = entry("figures", "dtd", "twins", 0)  # never trained: no history
    plotted = draw_figures([e, missing], tmp_path / "results", tmp_path / "figures")
    similarity = figure_path(tmp_path / "figures", "grad_similarity", "resnet18", "dtd")
    assert plotted[similarity] == [] and similarity.stat().st_size > 0
    pgd = figure_path(tmp_path / "figures", "test_pgd10", "resnet18", "dtd")
    assert [s.method for s in plotted[pgd]] == ["vanilla"]


def test_epoch_axis_has_integer_ticks_only():
    # 3 epochs: matplotlib's default locator would put ticks at 1.25, 1.5, ...
    series = method_series(
        "vanilla", {0: pd.DataFrame(history(0, 3)), 6: pd.DataFrame(history(6, 3))}, "test_pgd10"
    )
    figure = build_figure([series], title="t", ylabel="y")
    figure.canvas.draw()
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    ticks = [t for t in axes.get_xticks() if low <= t <= high]
    assert ticks == [1.0, 2.0, 3.0]
