"""Shared fixtures: the real TinyStories sample shipped with the package, and fixed seeds."""

import random

import numpy as np
import pytest
import torch

from slmbook.data import load_stories


@pytest.fixture(scope="module")
def valid():
    """The 1,000 official validation stories of the shipped sample."""
    return load_stories("validation", source="sample", verbose=False)


@pytest.fixture(scope="module")
def train():
    """The train-head stories of the shipped sample."""
    return load_stories("train", source="sample", verbose=False)


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Every test starts from the same random state, whatever ran before it in its worker (xdist):
    a test that draws without its own generator sees the same numbers on every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
