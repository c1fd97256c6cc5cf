"""Per-task probe sets: a few labeled events held out of training, to measure forgetting.

One labeled event in ``METRICS_PROBE_EVERY`` (chosen by a hash of its id, so a redelivery
makes the same choice) goes to its task's probe set instead of training, until the set holds
``METRICS_PROBE_SIZE`` events. Every ``METRICS_PROBE_EVERY_UPDATES`` updates all probe sets
are predicted on the model thread: ``probe_accuracy`` per task, and ``forgetting`` = the best
accuracy the current probe set ever had minus the current one (0 when never worse).
The sets travel in checkpoints, so forgetting keeps its meaning across restarts.

>>> p = ProbeSets(size=2, every=1)
>>> p.take("feedback", "a", "lost card", "lost_card"), p.take("feedback", "b", "rate?", "rate")
(True, True)
>>> p.take("feedback", "c", "too many", "rate")
False
>>> _ = p.record({"feedback": 1.0})
>>> p.record({"feedback": 0.5})
{'feedback': 0.5}
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner.learner import Learner


class ProbeSets:
    def __init__(self, size: int = 50, every: int = 10):
        self.size = size
        self.every = every
        self._reset()

    def _reset(self) -> None:
        self.items: dict[str, list[tuple[str, str]]] = {}   # task -> [(text, label)]
        self.best: dict[str, float] = {}
        self.accuracy: dict[str, float] = {}

    def take(self, task: str, event_id: str, text: str, label: str) -> bool:
        """True when the event goes to the probe set (and must not be trained on)."""
        items = self.items.setdefault(task, [])
        if len(items) >= self.size or zlib.crc32(event_id.encode()) % self.every:
            return False
        items.append((text, label))
        self.best.pop(task, None)   # a changed probe set: old accuracies are not comparable
        return True

    def sizes(self) -> dict[str, int]:
        return {task: len(items) for task, items in self.items.items()}

    def clear(self, task: str | None = None) -> None:
        """Drop the probe set of ``task`` (all when None); new events refill it."""
        for t in ([task] if task is not None else list(self.items)):
            self.items.pop(t, None)
            self.best.pop(t, None)
            self.accuracy.pop(t, None)

    def evaluate(self, learner: Learner) -> dict[str, float]:
        """Accuracy per task (model thread)."""
        out = {}
        for task, items in self.items.items():
            if items:
                preds = learner.predict_many(task, [t for t, _ in items])
                out[task] = sum(p.label == y for p, (_, y) in zip(preds, items)) / len(items)
        return out

    def record(self, accuracy: dict[str, float]) -> dict[str, float]:
        """Store an evaluation; returns forgetting per task."""
        forgetting = {}
        for task, acc in accuracy.items():
            self.accuracy[task] = acc
            self.best[task] = max(self.best.get(task, acc), acc)
            forgetting[task] = self.best[task] - acc
        return forgetting

    def state_dict(self) -> dict:
        return {"items": {t: [list(x) for x in v] for t, v in self.items.items()},
                "best": dict(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.items = {t: [tuple(x) for x in v][: self.size]
                      for t, v in state.get("items", {}).items()}
        self.best = {t: float(v) for t, v in state.get("best", {}).items() if t in self.items}
