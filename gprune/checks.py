"""Argument checks shared by the pruning methods: each raises `ValueError` saying what is allowed."""

from __future__ import annotations

import math

import torch

MAX_ITERATIONS = 100


def check_keep_ratio(keep_ratio: float) -> float:
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    if not math.isfinite(keep_ratio) or not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1] (e.g. 0.5 keeps half the tokens), got {keep_ratio}")
    return float(keep_ratio)


def check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise ValueError(f"iterations must be a whole number from 0 to {MAX_ITERATIONS}, got {iterations!r}")
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be from 0 to {MAX_ITERATIONS}, got {iterations}")
    return iterations


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return float(threshold)


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (the paper uses 0.03), got {temperature}")
    return float(temperature)


def check_features(features: torch.Tensor, name: str = "features", *, finite: bool = True) -> torch.Tensor:
    """Require a `(n, d)` floating tensor with n ≥ 1, d ≥ 1, and finite unless the caller checks that itself."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(features).__name__}")
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n, d >= 1, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {features.dtype}")
    if finite and not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return features
