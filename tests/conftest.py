"""Shared fixtures: the real TinyStories sample shipped with the package."""

import pytest

from slmbook.data import load_stories


@pytest.fixture(scope="module")
def valid():
    """The 1,000 official validation stories of the shipped sample."""
    return load_stories("validation", source="sample", verbose=False)


@pytest.fixture(scope="module")
def train():
    """The train-head stories of the shipped sample."""
    return load_stories("train", source="sample", verbose=False)
