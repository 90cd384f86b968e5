"""G-Prune against the shared reference vectors (`../shared/reference/vectors`, computed in float64 from the
published formulation). Collected only when that folder sits beside the checkout (see conftest.py); the
same formulation is always checked against independent transcriptions in test_graph.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REFERENCE_VECTORS
from gprune import gprune_keep, gprune_scores
from test_graph import assert_same_top_k_up_to_near_ties


@pytest.mark.parametrize("path", sorted(REFERENCE_VECTORS.glob("gprune_*.npz")), ids=lambda p: p.stem)
def test_reference_vectors_scores(path):
    data = np.load(path)
    ours = gprune_scores(torch.from_numpy(data["features"]), iterations=int(data["iterations"]),
                         threshold=float(data["threshold"]), temperature=float(data["temperature"])).double().numpy()
    np.testing.assert_allclose(ours, data["scores"], rtol=1e-4, atol=1e-6 * np.abs(data["scores"]).max())
    assert_same_top_k_up_to_near_ties(ours[-1], data["scores"][-1], int(data["keep"]), data["kept"])


@pytest.mark.parametrize("path", sorted(REFERENCE_VECTORS.glob("packed_*.npz")), ids=lambda p: p.stem)
def test_reference_vectors_packed(path):
    data = np.load(path)
    kept = gprune_keep(torch.from_numpy(data["features"]), int(data["rows"]), int(data["cols"]), float(data["keep_ratio"]),
                       iterations=int(data["iterations"]), threshold=float(data["threshold"]), temperature=float(data["temperature"]))
    np.testing.assert_array_equal(kept.numpy(), data["kept"])
