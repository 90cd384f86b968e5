"""Comparison implementations that only the benchmarks use (no code copied from any repository).

- `published_keep`: G-Prune as the published code formulates it (METHOD.md §2): two graphs, masked
  entries filled with −5000 before a row softmax, the transition matrix raised to the power I with
  `torch.linalg.matrix_power`, then the initial mass times that power. Written out of place, in fp32.
- `cosine_floor`: only what every G-Prune implementation must do: gather each graph's rows, normalise
  them and form the n×n cosine matrix `X̂X̂ᵀ` (both graphs). Nothing cheaper can produce the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gprune.packed import BASE_TOKENS, block_positions, token_budget


def published_keep(packed: torch.Tensor, rows: int, cols: int, keep_ratio: float, *, iterations: int = 5,
                   threshold: float = 0.5, temperature: float = 0.03, base_tokens: int = BASE_TOKENS) -> torch.Tensor:
    base_positions, grid_positions, newline_positions = block_positions(rows, cols, base_tokens)
    keep_base, keep_grid = token_budget(rows, cols, keep_ratio, base_tokens)
    kept = [newline_positions]
    for positions, k in ((base_positions, keep_base), (grid_positions, keep_grid)):
        x = packed[positions].float()
        unit = x / x.norm(dim=1, keepdim=True)
        similarity = unit @ unit.T
        mask = similarity >= threshold
        logits = similarity.masked_fill(~mask, -5000.0) / temperature
        transition = torch.softmax(logits, dim=1)
        degree = mask.sum(dim=1)
        mass = x.norm(dim=1) @ torch.linalg.matrix_power(transition, iterations)
        score = mass / degree
        kept.append(positions[torch.topk(score, k).indices])
    return torch.sort(torch.cat(kept)).values


def cosine_floor(packed: torch.Tensor, rows: int, cols: int, base_tokens: int = BASE_TOKENS) -> list[torch.Tensor]:
    base_positions, grid_positions, _ = block_positions(rows, cols, base_tokens)
    out = []
    for positions in (base_positions, grid_positions):
        unit = F.normalize(packed[positions].float(), dim=1)
        out.append(unit @ unit.T)
    return out
