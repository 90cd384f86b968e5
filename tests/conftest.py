"""Shared pytest fixtures (append new fixtures below; keep each one small)."""

import pytest

from gprune.loading import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """The offline random-weight LLaVA-NeXT on the CPU, built once per test session."""
    return load_model("tiny", device="cpu")
