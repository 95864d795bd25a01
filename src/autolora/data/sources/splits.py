"""Train / validation / test index lists of the ``paper`` and ``clean`` schemes (SPEC §2, §7).

Every function takes example indices (positions in the prepared dataset) and returns index lists;
the ``paper`` scheme reproduces the released code exactly, including its duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autolora.data.prepared import SplitPlan, holdout_split

SPLIT_SEED = 1
CALTECH_WINDOW = 150
CALTECH_TEST_FRACTION = 0.2


def take(examples: Sequence[int], positions: Sequence[int]) -> list[int]:
    return [int(examples[p]) for p in positions]


def held_out_validation(
    train: Sequence[int], test: Sequence[int], *, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int], list[int]]:
    """Train/val from the released code's seeded 5% draw over the positions of ``train``
    (``holdout_split``: np.random.RandomState(seed).choice(N, int(N*0.95), replace=False), drawn
    order kept; validation = the remaining positions ascending); test unchanged."""
    train_pos, val_pos = holdout_split(len(train), seed=seed)
    return take(train, train_pos), take(train, val_pos), list(test)


def held_out_validation_plan(
    train: Sequence[int], test: Sequence[int], *, seed: int, **facts: Any
) -> SplitPlan:
    """A plan whose validation is the seeded 5% draw from ``train`` (``held_out_validation``);
    ``facts`` are the plan's other fields (num_outputs, paper_counts, notes)."""
    tr, va, te = held_out_validation(train, test, seed=seed)
    return SplitPlan(train=tr, val=va, test=te, seed=seed, **facts)


def validation_on_test_plan(train: Sequence[int], test: Sequence[int], **facts: Any) -> SplitPlan:
    """A plan that validates on the test set, as the released code does for DTD and Caltech-256;
    ``facts`` are the plan's other fields (num_outputs, seed, paper_counts, notes, extra)."""
    return SplitPlan(train=list(train), val=list(test), test=list(test), **facts)


def official_split_plans(
    train: Sequence[int],
    test: Sequence[int],
    *,
    num_classes: int,
    paper_counts: dict[str, int],
    seed: int = SPLIT_SEED,
) -> dict[str, SplitPlan]:
    """CIFAR, CUB, Dogs: the seeded 5% validation draw under both schemes."""
    note = (
        f"official train/test split; validation = 5% of train by "
        f"np.random.RandomState({seed}).choice(N, int(N*0.95), replace=False) (released code)"
    )
    return {
        scheme: held_out_validation_plan(
            train, test, num_outputs=num_classes, paper_counts=paper_counts, seed=seed, notes=note
        )
        for scheme in ("paper", "clean")
    }


DTD_PAPER_OUTPUTS = 57


def dtd_plans(
    train: Sequence[int],
    test: Sequence[int],
    *,
    num_classes: int,
    paper_counts: dict[str, int],
    seed: int = SPLIT_SEED,
) -> dict[str, SplitPlan]:
    """DTD partition 1: train = train1 + val1, test = test1.

    paper: validation = test set, 57-way head (released code); clean: seeded 5% validation from
    train, one output per class.
    """
    return {
        "paper": validation_on_test_plan(
            train,
            test,
            num_outputs=DTD_PAPER_OUTPUTS,
            paper_counts=paper_counts,
            seed=seed,
            notes="partition 1: train1+val1 / test1; validation = test set and a 57-way head "
            "(released code)",
        ),
        "clean": held_out_validation_plan(
            train,
            test,
            num_outputs=num_classes,
            paper_counts=paper_counts,
            seed=seed,
            notes=f"partition 1: train1+val1 / test1; validation = seeded 5% of train "
            f"(RandomState({seed})); {num_classes}-way head",
        ),
    }


def class_starts(labels: Sequence[int]) -> list[int]:
    """Index of the first example of each class in a list grouped by class (classes in order)."""
    labels = np.asarray(labels)
    if np.any(np.diff(labels) < 0):
        raise ValueError("examples must be grouped by class in ascending class order")
    classes = np.unique(labels)
    return [int(np.searchsorted(labels, c)) for c in classes]


def caltech_windows(
    labels: Sequence[int], window: int = CALTECH_WINDOW
) -> tuple[list[int], list[int], int]:
    """The released code's Caltech-256 training windows over the flat, class-grouped list.

    For each class starting at index s, train takes s .. s+window-1, spilling into the next
    classes when the class is smaller than the window, so an index can appear more than once.
    Test is every index in no window, ascending. A window of one of the last classes could run past
    the end of the list; such indices do not exist (the released code would fail on them), so they
    are dropped and counted. Returns (train, test, dropped).
    """
    n = len(labels)
    train: list[int] = []
    dropped = 0
    for start in class_starts(labels):
        end = start + window
        train.extend(range(start, min(end, n)))
        dropped += max(0, end - n)
    in_window = np.zeros(n, dtype=bool)
    in_window[train] = True
    return train, np.flatnonzero(~in_window).tolist(), dropped


def stratified_split(
    labels: Sequence[int], *, test_fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Per class, a seeded permutation; the first round(fraction·n_c) go to test, the rest to train.

    Both lists are returned in ascending order; no index appears twice.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train: list[int] = []
    test: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        shuffled = members[rng.permutation(len(members))]
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        test.extend(shuffled[:n_test].tolist())
        train.extend(shuffled[n_test:].tolist())
    return sorted(train), sorted(test)


def caltech_plans(
    labels: Sequence[int],
    *,
    num_classes: int,
    paper_counts: dict[str, int],
    seed: int = SPLIT_SEED,
) -> dict[str, SplitPlan]:
    """paper: overlapping 150-windows, validation = test; clean: stratified 80/20 + 5% validation."""
    paper_train, paper_test, dropped = caltech_windows(labels)
    paper_note = (
        f"released code: for each class starting at s, train = s..s+{CALTECH_WINDOW - 1} of the "
        "flat list (classes = sorted folder names, files sorted by name), spilling into the next "
        "class, duplicates kept; test = images in no window; validation = test set"
    )
    if dropped:
        paper_note += f"; {dropped} window indices past the end of the list dropped"
    duplicates = len(paper_train) - len(set(paper_train))
    clean_pool, clean_test = stratified_split(
        labels, test_fraction=CALTECH_TEST_FRACTION, seed=seed
    )
    return {
        "paper": validation_on_test_plan(
            paper_train,
            paper_test,
            num_outputs=num_classes,
            paper_counts=paper_counts,
            seed=seed,
            notes=paper_note,
            extra={"window": CALTECH_WINDOW, "dropped": dropped, "duplicates": duplicates},
        ),
        "clean": held_out_validation_plan(
            clean_pool,
            clean_test,
            num_outputs=num_classes,
            paper_counts=paper_counts,
            seed=seed,
            notes=f"stratified per class: {round((1 - CALTECH_TEST_FRACTION) * 100)}% / "
            f"{round(CALTECH_TEST_FRACTION * 100)}% (RandomState({seed}) permutation per class, "
            "no duplicates); validation = seeded 5% of train",
        ),
    }
