"""Animated GIFs of per-iteration panels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def gif_bytes(frames: list[np.ndarray], *, duration_ms: int = 600) -> bytes:
    """Encode `(H, W, 3)` uint8 RGB frames, all the same size, as a GIF that loops forever.

    Each frame gets its own adaptive 256-colour palette. Pillow merges consecutive identical frames
    into one longer frame, so the decoded frame count can be lower than `len(frames)`.
    """
    if not frames:
        raise ValueError("frames must not be empty")
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    shape = frames[0].shape if isinstance(frames[0], np.ndarray) else None
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i} must be an (H, W, 3) uint8 array")
        if frame.shape != shape:
            raise ValueError(f"frame {i} has shape {frame.shape}, frame 0 has {shape}")
    # Fast octree quantisation: Pillow's default (median cut) took ~1 s of CPU per 1,300-pixel-wide frame.
    images = [Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()
