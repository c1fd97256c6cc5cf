"""Inference lanes: independent CPU threads for the sub-batches of one inference batch.

One forward pass of a small transformer over a sub-batch of 8 texts is too small for an
OpenMP team: with every core in one parallel region, each op ends at a barrier, so a core
taken for a moment by anything else (the event loop, the learner, the broker) stalls the
whole team. Lanes run whole sub-batches side by side instead, one intra-op thread each
(several once there are fewer sub-batches than threads), handed out longest first, so a
preempted lane delays only its own sub-batch. Measured on 2 cores (bf16 MiniLM, batches of
32): 1.2x the texts/s of a 2-thread OpenMP team on a quiet machine and 1.25x with another
process taking 30% of a core (docs/performance.md).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

__all__ = ["Lanes", "lanes_for"]

T = TypeVar("T")
R = TypeVar("R")


class Lanes:
    """``n`` lane threads; :meth:`map` runs items side by side, results in item order."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"lanes need n >= 1, got {n}")
        self.n = n
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="streamlearner-lane")

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(item) for item in items]`` across the lanes, each call under inference mode
        (grad mode is per thread). Items are expected in ascending cost (texts sorted by
        length): the costliest go first, so the lanes finish together."""
        items = list(items)
        if not items:
            return []
        per_lane = max(1, self.n // min(self.n, len(items)))

        def one(item: T) -> R:
            if torch.get_num_threads() != per_lane:   # this lane thread's own OpenMP team
                torch.set_num_threads(per_lane)
            with torch.inference_mode():
                return fn(item)

        futures = {i: self._pool.submit(one, items[i]) for i in reversed(range(len(items)))}
        return [futures[i].result() for i in range(len(items))]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_LANES: dict[int, Lanes] = {}
_LOCK = threading.Lock()


def lanes_for(n: int) -> Lanes | None:
    """The process's lanes for ``n`` threads (shared, made on first use); None for one."""
    if n <= 1:
        return None
    with _LOCK:
        if n not in _LANES:
            _LANES[n] = Lanes(n)
        return _LANES[n]
