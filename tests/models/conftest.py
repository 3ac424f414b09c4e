"""Helpers for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small convs run fastest single-threaded, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_err(ours: torch.Tensor, golden: np.ndarray) -> float:
    """Largest absolute difference from a golden array of the same shape."""
    assert tuple(ours.shape) == golden.shape
    return float((ours.detach().cpu() - torch.from_numpy(golden)).abs().max())
