"""Labels that come later than their events, where the model learns (worker or trainer).

:class:`LabelJoin` puts together the pending store (lifecycle/join.py), its incremental
persistence with the checkpoints (lifecycle/join_log.py) and the delayed-prequential score
(lifecycle/delayed.py), and turns their results into what the trainer acts on: items to
train once (:meth:`take_training`), records to dead-letter with their coordinates
(:meth:`take_dead_letters`) and metrics. One owner, under the trainer's batch lock.

* every accepted event is offered (:meth:`observe_samples`): an unlabeled one waits in the
  store for its label; a labeled one is remembered, so that a later label for it is a
  duplicate or a correction, never a second training;
* a record of the labels topic is decoded (:func:`lifecycle.labels.decode_label`: a bad one
  is dead-lettered with its reason) and joined (:meth:`add_records`);
* joined labels are scored against the prediction served when the event arrived
  (delayed-prequential accuracy, ``streamlearner_learner_delayed_prequential_accuracy_ratio``)
  and their event-time delay is observed;
* the store's state is part of every checkpoint (:meth:`persist` returns the small reference
  the checkpoint's ``extra`` carries; :meth:`restore` rebuilds exactly that state), so the
  acks released by a checkpoint never let Kafka forget an event still waiting for its label.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from lifecycle.delayed import DelayedPrequential
from lifecycle.join import PendingStore
from lifecycle.join_log import LabelLog
from lifecycle.join_types import Joined, LabelResult, PendingEvent
from lifecycle.labels import RejectedLabel, decode_label

if TYPE_CHECKING:
    from lifecycle.join_types import JoinConfig
    from monitoring.metrics import Metrics
    from streams.admit import RawEvent
    from streams.records import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelDeadLetter:
    """A label record to dead-letter: its bytes as received, coordinates, reason, message."""

    payload: bytes
    topic: str
    partition: int
    offset: int
    reason: str
    message: str


class LabelJoin:
    def __init__(self, config: "JoinConfig", *, tasks: dict, directory, metrics: "Metrics",
                 window: int = 200) -> None:
        self.config = config
        self.tasks = tasks                  # task -> fixed label set (None: any)
        self.metrics = metrics
        self.store = PendingStore(config, tasks)
        self.log = LabelLog(directory)
        self.scores = DelayedPrequential(window=window)
        self.changed = False                # since the last persist: the next ack must wait
        self._dead: list[LabelDeadLetter] = []
        self._evicted_seen = dict.fromkeys(self.store.stats()["evicted"], 0)

    # -- state --------------------------------------------------------------------------
    def restore(self, ref: dict | None) -> None:
        """Load the state a checkpoint's reference names (None: a first start)."""
        self.log.restore(self.store, ref)
        self._evicted_seen = dict(self.store.stats()["evicted"])
        self.refresh_gauges()
        stats = self.store.stats()
        if ref is not None:
            log.info("label join restored: %d events pending, %d labels waiting, %d to train",
                     stats["pending_events"], stats["early_labels"], stats["ready"])

    def persist(self) -> dict:
        """Make the store durable now (from the checkpoint's ``extra``); its reference."""
        ref = self.log.persist(self.store)
        self.changed = False
        return ref

    # -- input --------------------------------------------------------------------------
    def observe_samples(self, task: str, samples: Sequence["Sample"]) -> None:
        """Every accepted event of a batch: unlabeled ones wait for their label."""
        for s in samples:
            event = PendingEvent(s.id, task, s.text, float(s.ts), s.predicted,
                                 float(s.confidence), int(s.model_version), s.label)
            self._note(self.store.add_event(event))
        self.changed = True

    def add_records(self, batch: Sequence["RawEvent"]) -> int:
        """Decode and join one batch of labels-topic records; returns how many were valid."""
        valid = 0
        now = time.time()
        for raw in batch:
            try:
                label = decode_label(raw.value, tasks=self.tasks, received_at=now,
                                     source=(raw.topic, raw.partition, raw.offset))
            except RejectedLabel as bad:
                self.metrics.events.labels(topic=raw.topic, outcome="invalid").inc()
                self._dead.append(LabelDeadLetter(raw.value or b"", raw.topic, raw.partition,
                                                  raw.offset, bad.reason.value, bad.message))
                self.metrics.label_outcomes.labels(task=self._task_label(None),
                                                   outcome="invalid").inc()
                continue
            valid += 1
            self.metrics.events.labels(topic=raw.topic, outcome="accepted").inc()
            self._note([self.store.add_label(label)])
        self.changed = True
        return valid

    def _note(self, results: Iterable[LabelResult]) -> None:
        for result in results:
            if not result.outcome.final:
                continue
            self.metrics.label_outcomes.labels(task=self._task_label(result.task),
                                               outcome=result.outcome.value).inc()
            if result.dead_letter is not None:
                self._dead.append(self._dead_letter(result))

    def _task_label(self, task: str | None) -> str:
        from monitoring.metrics import NO_TASK

        return task if task is not None and task in self.tasks else NO_TASK

    @staticmethod
    def _dead_letter(result: LabelResult) -> LabelDeadLetter:
        label = result.label
        topic, partition, offset = label.source if label.source is not None else ("", -1, -1)
        payload = (label.payload or "").encode("utf-8", "surrogatepass")
        return LabelDeadLetter(payload, topic, partition, offset, result.dead_letter,
                               result.message or result.outcome.value)

    # -- output -------------------------------------------------------------------------
    def take_training(self) -> dict[str, list[Joined]]:
        """Joined labels to train on now, by task (each exactly once). Inline labels are
        not here: the event's own batch trained them."""
        by_task: dict[str, list[Joined]] = {}
        joined = [j for j in self.store.take_ready() if j.kind != "inline"]
        self.scores.observe_joined(joined)
        for j in joined:
            by_task.setdefault(j.task, []).append(j)
            if j.kind == "label":
                self.metrics.label_delay.labels(task=j.task).observe(max(0.0, j.delay_s))
        for task in {j.task for j in joined}:
            self.metrics.delayed_prequential.labels(task=task).set(self.scores.accuracy(task))
        return by_task

    def take_dead_letters(self) -> list[LabelDeadLetter]:
        """Labels rejected, expired unmatched or otherwise dead-lettered since the last call."""
        self._note(self.store.take_expired())
        out, self._dead = self._dead, []
        return out

    def refresh_gauges(self) -> None:
        stats = self.store.stats()
        m = self.metrics
        m.labels_pending_events.set(stats["pending_events"])
        m.labels_pending_bytes.set(stats["pending_bytes"])
        m.labels_waiting.set(stats["early_labels"])
        for cause, n in stats["evicted"].items():
            new = n - self._evicted_seen.get(cause, 0)
            if new > 0:
                m.labels_evicted.labels(cause=cause).inc(new)
        self._evicted_seen = dict(stats["evicted"])

    def stats(self) -> dict:
        return self.store.stats()
