"""What an ingestion agent does with one micro-batch, free of Faust so it can be unit-tested.

decode → validate → clean → dedup by id → predict every accepted event (before
learning: prequential) → publish predictions → drift detectors (streams/adaptation.py)
→ labeled, not-recently-seen texts, less the few held out as probes (streams/probe.py)
→ one learner update on the model thread → checkpoint when due. Each rejected
event is dead-lettered with its coordinates and reason; nothing is dropped
silently.

Exactly-once effect on the model: batches run one at a time (across all agents), and a
batch's ``ack`` (which lets Faust commit its offsets) is called only once a checkpoint
holds its effect: at the next checkpoint when it changed the model, at once when it did not
and nothing before it waits. A crash redelivers exactly the events after the restored
checkpoint; the checkpoint carries the dedup ids of everything it contains, so a
redelivered event that it already holds is recognised and not trained twice. The update
journal (streams/journal.py) records the event ids of every update of the model's history.

Every outcome of a batch (predictions, dead letters, explanations, drift alerts) is delivered
before the model learns from it, so whatever the model holds already has its outcome.
Fail-stop: an exception anywhere in the batch path that is not an event's own fault (an
output the broker refuses or that stays undeliverable after its retries, a failed update, a
bug) stops the pipeline (:meth:`Pipeline.fail`): that batch and every later one stay
unacknowledged, nothing is checkpointed any more (the model may hold half of that batch),
``on_failure`` tells the worker to stop (exit code 3), and a restart resumes at the last
checkpoint with Kafka redelivering everything after it. A decode error or a prediction that
fails for one event alone dead-letters that event and goes on.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from monitoring.metrics import Metrics
from streams.cleaning import clean_event
from streams.dedup import Deduplicator
from streams.handoff import ModelThread
from streams.outputs import OutputError, deliver_all
from streams.probe import ProbeSets
from streams.records import (DeadLetter, Event, ModelEvent, Prediction, Reason, RejectedEvent,
                             dead_letter, decode_event, explanation_record)
from streams.settings import Settings

if TYPE_CHECKING:
    from learner.serving import ServingModel
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from streams.adaptation import DriftWatch
    from streams.guard import StabilityGuard
    from streams.journal import UpdateJournal

log = logging.getLogger(__name__)

Publish = Callable[[Any, Any], Awaitable[Any]]  # (key, record) -> awaitable delivery
Ack = Callable[[], Awaitable[Any]]  # lets the consumer commit a batch's offsets


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
    refused: bool = False  # draining or failed: not processed, not acked (redelivered)
    failed: bool = False   # this batch stopped the pipeline (see Pipeline.fail)


class PipelineFailed(RuntimeError):
    """The pipeline stopped on a failure; ``stage`` is where (a metric label)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class Pipeline:
    """One per worker; shared by the agents of all source topics."""

    def __init__(self, settings: Settings, learner: Learner, metrics: Metrics,
                 model_thread: ModelThread, checkpoints: CheckpointManager | None = None,
                 dedup: Deduplicator | None = None, drift: DriftWatch | None = None,
                 probes: ProbeSets | None = None, serving: ServingModel | None = None,
                 journal: UpdateJournal | None = None, guard: StabilityGuard | None = None,
                 champion: CheckpointManager | None = None):
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
        self.publish_model_event: Publish | None = None
        self.journal = journal
        self.guard = guard
        self.champion = champion
        self.last_update_ts: float | None = None
        self._explain_rng = random.Random(0)
        self._updates_since_checkpoint = 0
        self._updates_since_probe = 0
        self._last_checkpoint = time.monotonic()
        self._lock: asyncio.Lock | None = None
        self._pending: list[Ack] = []      # acks waiting for a checkpoint, in batch order
        self._pending_events = 0
        self._dirty = False                 # the model changed since the last checkpoint
        self._in_batch = False
        self._draining = False
        self._last_batch = time.monotonic()
        self._stage = "internal"
        self._batch_events = 0            # events of the batch being handled
        self._checkpoint_failures = 0     # consecutive
        self.failure: PipelineFailed | None = None
        self.on_failure: Callable[[PipelineFailed], Any] | None = None  # the worker stops

    # -- fail-stop --------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, stage: str, exc: BaseException) -> PipelineFailed:
        """Stop for good: no ack, no checkpoint from now on; tell the worker once."""
        if self.failure is not None:
            return self.failure
        self.failure = PipelineFailed(stage, exc)
        self.metrics.batch_failures.labels(stage=stage).inc()
        waiting = self._pending_events + self._batch_events
        if isinstance(exc, OutputError):
            log.error("output topic %r refuses delivery (%s: %s); stopping without "
                      "acknowledging this batch or anything after it: the %d events consumed "
                      "since the last checkpoint are redelivered after a restart, once the "
                      "cause is fixed", exc.topic, exc.reason, exc.cause, waiting)
        else:
            log.error("%s failed (%s: %s); stopping without acknowledging this batch or anything "
                      "after it: the %d events consumed since the last checkpoint are "
                      "redelivered after a restart", stage, type(exc).__name__, exc, waiting,
                      exc_info=exc)
        self._pending = []   # never acked: their events come back after the restart
        self._dirty = False  # nothing of the failed batch may reach a checkpoint
        if self.on_failure is not None:
            try:
                self.on_failure(self.failure)
            except Exception:
                log.exception("on_failure callback raised")
        return self.failure

    # -- start / stop ---------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the newest good checkpoint (if any); returns the model version resumed from."""
        if self.checkpoints is None:
            return self.learner.model_version
        extra = self.model.call(self.checkpoints.load_latest, self.learner)
        if extra:
            self.dedup.load_state_dict(extra.get("dedup", {}))
            self.probes.load_state_dict(extra.get("probes", {}))
        version = self.learner.model_version
        if self.journal is not None:
            kept = self.journal.truncate_after(version)
            log.info("update journal: %d updates in the model's history", kept)
        if self.guard is not None and self.champion is not None:
            self._restore_champion(version)
        self._refresh_learner_gauges()
        log.info("resumed at model version %d", version)
        return version

    def _restore_champion(self, version: int) -> None:
        newest = self.champion.latest()
        if newest is None:
            return
        if self.champion.version_of(newest) > version:
            # Its lineage is gone (a crash lost the updates after `version`): not comparable.
            self.champion.discard_newer(version, self.checkpoints.directory / "discarded")
            return
        extra = self.champion.extra_of(newest) or {}
        self.guard.load_state_dict(extra.get("guard", {}))
        if self.guard.version is not None:
            self.metrics.champion_version.set(self.guard.version)

    def checkpoint_now(self) -> None:
        """Synchronous checkpoint (shutdown fallback once the event loop is gone): only
        when no batch was cut short, so the checkpoint never holds half a batch."""
        if self.checkpoints is None or not self._dirty or self._in_batch or self.failed:
            return
        self.model.call(self._save, self._extra_state())

    # -- acknowledgement ------------------------------------------------------------------------
    def _batch_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _checkpoint(self) -> bool:
        """Save (model thread), then ack every batch it holds; False if the save failed."""
        if self.failed:
            return False
        try:
            await self.model.run(self._save, self._extra_state())
        except Exception as exc:
            self.metrics.checkpoint_failures.inc()
            self._checkpoint_failures += 1
            if self._checkpoint_failures >= self.settings.checkpoint.max_failures:
                self.fail("checkpoint", exc)
                return False
            log.exception("checkpoint failed (%d in a row); %d events stay unacknowledged and "
                          "will be retried", self._checkpoint_failures, self._pending_events)
            return False
        self._checkpoint_failures = 0
        await self._ack_pending()
        return True

    async def _ack_pending(self) -> None:
        if self.failed:
            return
        pending, self._pending = self._pending, []
        self._pending_events = 0
        self.metrics.pending_events.set(0)
        for ack in pending:
            try:
                await ack()
            except Exception as exc:   # the later batches must not be acked past this one
                self.fail("ack", exc)
                return

    async def _settle(self, ack: Ack | None, n_events: int) -> None:
        """After a batch: queue its ack behind the next checkpoint, checkpoint when due."""
        if ack is not None:
            if self.checkpoints is None:
                await ack()
            else:
                self._pending.append(ack)
                self._pending_events += n_events
        if self.checkpoints is None or self.failed:
            return
        if self._dirty and self._checkpoint_due():
            await self._checkpoint()
        elif not self._dirty and self._pending:
            await self._ack_pending()   # nothing changed the model since the last checkpoint
        self.metrics.pending_events.set(self._pending_events)

    async def flush_if_idle(self) -> None:
        """Timer: checkpoint and ack when events wait and the stream went quiet."""
        if (self.failed or not self._pending
                or time.monotonic() - self._last_batch < self.settings.checkpoint.idle_s):
            return
        async with self._batch_lock():
            if not self._pending or self.failed:
                return
            try:
                if self._dirty:
                    await self._checkpoint()
                else:
                    await self._ack_pending()
            except Exception as exc:
                self.fail("checkpoint", exc)

    async def drain(self) -> None:
        """Shutdown: refuse new batches, finish the running one, checkpoint, ack everything
        (after a failure: nothing; the unacknowledged events are redelivered)."""
        self._draining = True
        async with self._batch_lock():
            if self.failed:
                log.warning("not draining: the pipeline stopped on a failure (%s)", self.failure)
                return
            if self._dirty and self.checkpoints is not None:
                await self._checkpoint()
            elif self._pending:
                await self._ack_pending()
        log.info("drained at model version %d", self.learner.model_version)

    # -- the batch ------------------------------------------------------------------------------
    async def handle(self, task: str, batch: Sequence[RawEvent],
                     ack: Ack | None = None) -> BatchReport:
        """Process one micro-batch; ``ack`` is called once its effect is durable (see module
        doc). Batches of all agents run one at a time."""
        if self._draining or self.failed:
            return BatchReport(refused=True)
        async with self._batch_lock():
            if self._draining or self.failed:
                return BatchReport(refused=True)
            self._in_batch = True
            self._stage = "decode"
            self._batch_events = len(batch)
            try:
                report = await self._handle(task, batch)
            except Exception as exc:
                self.fail("publish" if isinstance(exc, OutputError) else self._stage, exc)
                return BatchReport(refused=True, failed=True)
            finally:
                self._in_batch = False
                self._batch_events = 0
            self._last_batch = time.monotonic()
            try:
                await self._settle(ack, len(batch))
            except Exception as exc:
                self.fail("ack", exc)
            return report

    async def _handle(self, task: str, batch: Sequence[RawEvent]) -> BatchReport:
        deliveries: list[Awaitable[Any]] = []
        try:
            return await self._handle_batch(task, batch, deliveries)
        except BaseException:
            for d in deliveries:   # never started (the batch failed before delivering them)
                if inspect.iscoroutine(d) and inspect.getcoroutinestate(d) == inspect.CORO_CREATED:
                    d.close()
            raise

    async def _handle_batch(self, task: str, batch: Sequence[RawEvent],
                            deliveries: list[Awaitable[Any]]) -> BatchReport:
        report = BatchReport()
        received_at = time.time()
        accepted: list[tuple[RawEvent, Event]] = []
        cfg = self.settings.stream
        outcomes: collections.Counter = collections.Counter()
        for raw in batch:
            try:
                event = clean_event(decode_event(
                    raw.value, task=task, received_at=received_at,
                    max_text_chars=cfg.max_text_chars, max_payload_bytes=cfg.max_payload_bytes,
                    max_id_chars=cfg.max_id_chars, max_label_chars=cfg.max_label_chars))
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
                outcomes[(raw.topic, "duplicate")] += 1
                report.duplicate += 1
                continue
            accepted.append((raw, event))

        train: list[tuple[RawEvent, Event]] = []
        if accepted:
            self._stage = "predict"
            accepted, predictions, rejected = await self._predict(task, accepted)
            for raw, message in rejected:   # this event alone made the model fail
                deliveries.append(await self._dead_letter(raw, Reason.internal_error, message))
                report.invalid += 1
        for raw, _ in accepted:
            outcomes[(raw.topic, "accepted")] += 1
        for (topic, outcome), n in outcomes.items():   # one counter update per batch, not per event
            self.metrics.events.labels(topic=topic, outcome=outcome).inc(n)
        report.accepted = len(accepted)
        if accepted:
            texts = [event.text for _, event in accepted]
            self._stage = "publish"
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
                self._stage = "internal"
                deliveries += await self.drift.observe(
                    task, texts, [p.label != e.label for _, e, p in labeled],
                    [e.label for _, e, _ in labeled])
            for raw, event, _ in labeled:
                if self.dedup.repeat_text(task, event.text):
                    self.metrics.repeat_texts.labels(task=task).inc()
                elif not self.probes.take(task, event.id, event.text, event.label):
                    train.append((raw, event))

        # Every outcome is delivered before the model learns from the batch: a checkpoint
        # (and the dedup ids inside it) never holds an event whose outcome is not out.
        self._stage = "publish"
        await deliver_all(deliveries)
        if train:
            self._stage = "learn"
            await self._learn(task, train)
            report.trained = len(train)
        report.model_version = self.learner.model_version
        return report

    async def _predict(self, task: str, accepted: list[tuple[RawEvent, Event]]):
        """Predict the batch; if that fails, event by event: an event that fails alone is
        returned in ``rejected`` (to dead-letter), a failure of every event is systemic and
        raises (fail-stop)."""
        predict = self.serving.predict_many if self.serving is not None else self.learner.predict_many
        texts = [event.text for _, event in accepted]
        started = time.perf_counter()
        try:
            predictions = await self.model.run(predict, task, texts)
        except Exception as batch_error:
            log.warning("predicting a %s batch of %d failed (%s: %s); retrying event by event",
                        task, len(texts), type(batch_error).__name__, batch_error)
            kept, predictions, rejected = [], [], []
            for item in accepted:
                try:
                    predictions += await self.model.run(predict, task, [item[1].text])
                    kept.append(item)
                except Exception as exc:
                    rejected.append((item[0], f"prediction failed: {type(exc).__name__}"))
            if not kept:
                raise batch_error
            return kept, predictions, rejected
        self.metrics.predict_duration.labels(task=task).observe(time.perf_counter() - started)
        return accepted, predictions, []

    def _learn_job(self, task: str, texts: list[str], labels: list[str], ids: list[str]):
        """Model thread: the update and its journal line, in model order."""
        before = self.learner.model_version
        stats = self.learner.learn_many(task, texts, labels)
        if stats.model_version != before:
            self._dirty = True
            if self.journal is not None:
                self.journal.append(stats.model_version, task, ids)
        return stats

    async def _learn(self, task: str, train: list[tuple[RawEvent, Event]]) -> None:
        texts = [event.text for _, event in train]
        labels = [event.label for _, event in train]
        ids = [event.id for _, event in train]
        stats = await self.model.run(self._learn_job, task, texts, labels, ids)
        done = time.time()
        m = self.metrics
        if stats.skipped is not None or stats.n_new == 0:
            m.update_failures.labels(task=task).inc()
            m.skipped_updates.labels(task=task, reason=stats.skipped or "empty").inc()
            log.warning("skipped a %s update of %d events: %s (loss %s, grad norm %s)", task,
                        len(train), stats.skipped, stats.loss, stats.grad_norm)
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
            await self._evaluate()

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
            record = explanation_record(
                max_bytes=self.settings.stream.dead_letter_max_bytes, id=event.id, task=task,
                label=ex.label, probability=ex.probability, method=ex.method,
                model_version=ex.model_version, words=ex.to_dict()["words"], ts=time.time())
            out.append(await self.publish_explanation(event.id, record))
        return out

    def _explain(self, model, task: str, text: str):
        from learner.explain import Explainer

        return Explainer(model).explain(task, text, method=self.settings.serve.explain_method)

    # -- stability guard and rollback -------------------------------------------------------
    async def _evaluate(self) -> None:
        """Probe accuracy -> metrics, then the guard's verdict (promote / hold / rollback)."""
        m = self.metrics
        accuracy = await self.model.run(self.probes.evaluate, self.learner)
        for probe_task, forgetting in self.probes.record(accuracy).items():
            m.probe_accuracy.labels(task=probe_task).set(accuracy[probe_task])
            m.forgetting.labels(task=probe_task).set(forgetting)
        if self.guard is None or self.champion is None or not accuracy:
            return
        sizes = self.probes.sizes()
        verdict = self.guard.judge(accuracy, sizes)
        if verdict.action == "promote":
            await self.model.run(self._promote, accuracy, sizes)
        elif verdict.action == "rollback":
            log.warning("stability guard: %s probe accuracy %.3f is %.3f below the champion "
                        "(version %s); rolling back", verdict.task,
                        accuracy[verdict.task], verdict.drop, verdict.champion_version)
            await self._rollback(verdict.champion_version, "regression", verdict=verdict)
        elif verdict.action == "hold":
            log.info("stability guard: holding champion %s (%s down %.3f)",
                     verdict.champion_version, verdict.task, verdict.drop)

    def _promote(self, accuracy: dict, sizes: dict) -> None:
        version = self.learner.model_version
        if self.guard.version == version:
            return
        self.guard.accept(version, accuracy, sizes)
        self.champion.save(self.learner, extra={"guard": self.guard.state_dict()})
        self.metrics.champion_version.set(version)

    def find_checkpoint(self, version: int | None):
        """Where a version can be rolled back from: the newest champion when ``version`` is
        None, else the first kept folder that holds it (streams/admin.py FOLDERS)."""
        from streams.admin import find_kept

        if version is None:
            return self.champion.latest() if self.champion is not None else None
        return find_kept(self.checkpoints.directory, version)

    def versions(self) -> list[dict]:
        """Every version a rollback can go to, newest first."""
        from streams.admin import kept_versions

        return kept_versions(self.checkpoints.directory) if self.checkpoints is not None else []

    async def rollback_to(self, version: int | None, reason: str = "manual") -> dict:
        """Serve ``version`` (the champion when None) again; see :meth:`_rollback`."""
        async with self._batch_lock():
            return await self._rollback(version, reason)

    async def _rollback(self, version: int | None, reason: str, verdict=None) -> dict:
        """Load a kept checkpoint into the live learner (dedup ids and probes stay current:
        the discarded updates' events are not trained again), cut the journal back, move the
        newer checkpoints to ``discarded/``, checkpoint, announce on ``model-events``."""
        if self.checkpoints is None:
            raise LookupError("rollback needs checkpoints (CHECKPOINT_DIR)")
        path = self.find_checkpoint(version)
        if path is None:
            raise LookupError(f"no kept checkpoint of version {version}" if version is not None
                              else "no champion yet")
        from_version = self.learner.model_version
        to_version = await self.model.run(self._rollback_job, path)
        self.metrics.rollbacks.labels(reason=reason).inc()
        self._refresh_learner_gauges()
        accuracy = await self.model.run(self.probes.evaluate, self.learner)
        for probe_task, acc in accuracy.items():   # what is served now
            self.metrics.probe_accuracy.labels(task=probe_task).set(acc)
        self._dirty = True
        await self._checkpoint()
        event = ModelEvent(kind="rollback", reason=reason, from_version=from_version,
                           to_version=to_version, task=verdict.task if verdict else None,
                           accuracy=dict(verdict.accuracy) if verdict else {},
                           champion_accuracy=dict(verdict.champion) if verdict else {},
                           ts=time.time())
        log.warning("rolled back from version %d to %d (%s)", from_version, to_version, reason)
        if self.publish_model_event is not None:
            await (await self.publish_model_event("rollback", event))
        return event.asdict()

    def _rollback_job(self, path) -> int:
        from learner.checkpoints import CheckpointManager

        CheckpointManager(path.parent).load(path, self.learner)
        version = self.learner.model_version
        discarded = self.checkpoints.directory / "discarded"
        self.checkpoints.discard_newer(version, discarded)
        if self.journal is not None:
            self.journal.truncate_after(version)
        if self.guard is not None and self.champion is not None:
            if self.guard.version is not None and self.guard.version > version:
                self.guard.forget()
                self.guard.version = None
                self.champion.discard_newer(version, discarded)
        self._updates_since_probe = 0
        return version

    async def reset_probes(self, task: str | None = None) -> dict:
        """Operator action after a genuine concept change: fresh probe sets are drawn from
        the stream and the guard stops comparing with the old ones."""
        async with self._batch_lock():
            self.probes.clear(task)
            if self.guard is not None:
                self.guard.forget(task)
            return {"reset": task or "all", "probe_sizes": self.probes.sizes()}

    def _checkpoint_due(self) -> bool:
        cfg = self.settings.checkpoint
        return (self._updates_since_checkpoint >= cfg.every_updates
                or time.monotonic() - self._last_checkpoint >= cfg.every_s
                or self._pending_events >= cfg.max_pending_events)

    def _extra_state(self) -> dict:
        # Snapshot on the event loop: the dedup sets are mutated there.
        return {"dedup": self.dedup.state_dict(), "probes": self.probes.state_dict()}

    def _save(self, extra: dict) -> None:
        if self.journal is not None:
            self.journal.sync()   # the journal lines of what this checkpoint holds, first
        path = self.checkpoints.save(self.learner, extra=extra)
        self._dirty = False
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
                                         ts=time.time(),
                                         max_bytes=self.settings.stream.dead_letter_max_bytes)
        return await self.publish_dead_letter(f"{raw.topic}:{raw.partition}:{raw.offset}", record)
