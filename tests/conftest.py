"""Shared fixtures: one CPU thread and a fixed torch seed for every test that uses torch."""

from __future__ import annotations

import sys

import pytest


def _torch():
    """torch if a test module imported it; torch-free test runs do not pay for importing it."""
    return sys.modules.get("torch")


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """One intra-op thread for the whole session (CI has 2 cores shared by many processes);
    session-scoped so that module-scoped fixtures run single-threaded too."""
    torch = _torch()
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def torch_seed():
    """Every test starts from the same global torch seed."""
    torch = _torch()
    if torch is not None:
        torch.manual_seed(0)
