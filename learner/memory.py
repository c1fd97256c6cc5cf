"""Replay memory: class-balanced reservoir sampling (CBRS).

Chrysakis & Moens, "Online Continual Learning from Imbalanced Data", ICML 2020.
A class is a ``(task, label)`` pair. Until the memory is full everything is stored.
Once full, a sample of a class that is not among the largest evicts a random item of
a largest class, so small and new classes claim space from dominant ones; a sample of
a largest class instead goes through reservoir sampling within its own class (kept
with probability ``stored_c / seen_c``), so each class holds a uniform sample of its
own stream.

>>> memory = ReplayMemory(capacity=4, seed=0)
>>> memory.add(MemoryItem("intents", f"text {i}", "a") for i in range(10))
>>> memory.add([MemoryItem("intents", "lost card", "b")])
>>> memory.class_sizes()
{('intents', 'a'): 3, ('intents', 'b'): 1}
>>> len(memory.sample(10))
4
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MemoryItem", "ReplayMemory"]

Class = tuple[str, str]  # (task, label)

_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One remembered example; ``logits`` is room for DER++-style stored outputs."""

    task: str
    text: str
    label: str
    logits: tuple[float, ...] | None = None


class ReplayMemory:
    """Fixed-capacity, class-balanced replay memory (see the module docstring)."""

    def __init__(self, capacity: int = 5000, seed: int = 0) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity!r}")
        self.capacity = capacity
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self._rng = random.Random(self.seed)
        self._items: dict[Class, list[MemoryItem]] = {}  # insertion-ordered: part of the state
        self._seen: dict[Class, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, items: Iterable[MemoryItem]) -> None:
        for item in items:
            self._add_one(item)

    def _add_one(self, item: MemoryItem) -> None:
        c = (item.task, item.label)
        self._seen[c] = self._seen.get(c, 0) + 1
        stored = self._items.setdefault(c, [])
        if self._size < self.capacity:
            stored.append(item)
            self._size += 1
            return
        if len(stored) < max(len(v) for v in self._items.values()):
            # Take the space from a largest class (ties broken at random).
            self._evict_from_largest()
            stored.append(item)
            self._size += 1
        elif self._rng.random() < len(stored) / self._seen[c]:
            stored[self._rng.randrange(len(stored))] = item

    def sample(self, n: int) -> list[MemoryItem]:
        """``min(n, len(self))`` distinct stored items, uniformly at random."""
        n = min(n, self._size)
        if n <= 0:
            return []
        pool = [item for v in self._items.values() for item in v]
        return self._rng.sample(pool, n)

    def items(self) -> list[MemoryItem]:
        """Every stored item, class by class (a new list)."""
        return [item for v in self._items.values() for item in v]

    def sizes(self) -> dict[str, int]:
        """Stored items per task."""
        out: dict[str, int] = {}
        for (task, _), v in self._items.items():
            if v:
                out[task] = out.get(task, 0) + len(v)
        return out

    def class_sizes(self) -> dict[Class, int]:
        """Stored items per ``(task, label)`` class."""
        return {c: len(v) for c, v in self._items.items() if v}

    def seen(self) -> dict[Class, int]:
        """Samples offered per class since the memory was created."""
        return dict(self._seen)

    def state_dict(self) -> dict:
        """JSON-serialisable state; a restored memory continues exactly where this one is."""
        version, internal, gauss_next = self._rng.getstate()
        return {
            "version": _STATE_VERSION,
            "capacity": self.capacity,
            "seed": self.seed,
            "rng": [version, list(internal), gauss_next],
            "classes": [
                {
                    "task": task,
                    "label": label,
                    "seen": self._seen[(task, label)],
                    "items": [[it.text, None if it.logits is None else list(it.logits)] for it in v],
                }
                for (task, label), v in self._items.items()
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output.

        If this memory's capacity is below the state's size (capacity lowered between
        runs), items are evicted from the largest classes until it fits.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"memory state version {state.get('version')!r} is not {_STATE_VERSION}")
        items: dict[Class, list[MemoryItem]] = {}
        seen: dict[Class, int] = {}
        for entry in state["classes"]:
            c = (str(entry["task"]), str(entry["label"]))
            items[c] = [
                MemoryItem(c[0], str(text), c[1], None if logits is None else tuple(float(x) for x in logits))
                for text, logits in entry["items"]
            ]
            seen[c] = int(entry["seen"])
        version, internal, gauss_next = state["rng"]
        rng = random.Random()
        rng.setstate((version, tuple(internal), gauss_next))
        # Commit only once everything parsed.
        self._items, self._seen, self._rng = items, seen, rng
        self._size = sum(len(v) for v in items.values())
        while self._size > self.capacity:  # capacity was lowered since: shrink the way CBRS would
            self._evict_from_largest()

    def _evict_from_largest(self) -> None:
        largest = max(len(v) for v in self._items.values())
        victims = [k for k, v in self._items.items() if len(v) == largest]
        victim = self._items[self._rng.choice(victims)]
        i = self._rng.randrange(len(victim))
        victim[i] = victim[-1]  # swap-remove: O(1), order kept deterministic
        victim.pop()
        self._size -= 1

    def __repr__(self) -> str:
        return f"ReplayMemory(capacity={self.capacity}, size={self._size}, classes={len(self.class_sizes())})"
