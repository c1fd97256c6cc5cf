"""What an ingestion agent does with one micro-batch, free of Faust so it can be unit-tested.

decode → validate → clean → dedup by id → predict every accepted event (before
learning: prequential) → publish predictions → drift detectors (streams/adaptation.py)
→ labeled, not-recently-seen texts, less the few held out as probes (streams/probe.py)
→ one learner update on the model thread → checkpoint when due. Each rejected
event is dead-lettered with its coordinates and reason; nothing is dropped
silently. The call returns only after the update is applied and every output is
acknowledged by the broker, so the agent acks (and Faust commits) after that.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from monitoring.metrics import Metrics
from streams.cleaning import clean_event
from streams.dedup import Deduplicator
from streams.handoff import ModelThread
from streams.probe import ProbeSets
from streams.records import (DeadLetter, Event, ExplanationRecord, Prediction, Reason,
                             RejectedEvent, dead_letter, decode_event)
from streams.settings import Settings

if TYPE_CHECKING:
    from learner.serving import ServingModel
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from streams.adaptation import DriftWatch

log = logging.getLogger(__name__)

Publish = Callable[[Any, Any], Awaitable[Any]]  # (key, record) -> awaitable delivery


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A consumed record with its coordinates (what a dead letter must carry)."""

    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp: float  # Kafka record timestamp, epoch seconds


@dataclass
class BatchReport:
    accepted: int = 0
    invalid: int = 0
    duplicate: int = 0
    trained: int = 0
    model_version: int = 0


