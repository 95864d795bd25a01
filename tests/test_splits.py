"""Split construction (SPEC §2, §7): the seed-1 draw, Caltech windows, stratified and DTD plans."""

from __future__ import annotations

import numpy as np
import pytest

from autolora.data.sources import CATALOGUE
from autolora.data.sources.splits import (
    caltech_plans,
    caltech_windows,
    class_starts,
    dtd_plans,
    held_out_validation,
    official_split_plans,
    stratified_split,
)


def global_numpy_draw(n: int) -> tuple[list[int], list[int]]:
    """The released code verbatim, on numpy's global RNG (state restored afterwards)."""
    state = np.random.get_state()
    try:
        np.random.seed(1)
        train_idx = np.random.choice(n, int(n * 0.95), replace=False)
    finally:
        np.random.set_state(state)
    drawn = set(train_idx.tolist())
    val_idx = [i for i in range(n) if i not in drawn]
    return train_idx.tolist(), val_idx


@pytest.mark.parametrize("n", [100, 3760, 5994])
def test_validation_draw_is_the_released_code_draw(n):
    train_pos, val_pos = global_numpy_draw(n)
    examples = list(range(1000, 1000 + n))  # positions map to example indices
    train, val, test = held_out_validation(examples, [7, 8])
    assert train == [1000 + p for p in train_pos]  # drawn order kept
    assert val == [1000 + p for p in val_pos]
    assert test == [7, 8]


def test_paper_counts_follow_from_the_draw():
    # int(N * 0.95) on the official training sizes gives the catalogue's paper counts.
    for key, n_train in (
        ("cifar10", 50_000),
        ("cifar100", 50_000),
        ("dogs", 12_000),
        ("cub", 5_994),
    ):
        train, val, _ = held_out_validation(range(n_train), [0])
        counts = CATALOGUE[key].paper_counts
        assert (len(train), len(val)) == (counts["train"], counts["val"]), key
        assert sorted(train + val) == list(range(n_train))


def test_official_plans_are_the_same_under_both_schemes():
    plans = official_split_plans(
        list(range(40)), list(range(40, 50)), num_classes=5, paper_counts={}
    )
    assert plans["paper"].train == plans["clean"].train
    assert len(plans["paper"].val) == 2 and plans["paper"].test == list(range(40, 50))
    assert plans["paper"].num_outputs == 5 and plans["paper"].seed == 1


def test_dtd_plans():
    train, test = list(range(20)), list(range(20, 30))
    plans = dtd_plans(train, test, num_classes=3, paper_counts={})
    paper, clean = plans["paper"], plans["clean"]
    assert paper.num_outputs == 57 and clean.num_outputs == 3
    assert paper.train == train and paper.val == test and paper.test == test
    expected_train, expected_val = global_numpy_draw(20)
    assert clean.train == expected_train and clean.val == expected_val and clean.test == test


def test_class_starts():
    assert class_starts([0, 0, 1, 2, 2, 2]) == [0, 2, 3]
    with pytest.raises(ValueError):
        class_starts([1, 0])


def test_caltech_windows_spill_and_duplicate():
    # classes of 6, 2, 3 and 5 images, window 4 (the real window is 150)
    labels = [0] * 6 + [1] * 2 + [2] * 3 + [3] * 5
    train, test, dropped = caltech_windows(labels, window=4)
    # starts 0, 6, 8, 11: windows 0-3, 6-9, 8-11, 11-14
    assert train == [0, 1, 2, 3, 6, 7, 8, 9, 8, 9, 10, 11, 11, 12, 13, 14]
    assert test == [4, 5, 15]
    assert dropped == 0


def test_caltech_windows_past_the_end_are_dropped():
    labels = [0] * 3 + [1] * 2
    train, test, dropped = caltech_windows(labels, window=4)
    # starts 0 and 3: window 3..6 has only 3, 4 inside the list
    assert train == [0, 1, 2, 3, 3, 4]
    assert test == []
    assert dropped == 2


def test_caltech_paper_window_is_150():
    sizes = [200, 100, 160]
    labels = np.repeat(np.arange(3), sizes).tolist()
    plans = caltech_plans(labels, num_classes=3, paper_counts={})
    paper = plans["paper"]
    expected = list(range(0, 150)) + list(range(200, 350)) + list(range(300, 450))
    assert paper.train == expected
    assert len(paper.train) == 3 * 150
    assert paper.test == list(range(150, 200)) + list(range(450, 460))
    assert paper.val == paper.test
    assert paper.extra["duplicates"] == 50  # 300..349 twice


def test_stratified_split_per_class_without_duplicates():
    labels = np.repeat(np.arange(4), [10, 5, 7, 3]).tolist()
    train, test = stratified_split(labels, test_fraction=0.2, seed=1)
    assert sorted(train + test) == list(range(len(labels)))
    per_class_test = np.bincount(np.asarray(labels)[test], minlength=4).tolist()
    assert per_class_test == [2, 1, 1, 1]  # round(0.2 n): 2, 1, 1.4 -> 1, 0.6 -> 1
    assert stratified_split(labels, test_fraction=0.2, seed=1) == (train, test)
    assert stratified_split(labels, test_fraction=0.2, seed=2) != (train, test)


def test_caltech_clean_plan():
    labels = np.repeat(np.arange(3), [40, 20, 60]).tolist()
    clean = caltech_plans(labels, num_classes=3, paper_counts={})["clean"]
    assert len(clean.test) == 8 + 4 + 12
    assert not set(clean.test) & set(clean.train + clean.val)
    assert sorted(clean.train + clean.val + clean.test) == list(range(120))
    assert len(clean.val) == 96 - int(96 * 0.95)
