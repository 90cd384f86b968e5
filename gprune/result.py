"""The one result type shared by every pruning method, so callers treat them alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .timing import Timing


@dataclass
class Selection:
    """What a pruning method decides about one image's packed visual tokens, before the model runs.

    Attributes:
        kept_positions: `(k,)` int64, sorted positions inside the packed image block
            `[base | rows × (cols + 1)]`; newline positions are always included.
        scores: `(steps, n)` float32 per-token scores over the packed block (NaN where a method gives
            a token no score, e.g. newlines in G-Prune); `steps = iterations + 1` for G-Prune, else 1.
            Random's are its float64 draws. `None` for methods without scores (ToMe, the unpruned run).
        groups: for merging methods (ToMe), one int64 array per kept token (same order as
            `kept_positions`) listing the packed positions that token stands for.
        merged_features: `(k, d)` features to feed instead of the originals (ToMe), else `None`.
        degree: `(n,)` graph degree per token (G-Prune; 0 for newlines), else `None`.
        neighbors: `(n, m)` packed positions of each token's strongest in-graph sources (-1 = none).
        neighbor_weights: `(n, m)` transition weight `P[source, token]` of those edges.
        seconds: wall time of the selection itself.
    """

    kept_positions: np.ndarray
    scores: np.ndarray | None = None
    groups: list[np.ndarray] | None = None
    merged_features: np.ndarray | None = None
    degree: np.ndarray | None = None
    neighbors: np.ndarray | None = None
    neighbor_weights: np.ndarray | None = None
    seconds: float = 0.0

    def kept_mask(self, n_tokens: int) -> np.ndarray:
        """`(n,)` bool, True where the packed token is kept."""
        mask = np.zeros(n_tokens, dtype=bool)
        mask[self.kept_positions] = True
        return mask

    def group_of(self, n_tokens: int) -> np.ndarray:
        """`(n,)` index into `kept_positions` of the token each packed token is merged into (-1 = dropped).
        Without groups, every kept token stands for itself."""
        owner = np.full(n_tokens, -1, dtype=np.int64)
        groups = self.groups if self.groups is not None else [np.array([p]) for p in self.kept_positions]
        for index, members in enumerate(groups):
            owner[members] = index
        return owner


@dataclass
class PruneResult:
    """A method's selection plus what the model did with it (the unpruned reference uses it too).

    `method` is one of `gprune.METHODS` or `"unpruned"`. Token counts are visual tokens of the image
    block; `sequence_*` count the whole prompt. FLOPs are theoretical prefill FLOPs (METHOD.md §5).
    `prefill_seconds` is the single prefill of the answer run (not a measurement on its own);
    `decode_seconds_per_token` is one decode step of the batch the answers were decoded in (shared by every
    method of a Run, so it says nothing about one method's decoding speed);
    `selection_timing` / `prefill_timing` are repeated runs after a warm-up when the analysis asked for
    timing rounds, else None.
    """

    method: str
    keep_ratio: float
    selection: Selection
    tokens_before: int
    tokens_after: int
    sequence_before: int
    sequence_after: int
    flops: float
    flops_unpruned: float
    prefill_seconds: float
    decode_seconds_per_token: float
    answer: str
    answer_token_ids: list[int] = field(default_factory=list)
    selection_timing: Timing | None = None
    prefill_timing: Timing | None = None

    @property
    def kept_positions(self) -> np.ndarray:
        return self.selection.kept_positions

    @property
    def flops_ratio(self) -> float:
        """Pruned over unpruned prefill FLOPs (1.0 = no saving)."""
        return self.flops / self.flops_unpruned

    def summary(self) -> dict:
        """JSON-ready summary (no per-token arrays)."""
        return {
            "method": self.method,
            "keep_ratio": self.keep_ratio,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "sequence_before": self.sequence_before,
            "sequence_after": self.sequence_after,
            "flops": self.flops,
            "flops_unpruned": self.flops_unpruned,
            "flops_ratio": self.flops_ratio,
            "selection_seconds": self.selection.seconds,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds_per_token": self.decode_seconds_per_token,
            "selection_timing": self.selection_timing.summary() if self.selection_timing else None,
            "prefill_timing": self.prefill_timing.summary() if self.prefill_timing else None,
            "answer": self.answer,
        }


@dataclass(frozen=True)
class Precomputed:
    """What the explorer otherwise derives from an analysis's `(n, d)` features, stored instead of them when
    an analysis is restored from a precomputed bundle (gprune/bundle.py).

    Attributes:
        similarity: view name ("base", "grid") → `(pairs,)` float32 cosine similarities of random token pairs
            (`gprune.stats.pair_similarities`).
        tome: keep ratio → ToMe's selection at that ratio (`merged_features` omitted), for every ratio the
            explorer's keep-ratio control offers.
    """

    similarity: dict[str, np.ndarray]
    tome: dict[float, Selection]