class Pipeline:
    """One per worker; shared by the agents of all source topics."""

    def __init__(self, settings: Settings, learner: Learner, metrics: Metrics,
                 model_thread: ModelThread, checkpoints: CheckpointManager | None = None,
                 dedup: Deduplicator | None = None, drift: DriftWatch | None = None,
                 probes: ProbeSets | None = None, serving: ServingModel | None = None):
        self.settings = settings
        self.learner = learner
        self.metrics = metrics
        self.model = model_thread
        self.checkpoints = checkpoints
        self.dedup = dedup if dedup is not None else Deduplicator(
            id_capacity=settings.stream.dedup_ids,
            text_window=settings.stream.dedup_text_window)
        self.drift = drift
        self.probes = probes if probes is not None else ProbeSets(
            size=settings.metrics.probe_size, every=settings.metrics.probe_every)
        self.serving = serving
        self.publish_prediction: Publish | None = None
        self.publish_dead_letter: Publish | None = None
        self.publish_explanation: Publish | None = None
        self.last_update_ts: float | None = None
        self._explain_rng = random.Random(0)
        self._updates_since_checkpoint = 0
        self._updates_since_probe = 0
        self._last_checkpoint = time.monotonic()

    # -- start / stop ---------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the newest good checkpoint (if any); returns the model version resumed from."""
        if self.checkpoints is None:
            return self.learner.model_version
        extra = self.model.call(self.checkpoints.load_latest, self.learner)
        if extra:
            self.dedup.load_state_dict(extra.get("dedup", {}))
            self.probes.load_state_dict(extra.get("probes", {}))
        self._refresh_learner_gauges()
        log.info("resumed at model version %d", self.learner.model_version)
        return self.learner.model_version

    def checkpoint_now(self) -> None:
        """Synchronous checkpoint (shutdown path: the event loop is already gone)."""
        if self.checkpoints is None or self._updates_since_checkpoint == 0:
            return
        self.model.call(self._save, self._extra_state())

    # -- the batch ------------------------------------------------------------------------------
    async def handle(self, task: str, batch: Sequence[RawEvent]) -> BatchReport:
        report = BatchReport()
        deliveries: list[Awaitable[Any]] = []
        received_at = time.time()
        accepted: list[tuple[RawEvent, Event]] = []
        cfg = self.settings.stream
        for raw in batch:
            try:
                event = clean_event(decode_event(
                    raw.value, task=task, received_at=received_at,
                    max_text_chars=cfg.max_text_chars, max_payload_bytes=cfg.max_payload_bytes))
            except RejectedEvent as rejected:
                deliveries.append(await self._dead_letter(raw, rejected.reason, rejected.message))
                report.invalid += 1
                continue
            except Exception as exc:  # a bug in our code must not lose the event either
                log.exception("unexpected error decoding %s[%d]@%d", raw.topic, raw.partition,
                              raw.offset)
                deliveries.append(await self._dead_letter(
                    raw, Reason.internal_error, f"{type(exc).__name__} while decoding"))
                report.invalid += 1
                continue
            if self.dedup.seen_id(task, event.id):
                self.metrics.events.labels(topic=raw.topic, outcome="duplicate").inc()
                report.duplicate += 1
                continue
            self.metrics.events.labels(topic=raw.topic, outcome="accepted").inc()
            accepted.append((raw, event))
        report.accepted = len(accepted)

        if accepted:
            texts = [event.text for _, event in accepted]
            started = time.perf_counter()
            predict = self.serving.predict_many if self.serving is not None else self.learner.predict_many
            predictions = await self.model.run(predict, task, texts)
            self.metrics.predict_duration.labels(task=task).observe(time.perf_counter() - started)
            now = time.time()
            for (_, event), pred in zip(accepted, predictions):
                record = Prediction(id=event.id, task=task, label=pred.label,
                                    confidence=float(pred.confidence),
                                    model_version=pred.model_version, ts=now)
                deliveries.append(await self.publish_prediction(event.id, record))
            self.metrics.predictions.labels(task=task).inc(len(accepted))
            deliveries += await self._explain_sample(task, accepted, predictions)
            labeled = [(raw, event, pred) for (raw, event), pred in zip(accepted, predictions)
                       if event.label is not None]
            if labeled:
                self.metrics.observe_prequential(task, (p.label == e.label for _, e, p in labeled))
            if self.drift is not None:
                deliveries += await self.drift.observe(
                    task, texts, [p.label != e.label for _, e, p in labeled],
                    [e.label for _, e, _ in labeled])
            train = []
            for raw, event, _ in labeled:
                if self.dedup.repeat_text(task, event.text):
                    self.metrics.repeat_texts.labels(task=task).inc()
                elif not self.probes.take(task, event.id, event.text, event.label):
                    train.append((raw, event))
            if train:
                await self._learn(task, train)
                report.trained = len(train)

        # Outputs are delivered before the caller acks the batch: at-least-once end to end.
        if deliveries:
            await asyncio.gather(*deliveries)
        report.model_version = self.learner.model_version
        return report

    async def _learn(self, task: str, train: list[tuple[RawEvent, Event]]) -> None:
        texts = [event.text for _, event in train]
        labels = [event.label for _, event in train]
        stats = await self.model.run(self.learner.learn_many, task, texts, labels)
        done = time.time()
        m = self.metrics
        if stats.loss != stats.loss or stats.loss in (float("inf"), float("-inf")):
            m.update_failures.labels(task=task).inc()
            log.warning("skipped a %s update: non-finite loss", task)
            return
        m.updates.labels(task=task).inc()
        m.update_duration.labels(task=task).observe(stats.seconds)
        m.batch_size.labels(task=task).observe(stats.n_new)
        m.trained_samples.labels(task=task, kind="new").inc(stats.n_new)
        m.trained_samples.labels(task=task, kind="replay").inc(stats.n_replay)
        m.loss.labels(task=task).set(stats.loss)
        m.last_update.set(done)
        self.last_update_ts = done
        for raw, _ in train:
            m.freshness.labels(task=task).observe(max(0.0, done - raw.timestamp))
        self._refresh_learner_gauges()
        self._updates_since_checkpoint += 1
        self._updates_since_probe += 1
        if self._updates_since_probe >= self.settings.metrics.probe_every_updates:
            self._updates_since_probe = 0
            accuracy = await self.model.run(self.probes.evaluate, self.learner)
            for probe_task, forgetting in self.probes.record(accuracy).items():
                m.probe_accuracy.labels(task=probe_task).set(accuracy[probe_task])
                m.forgetting.labels(task=probe_task).set(forgetting)
        if self.checkpoints is not None and self._checkpoint_due():
            await self.model.run(self._save, self._extra_state())

    async def _explain_sample(self, task: str, accepted: list[tuple[RawEvent, Event]],
                              predictions) -> list[Awaitable[Any]]:
        """Explain a sampled fraction of this batch's predictions (SERVE_EXPLAIN_FRACTION)."""
        fraction = self.settings.serve.explain_fraction
        if fraction <= 0 or self.publish_explanation is None:
            return []
        out = []
        for (_, event), pred in zip(accepted, predictions):
            if pred.label is None or self._explain_rng.random() >= fraction:
                continue
            model = self.serving.model_for(task) if self.serving is not None else self.learner
            try:
                ex = await self.model.run(self._explain, model, task, event.text)
            except Exception:  # an explanation is a nicety; never fail the batch for it
                log.exception("explanation of %s failed", event.id)
                continue
            record = ExplanationRecord(id=event.id, task=task, label=ex.label,
                                       probability=ex.probability, method=ex.method,
                                       model_version=ex.model_version,
                                       words=ex.to_dict()["words"], ts=time.time())
            out.append(await self.publish_explanation(event.id, record))
        return out

    def _explain(self, model, task: str, text: str):
        from learner.explain import Explainer

        return Explainer(model).explain(task, text, method=self.settings.serve.explain_method)

    def _checkpoint_due(self) -> bool:
        cfg = self.settings.checkpoint
        return (self._updates_since_checkpoint >= cfg.every_updates
                or time.monotonic() - self._last_checkpoint >= cfg.every_s)

    def _extra_state(self) -> dict:
        # Snapshot on the event loop: the dedup sets are mutated there.
        return {"dedup": self.dedup.state_dict(), "probes": self.probes.state_dict()}

    def _save(self, extra: dict) -> None:
        path = self.checkpoints.save(self.learner, extra=extra)
        self._updates_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        log.info("checkpoint %s", path.name)

    def _refresh_learner_gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.learner.model_version)
        for task, size in self.learner.replay.sizes().items():
            m.memory_samples.labels(task=task).set(size)
        for task in self.learner.tasks():
            m.labels.labels(task=task).set(len(self.learner.labels(task)))

    async def _dead_letter(self, raw: RawEvent, reason: Reason, message: str) -> Awaitable[Any]:
        self.metrics.events.labels(topic=raw.topic, outcome="invalid").inc()
        self.metrics.dead_letters.labels(topic=raw.topic, reason=reason.value).inc()
        record: DeadLetter = dead_letter(raw.value, topic=raw.topic, partition=raw.partition,
                                         offset=raw.offset, reason=reason, message=message,
                                         ts=time.time())
        return await self.publish_dead_letter(f"{raw.topic}:{raw.partition}:{raw.offset}", record)
