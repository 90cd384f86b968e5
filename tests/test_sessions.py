"""The sessions' stored results (`app_sessions.SessionStore`) with an injected clock: age, count and bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from app_sessions import EVICTED, EXPIRED, SessionStore, stored_bytes

MB = 2**20


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Results:
    scores: np.ndarray


def results(megabytes: float) -> Results:
    return Results(np.zeros(int(megabytes * MB), dtype=np.uint8))


def test_stored_bytes_counts_every_array_once():
    shared = np.zeros(1000, dtype=np.float32)
    value = {"a": [shared, shared], "b": (torch.zeros(10, dtype=torch.float64),), "c": Results(np.zeros(5, bool)),
             "d": Image.new("RGB", (4, 3)), "e": "text"}
    assert stored_bytes(value) == 4000 + 80 + 5 + 36


def test_results_expire_exactly_after_the_ttl():
    clock = Clock()
    store = SessionStore(ttl_s=60, max_sessions=4, max_bytes=100 * MB, clock=clock)
    kept = results(1)
    store.put("a", kept)
    clock.now += 59.9
    assert store.get("a") is kept and store.dropped("a") is None
    clock.now += 0.1
    assert store.get("a") is None and store.dropped("a") == EXPIRED
    assert store.dropped("never") is None


def test_a_renewed_session_counts_from_its_renewal():
    clock = Clock()
    store = SessionStore(ttl_s=60, max_sessions=4, max_bytes=100 * MB, clock=clock)
    kept = results(1)
    store.put("a", kept)
    clock.now += 50
    store.renew("a", kept)
    clock.now += 50
    assert store.get("a") is kept
    store.renew("a", results(1))  # not its stored results (a new Run replaced them): nothing renewed
    clock.now += 10
    assert store.get("a") is None


def test_least_recently_used_go_first_past_the_count():
    store = SessionStore(ttl_s=60, max_sessions=2, max_bytes=100 * MB, clock=Clock())
    store.put("a", results(1))
    store.put("b", results(1))
    assert store.get("a") is not None  # now "b" is the least recently used
    store.put("c", results(1))
    assert store.get("b") is None and store.dropped("b") == EVICTED
    assert store.get("a") is not None and store.get("c") is not None and len(store) == 2


def test_bytes_bound_the_store_whatever_the_count():
    store = SessionStore(ttl_s=60, max_sessions=100, max_bytes=10 * MB, clock=Clock())
    for key in "abcd":
        store.put(key, results(3))
    assert store.total_bytes() <= 10 * MB and len(store) == 3 and store.dropped("a") == EVICTED
    with pytest.raises(ValueError, match="more than the 10 MB this server keeps for all sessions"):
        store.put("big", results(11))
    assert len(store) == 3  # a refused put drops nobody


def test_a_new_run_replaces_the_sessions_results_without_evicting_others():
    store = SessionStore(ttl_s=60, max_sessions=2, max_bytes=100 * MB, clock=Clock())
    store.put("a", results(1))
    store.put("b", results(1))
    newer = results(2)
    store.put("b", newer)
    assert store.get("a") is not None and store.get("b") is newer and store.total_bytes() == 3 * MB


def test_lookups_of_sessions_that_stored_nothing_keep_every_result():
    store = SessionStore(ttl_s=60, max_sessions=2, max_bytes=100 * MB, clock=Clock())
    store.put("visitor", results(1))
    for index in range(10_000):
        assert store.get(f"fresh-{index}") is None and store.dropped(f"fresh-{index}") is None
    assert store.get(None) is None
    assert store.get("visitor") is not None and len(store) == 1


def test_remembered_drops_are_bounded():
    store = SessionStore(ttl_s=60, max_sessions=1, max_bytes=100 * MB, clock=Clock(), remembered=3)
    for key in "abcdef":
        store.put(key, results(0.001))
    assert [store.dropped(k) for k in "abcde"] == [None, None, EVICTED, EVICTED, EVICTED]
