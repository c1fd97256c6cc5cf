"""Delayed-prequential accuracy and label delays, per task: numbers for monitoring.

With labels that come later than their events, plain prequential accuracy can only score
predictions whose label rode inside the event. Delayed-prequential evaluation (Grzenda,
Gomes & Bifet, DMKD 2020) scores the prediction the model served *when the event
arrived* against the label that came later -- what users actually got -- not a
re-prediction by the model that has learned meanwhile. :class:`DelayedPrequential` keeps,
per task, the sliding accuracy of the last ``window`` joined labels and the most recent
``delay_window`` label delays (event time of the label minus that of its event); it is
handed :class:`~lifecycle.join_types.Joined` items (or plain numbers) and never touches
Prometheus: the caller exports :meth:`accuracy` as a gauge and :meth:`take_delays` into a
histogram.

Corrections (a second training on a new label) are not scored: the served prediction was
scored once, with the first label.

>>> dp = DelayedPrequential(window=3)
>>> for ok, delay in [(True, 5.0), (False, 50.0), (True, 500.0), (True, 5.0)]:
...     dp.observe("feedback", ok, delay)
>>> dp.accuracy("feedback"), dp.count("feedback"), dp.total_accuracy("feedback")
(0.6666666666666666, 4, 0.75)
>>> dp.delay_quantile("feedback", 0.5), [d for _, d in dp.take_delays()]
(27.5, [5.0, 50.0, 500.0, 5.0])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .join_types import Joined

__all__ = ["DelayedPrequential"]


class DelayedPrequential:
    def __init__(self, window: int = 200, delay_window: int = 1000,
                 max_unread: int = 100_000) -> None:
        for name, value in (("window", window), ("delay_window", delay_window),
                            ("max_unread", max_unread)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.window = window
        self.delay_window = delay_window
        self.max_unread = max_unread
        self._reset()

    def _reset(self) -> None:
        self._hits: dict[str, deque[bool]] = {}
        self._delays: dict[str, deque[float]] = {}
        self._count: dict[str, int] = {}
        self._correct: dict[str, int] = {}
        self._unread: deque[tuple[str, float]] = deque(maxlen=self.max_unread)

    def observe(self, task: str, correct: bool, delay_s: float) -> None:
        """One joined label: was the served prediction right, and how late was the label."""
        if task not in self._hits:
            self._hits[task] = deque(maxlen=self.window)
            self._delays[task] = deque(maxlen=self.delay_window)
            self._count[task] = self._correct[task] = 0
        self._hits[task].append(bool(correct))
        self._delays[task].append(float(delay_s))
        self._count[task] += 1
        self._correct[task] += bool(correct)
        self._unread.append((task, float(delay_s)))

    def observe_joined(self, joined: Iterable[Joined]) -> None:
        """Score joined items (``kind`` label or inline; corrections are skipped)."""
        for j in joined:
            if j.kind != "correction":
                self.observe(j.task, j.correct, j.delay_s)

    def tasks(self) -> list[str]:
        return list(self._hits)

    def accuracy(self, task: str) -> float:
        """Sliding delayed-prequential accuracy of the last ``window`` labels (0.0 before any)."""
        hits = self._hits.get(task)
        return sum(hits) / len(hits) if hits else 0.0

    def total_accuracy(self, task: str) -> float:
        """Over every label observed since the start."""
        n = self._count.get(task, 0)
        return self._correct[task] / n if n else 0.0

    def count(self, task: str) -> int:
        return self._count.get(task, 0)

    def delays(self, task: str) -> list[float]:
        """The last ``delay_window`` label delays of ``task``, oldest first."""
        return list(self._delays.get(task, ()))

    def delay_quantile(self, task: str, q: float) -> float | None:
        """Linear-interpolated quantile of the recent delays (None before any)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        values = sorted(self._delays.get(task, ()))
        if not values:
            return None
        pos = q * (len(values) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    def take_delays(self) -> list[tuple[str, float]]:
        """``(task, delay_s)`` observed since the last call (for a histogram); at most
        ``max_unread`` are kept between two calls (the oldest go first)."""
        out = list(self._unread)
        self._unread.clear()
        return out
