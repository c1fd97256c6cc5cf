"""Bounded de-duplication of event ids and repeated texts.

Kafka delivers at least once and users re-publish, so the same event can
arrive twice. :class:`Deduplicator` remembers, per task, the most recent ids
(a repeat is dropped) and the hashes of the most recent cleaned texts (a
repeat is still predicted but not trained on again). Memory is bounded by the
capacities times the number of tasks. Not thread-safe: one owner, one loop.

>>> d = Deduplicator(id_capacity=2, text_window=2)
>>> d.seen_id("feedback", "a"), d.seen_id("feedback", "a"), d.seen_id("market", "a")
(False, True, False)
"""

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["BoundedSeen", "Deduplicator"]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _text_key(text: str) -> str:
    """A short stable hash of ``text`` (32 hex characters)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class BoundedSeen:
    """A set of at most ``capacity`` keys that forgets the least recently added.

    >>> s = BoundedSeen(2)
    >>> s.add("a"), s.add("b"), s.add("a"), s.add("c")
    (False, False, True, False)
    >>> s.state()  # "b" was the least recent, so it went
    ['a', 'c']
    """

    def __init__(self, capacity: int) -> None:
        _check_int("capacity", capacity, 1)
        self.capacity = capacity
        self._reset()

    def _reset(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """Record ``key`` as the most recent; return whether it was already present."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def state(self) -> list[str]:
        """The keys, oldest first."""
        return list(self._keys)

    @classmethod
    def from_state(cls, capacity: int, keys: Iterable[str]) -> "BoundedSeen":
        """Rebuild from :meth:`state`; keeps the newest ``capacity`` keys."""
        seen = cls(capacity)
        for key in keys:
            seen.add(key)
        return seen


class Deduplicator:
    """Per-task memory of recent event ids and recent cleaned-text hashes.

    ``text_window=0`` turns text de-duplication off.
    """

    def __init__(self, id_capacity: int = 100_000, text_window: int = 10_000) -> None:
        _check_int("id_capacity", id_capacity, 1)
        _check_int("text_window", text_window, 0)
        self.id_capacity = id_capacity
        self.text_window = text_window
        self._reset()

    def _reset(self) -> None:
        self._ids: dict[str, BoundedSeen] = {}
        self._texts: dict[str, BoundedSeen] = {}

    def seen_id(self, task: str, event_id: str) -> bool:
        """Whether ``(task, event_id)`` was seen recently; records it if not."""
        seen = self._ids.get(task)
        if seen is None:
            seen = self._ids[task] = BoundedSeen(self.id_capacity)
        return seen.add(event_id)

    def repeat_text(self, task: str, cleaned_text: str) -> bool:
        """Whether this cleaned text was seen recently for ``task``; records it if not."""
        if self.text_window == 0:
            return False
        seen = self._texts.get(task)
        if seen is None:
            seen = self._texts[task] = BoundedSeen(self.text_window)
        return seen.add(_text_key(cleaned_text))

    def state_dict(self) -> dict:
        """JSON-serialisable state: keys per task, oldest first."""
        return {
            "ids": {task: seen.state() for task, seen in self._ids.items()},
            "texts": {task: seen.state() for task, seen in self._texts.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Replace the state with ``state``; the current capacities apply.

        When a capacity shrank since the state was saved, the oldest keys go.
        """
        try:
            ids = {t: BoundedSeen.from_state(self.id_capacity, keys)
                   for t, keys in state["ids"].items()}
            texts = {}
            if self.text_window:
                texts = {t: BoundedSeen.from_state(self.text_window, keys)
                         for t, keys in state["texts"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"state is not a Deduplicator state_dict: {exc!r}") from None
        self._ids, self._texts = ids, texts
