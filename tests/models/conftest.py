"""Helpers for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.clip import FrozenClip, random_clip
from models.identity import IdentityLoss, random_identity
from models.stylegan2 import Generator, random_generator

SMALL_RES = 64  # the optimiser tests' generator: 64 px, 64 channels, seeded


@pytest.fixture(scope="module")
def generator() -> Generator:
    """The optimiser tests' generator (modules may define their own)."""
    return random_generator(SMALL_RES, 64, seed=1)


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    return random_clip(seed=0)


@pytest.fixture(scope="module")
def identity() -> IdentityLoss:
    return random_identity(seed=0)


def unit_vector(seed: int, dim: int = 512) -> torch.Tensor:
    """A seeded random direction: a stand-in CLIP embedding, (dim,)."""
    return F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=0)


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
