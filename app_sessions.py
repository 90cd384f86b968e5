"""The sessions' stored results, kept by the app (not in Gradio's `gr.State`), so that only a Run stores anything.

Gradio's state holder makes an entry for every session id it sees, before any input is checked, and drops
the least recently used past its capacity: 64 refused calls from fresh ids (or raw `/call`s, which get a fresh
id each) wiped every visitor's results. Here an entry exists only once a Run (or an opened example) stored
results, and the store is bounded three ways: age (`ttl_s` after the Run that stored it), count
(`max_sessions`) and bytes (`max_bytes`, the arrays the results hold); the least recently used go first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import torch
from PIL import Image

EXPIRED, EVICTED = "expired", "evicted"  # why a session's results were dropped


def stored_bytes(value, seen: set[int] | None = None) -> int:
    """Bytes of the numpy arrays and torch tensors reachable from `value` through dataclasses, dicts, lists and
    tuples (each counted once): what a session's results hold, within a few kB."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, Image.Image):
        return len(value.getbands()) * value.width * value.height
    if is_dataclass(value) and not isinstance(value, type):
        return sum(stored_bytes(getattr(value, f.name), seen) for f in fields(value))
    if isinstance(value, dict):
        return sum(stored_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(stored_bytes(v, seen) for v in value)
    return 0


@dataclass
class _Entry:
    results: object
    nbytes: int
    stored_at: float


class SessionStore:
    """Session id → results, at most `max_sessions` of them and `max_bytes` in all, each for `ttl_s` seconds.

    `clock` is `time.monotonic` (tests pass their own). The ids of sessions whose results were dropped are
    remembered (at most `remembered`) with the reason, so a client is told "expired" or "evicted", not "never ran".
    """

    def __init__(self, ttl_s: float, max_sessions: int, max_bytes: int, clock: Callable[[], float] = time.monotonic,
                 remembered: int = 10_000):
        self.ttl_s, self.max_sessions, self.max_bytes = ttl_s, max_sessions, max_bytes
        self._clock, self._remembered = clock, remembered
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._dropped: OrderedDict[str, str] = OrderedDict()  # id → EXPIRED or EVICTED
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def put(self, key: str, results) -> None:
        """Store `results` for `key` (replacing its previous ones); ValueError if they alone exceed `max_bytes`."""
        nbytes = stored_bytes(results)
        if nbytes > self.max_bytes:
            raise ValueError(f"these results take {nbytes / 2**20:,.0f} MB, more than the {self.max_bytes / 2**20:,.0f} "
                             "MB this server keeps for all sessions; use a smaller image or fewer methods")
        with self._lock:
            self._purge_expired()
            self._entries.pop(key, None)
            self._dropped.pop(key, None)
            while self._entries and (len(self._entries) >= self.max_sessions
                                     or self.total_bytes() + nbytes > self.max_bytes):
                self._drop(next(iter(self._entries)), EVICTED)
            self._entries[key] = _Entry(results, nbytes, self._clock())

    def get(self, key: str | None):
        """The results stored for `key` (now the most recently used), or None."""
        with self._lock:
            self._purge_expired()
            entry = self._entries.get(key) if key else None
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.results

    def dropped(self, key: str | None) -> str | None:
        """`EXPIRED` or `EVICTED` if `key`'s results were dropped, None if it holds some or never stored any."""
        with self._lock:
            self._purge_expired()
            return self._dropped.get(key) if key else None

    def renew(self, key: str | None, results) -> None:
        """`results` (still `key`'s, now grown, e.g. by a sweep) count from now, at their current size."""
        with self._lock:
            entry = self._entries.get(key) if key else None
            if entry is not None and entry.results is results:
                entry.nbytes, entry.stored_at = stored_bytes(results), self._clock()
                self._entries.move_to_end(key)

    def purge_every(self, seconds: float) -> None:
        """Drop expired results every `seconds` in a daemon thread, so that their downloads go from disk even
        when no request comes (otherwise each call drops them)."""
        def purge():
            while True:
                time.sleep(seconds)
                with self._lock:
                    self._purge_expired()

        threading.Thread(target=purge, name="session-purge", daemon=True).start()

    def _purge_expired(self) -> None:
        now = self._clock()
        for key in [k for k, entry in self._entries.items() if now - entry.stored_at >= self.ttl_s]:
            self._drop(key, EXPIRED)

    def _drop(self, key: str, reason: str) -> None:
        del self._entries[key]
        self._dropped[key] = reason
        while len(self._dropped) > self._remembered:
            self._dropped.popitem(last=False)
