"""The serving half of a micro-batch: admit → predict with the current version → outcomes.

decode → validate → clean → dedup by id (streams/admit.py) → one prediction per accepted event
from the snapshot being served (serving/snapshot.py, on the serving thread) → predictions,
dead letters and a sampled fraction of explanations handed to their outputs. What comes back
is the batch's :class:`~streams.records.Sample` list (cleaned text, label, the prediction that
served it, source coordinates) for whoever learns: the co-located trainer of the all-in-one
worker, or the samples topic of a serving replica.

Serving never waits for training: it runs on its own thread with its own copy of the model;
the trainer's versions reach it as snapshots swapped in between two batches.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from streams.admit import RawEvent, admit
from streams.records import (Event, Prediction, Reason, Sample, dead_letter, explanation_record)

if TYPE_CHECKING:
    import torch

    from monitoring.metrics import Metrics
    from serving.config import ServeConfig
    from serving.models import ServedModels
    from serving.snapshot import ModelSnapshot
    from streams.config import StreamConfig
    from streams.dedup import Deduplicator
    from streams.handoff import ModelThread

log = logging.getLogger(__name__)

Publish = Callable[[Any, Any], Awaitable[Awaitable[Any]]]   # Output.publish


@dataclass
class Outputs:
    """Where serving sends what it decided (``streams.outputs.Output.publish`` of each topic)."""

    predictions: Publish
    dead_letters: Publish
    explanations: Publish | None = None
    samples: Publish | None = None          # serving replicas: the trainer's input


@dataclass
class Served:
    """One batch after serving."""

    samples: list[Sample] = field(default_factory=list)
    features: "torch.Tensor | None" = None   # (len(samples), H) in head mode
    invalid: int = 0
    duplicate: int = 0
    # What :meth:`Serving.publish` hands to the outputs: the predictions (key, record) and
    # what explanations need (the snapshot that served, the accepted events, their top label).
    predictions: list[tuple[str, Prediction]] = field(default_factory=list)
    explain: "tuple[ModelSnapshot, list, list] | None" = None
    task: str = ""


class Serving:
    def __init__(self, *, limits: "StreamConfig", serve: "ServeConfig", metrics: "Metrics",
                 thread: "ModelThread", models: "ServedModels", outputs: Outputs,
                 dedup: "Deduplicator | None",
                 task_labels: "dict[str, frozenset[str] | None] | None" = None) -> None:
        self.limits = limits
        self.task_labels = task_labels or {}   # task -> fixed label set (None: any)
        self.serve = serve
        self.metrics = metrics
        self.thread = thread
        self.models = models
        self.outputs = outputs
        self.dedup = dedup
        self._explain_rng = random.Random(0)

    async def handle(self, task: str, batch: Sequence[RawEvent],
                     deliveries: list[Awaitable[Any]]) -> Served:
        """Serve one batch; the outputs' deliveries are appended to ``deliveries`` (the caller
        awaits them before anything learns from the batch or acknowledges it)."""
        served = await self.predict(task, batch, deliveries)
        await self.publish(served, deliveries)
        return served

    async def predict(self, task: str, batch: Sequence[RawEvent],
                      deliveries: list[Awaitable[Any]]) -> Served:
        """The first half of :meth:`handle`: admit the batch (dead letters handed to their
        output at once, into ``deliveries``) and predict it; its predictions wait in the
        result for :meth:`publish`. The all-in-one worker publishes them in the learning tail,
        so the serving thread starts on the next batch while the loop publishes this one."""
        admission = admit(batch, task=task, limits=self.limits, dedup=self.dedup,
                          received_at=time.time(), labels=self.task_labels.get(task))
        served = Served(duplicate=len(admission.duplicates), task=task)
        for raw, reason, message in admission.rejected:
            deliveries.append(await self._dead_letter(raw, reason, message))
        served.invalid = len(admission.rejected)
        outcomes: collections.Counter = collections.Counter(
            (raw.topic, "duplicate") for raw, _ in admission.duplicates)
        accepted = admission.accepted
        snapshot = self.models.model_for(task)   # this batch's version, whatever swaps later
        scores = None
        if accepted:
            accepted, scores, rejected = await self._score(snapshot, task, accepted)
            for raw, message in rejected:   # this event alone made the model fail
                deliveries.append(await self._dead_letter(raw, Reason.internal_error, message))
                served.invalid += 1
        for raw, _ in accepted:
            outcomes[(raw.topic, "accepted")] += 1
        for (topic, outcome), n in outcomes.items():   # one counter update per batch
            self.metrics.events.labels(topic=topic, outcome=outcome).inc(n)
        if not accepted:
            return served
        now = time.time()
        top = scores.top()
        for (raw, event), (label, confidence) in zip(accepted, top):
            served.predictions.append((event.id, Prediction(
                id=event.id, task=task, label=label, confidence=float(confidence),
                model_version=scores.model_version, ts=now)))
            served.samples.append(Sample(
                id=event.id, task=task, text=event.text, label=event.label, ts=event.ts,
                topic=raw.topic, partition=raw.partition, offset=raw.offset,
                timestamp=raw.timestamp, predicted=label, confidence=float(confidence),
                model_version=scores.model_version))
        served.features = scores.features
        served.explain = (snapshot, accepted, top)
        return served

    async def publish(self, served: Served, deliveries: list[Awaitable[Any]]) -> None:
        """The second half of :meth:`handle`: hand ``served``'s predictions (and a sampled
        fraction of explanations) to their outputs; the deliveries go into ``deliveries``."""
        predictions, served.predictions = served.predictions, []   # once, whoever calls twice
        for key, record in predictions:
            deliveries.append(await self.outputs.predictions(key, record))
        if predictions:
            self.metrics.predictions.labels(task=served.task).inc(len(predictions))
        if served.explain is not None:
            snapshot, accepted, top = served.explain
            served.explain = None
            deliveries += await self._explain_sample(snapshot, served.task, accepted, top)

    async def _score(self, snapshot: "ModelSnapshot", task: str,
                     accepted: list[tuple[RawEvent, Event]]):
        """Score the batch; if that fails, event by event: an event that fails alone comes back
        in ``rejected`` (to dead-letter), a failure of every event is systemic and raises."""
        texts = [event.text for _, event in accepted]
        started = time.perf_counter()
        try:
            scores = await self.thread.run(snapshot.score, task, texts)
        except Exception as batch_error:
            log.warning("predicting a %s batch of %d failed (%s: %s); retrying event by event",
                        task, len(texts), type(batch_error).__name__, batch_error)
            kept, parts, rejected = [], [], []
            for item in accepted:
                try:
                    parts.append(await self.thread.run(snapshot.score, task, [item[1].text]))
                    kept.append(item)
                except Exception as exc:
                    rejected.append((item[0], f"prediction failed: {type(exc).__name__}"))
            if not kept:
                raise batch_error
            return kept, _concat(parts), rejected
        self.metrics.predict_duration.labels(task=task).observe(time.perf_counter() - started)
        return accepted, scores, []

    async def _explain_sample(self, snapshot: "ModelSnapshot", task: str,
                              accepted: list[tuple[RawEvent, Event]],
                              top: list) -> list[Awaitable[Any]]:
        """Explain a sampled fraction of this batch's predictions (SERVE_EXPLAIN_FRACTION)."""
        fraction = self.serve.explain_fraction
        if fraction <= 0 or self.outputs.explanations is None:
            return []
        out = []
        for (_, event), (label, _) in zip(accepted, top):
            if label is None or self._explain_rng.random() >= fraction:
                continue
            try:
                ex = await self.thread.run(self._explain, snapshot, task, event.text)
            except Exception:  # an explanation is a nicety; never fail the batch for it
                log.exception("explanation of %s failed", event.id)
                continue
            record = explanation_record(
                max_bytes=self.limits.dead_letter_max_bytes, id=event.id, task=task,
                label=ex.label, probability=ex.probability, method=ex.method,
                model_version=ex.model_version, words=ex.to_dict()["words"], ts=time.time())
            out.append(await self.outputs.explanations(event.id, record))
        return out

    def _explain(self, snapshot, task: str, text: str):
        from learner.explain import Explainer

        return Explainer(snapshot).explain(task, text, method=self.serve.explain_method)

    async def _dead_letter(self, raw: RawEvent, reason: Reason, message: str) -> Awaitable[Any]:
        self.metrics.events.labels(topic=raw.topic, outcome="invalid").inc()
        self.metrics.dead_letters.labels(topic=raw.topic, reason=reason.value).inc()
        record = dead_letter(raw.value, topic=raw.topic, partition=raw.partition,
                             offset=raw.offset, reason=reason, message=message, ts=time.time(),
                             max_bytes=self.limits.dead_letter_max_bytes)
        return await self.outputs.dead_letters(raw.key, record)


def _concat(parts: list) -> Any:
    """One Scores from the per-event Scores of a batch retried event by event."""
    import torch

    from serving.snapshot import Scores

    features = [p.features for p in parts]
    return Scores(labels=parts[0].labels, probs=torch.cat([p.probs for p in parts]),
                  features=None if any(f is None for f in features) else torch.cat(features),
                  model_version=parts[0].model_version)
