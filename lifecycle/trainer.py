"""The training half: what the model learns from served events, and its lifecycle.

Per batch of :class:`~streams.records.Sample` (from the co-located serving half of the
all-in-one worker, or from the samples topic in the ``train`` role): exact dedup by id (a
replica's redelivery), prequential accuracy from the prediction each sample carries (the
version that really served it), drift detectors (lifecycle/adaptation.py) and their alerts,
probe hold-outs (lifecycle/probes.py), one learner update on the model thread with its journal
line, the stability guard's judgement every ``METRICS_PROBE_EVERY_UPDATES`` updates (promote,
hold, or roll back: lifecycle/rollback.py), model versions published at their cadence
(lifecycle/publishing.py), and checkpoints that release the batches' acks
(lifecycle/durability.py). Every drift alert of a batch is delivered before the model learns
from it. Free of Faust.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from lifecycle.publishing import artifact_from_learner
from streams.outputs import deliver_all
from streams.records import ModelEvent, Sample

if TYPE_CHECKING:
    import torch

    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from lifecycle.adaptation import DriftWatch
    from lifecycle.durability import Durability
    from lifecycle.guard import StabilityGuard
    from lifecycle.labeling import LabelJoin
    from lifecycle.probes import ProbeSets
    from lifecycle.publishing import VersionPublisher
    from streams.admit import RawEvent
    from monitoring.metrics import Metrics
    from streams.dedup import Deduplicator
    from streams.handoff import ModelThread

log = logging.getLogger(__name__)

Publish = Callable[[Any, Any], Awaitable[Awaitable[Any]]]


class Trainer:
    def __init__(self, *, learner: "Learner", thread: "ModelThread", metrics: "Metrics",
                 durability: "Durability", dedup: "Deduplicator", probes: "ProbeSets",
                 evaluate_every: int = 10, drift: "DriftWatch | None" = None,
                 guard: "StabilityGuard | None" = None,
                 champion: "CheckpointManager | None" = None,
                 publisher: "VersionPublisher | None" = None,
                 model_events: Publish | None = None, keep_last: int = 3,
                 labels: "LabelJoin | None" = None,
                 dead_letters: Publish | None = None,
                 dead_letter_max_bytes: int | None = None) -> None:
        self.learner = learner
        self.thread = thread
        self.metrics = metrics
        self.durability = durability
        self.dedup = dedup
        self.probes = probes
        self.evaluate_every = evaluate_every
        self.drift = drift
        self.guard = guard
        self.champion = champion
        self.publisher = publisher
        self.model_events = model_events
        self.keep_last = keep_last
        self.labels = labels                # late labels joined to earlier events
        self.dead_letters = dead_letters    # Output.publish of the dead-letter topic
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.last_update_ts: float | None = None
        self._updates_since_probe = 0
        self._lock: asyncio.Lock | None = None

    @property
    def latch(self):
        return self.durability.latch

    def lock(self) -> asyncio.Lock:
        """One batch at a time, across every agent of the process (and rollbacks)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- start ------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """What a checkpoint carries besides the learner (snapshot on the event loop)."""
        extra = {"dedup": self.dedup.state_dict(), "probes": self.probes.state_dict()}
        if self.publisher is not None:
            extra["publisher"] = self.publisher.state_dict()
        if self.labels is not None:
            extra["labels"] = self.labels.persist()
        return extra

    def restore(self) -> int:
        """Load the newest good checkpoint (if any); returns the model version resumed from."""
        checkpoints = self.durability.checkpoints
        extra = None
        if checkpoints is not None:
            extra = self.thread.call(checkpoints.load_latest, self.learner)
            if extra:
                self.dedup.load_state_dict(extra.get("dedup", {}))
                self.probes.load_state_dict(extra.get("probes", {}))
                if self.publisher is not None:
                    self.publisher.load_state_dict(extra.get("publisher", {}))
        if self.labels is not None:
            # Without its files the checkpoint's labels would be lost or trained twice: a
            # LabelLogError stops the start (lifecycle/join_log.py).
            self.labels.restore((extra or {}).get("labels"))
        version = self.learner.model_version
        journal = self.durability.journal
        if journal is not None:
            kept = journal.truncate_after(version)
            log.info("update journal: %d updates in the model's history", kept)
        if self.guard is not None and self.champion is not None:
            self._restore_champion(version)
        self.refresh_gauges()
        log.info("resumed at model version %d", version)
        return version

    def _restore_champion(self, version: int) -> None:
        newest = self.champion.latest()
        if newest is None:
            return
        if self.champion.version_of(newest) > version:
            # Its lineage is gone (a crash lost the updates after `version`): not comparable.
            self.champion.discard_newer(version, self.durability.checkpoints.directory / "discarded")
            return
        extra = self.champion.extra_of(newest) or {}
        self.guard.load_state_dict(extra.get("guard", {}))
        if self.guard.version is not None:
            self.metrics.champion_version.set(self.guard.version)

    async def announce_start(self) -> None:
        """Publish the resumed version; a "rollback" when the topic already shows a newer one
        (published before a crash, lost with it), so replicas follow the trainer back."""
        if self.publisher is None:
            return
        last = self.publisher.last_record
        behind = last is not None and last.version > self.learner.model_version
        if behind or self.learner.model_version > 0 or self.publisher.local is not None:
            if behind:
                log.warning("the topic's newest version %d is ahead of the restored %d (lost "
                            "in a crash): announcing a rollback", last.version,
                            self.learner.model_version)
            await self.publisher.announce(self.learner, "rollback" if behind else "update")

    # -- the batch --------------------------------------------------------------------------
    async def learn(self, task: str, samples: list[Sample], *,
                    features: "torch.Tensor | None" = None, check_ids: bool = False) -> int:
        """Learn from one batch of ``task``'s samples (call under :meth:`lock`); returns how
        many were trained on. ``features`` (B, H): the serving copy's (head mode), reused.
        ``check_ids``: drop ids this model already holds (samples from a topic)."""
        if check_ids:
            fresh = []
            for s in samples:
                if self.dedup.seen_id(task, s.id):
                    self.metrics.duplicate_samples.labels(task=task).inc()
                else:
                    fresh.append(s)
            if features is not None and len(fresh) != len(samples):
                features = None
            samples = fresh
        if not samples:
            return 0
        if self.labels is not None:   # unlabeled events wait for their labels (durably)
            self.labels.observe_samples(task, samples)
            self.durability.touched()
        texts = [s.text for s in samples]
        offer: Callable[[], None] | None = None
        if features is not None and self.learner.config.frozen:
            # The serving copy's features, for the drift test and the update.
            offer = functools.partial(self.learner.features.offer, texts, features)
        labeled = [s for s in samples if s.label is not None]
        if labeled:
            self.metrics.observe_prequential(task, (s.predicted == s.label for s in labeled))
        if self.drift is not None:   # ``offer`` runs first, in the same model-thread job
            alerts = await self.drift.observe(task, texts,
                                              [s.predicted != s.label for s in labeled],
                                              [s.label for s in labeled], before=offer)
            await deliver_all(alerts)    # outcomes out before the model changes
        elif offer is not None:
            await self.thread.run(offer)
        train = []
        for s in labeled:
            if self.dedup.repeat_text(task, s.text):
                self.metrics.repeat_texts.labels(task=task).inc()
            elif not self.probes.take(task, s.id, s.text, s.label):
                train.append(s)
        if train:
            await self._update(task, train)
        trained = len(train)
        if self.labels is not None:   # labels that were waiting for these events
            trained += await self._learn_joined()
        return trained

    async def learn_labels(self, batch: Sequence["RawEvent"]) -> int:
        """One batch of the labels topic (call under :meth:`lock`): bad records and labels
        that found no event are dead-lettered, joined ones trained once; how many trained."""
        if self.labels is None:
            raise RuntimeError("the label join is off (LABELS_ENABLED=false)")
        self.labels.add_records(batch)
        self.durability.touched()
        return await self._learn_joined()

    async def _learn_joined(self) -> int:
        """Train what the label join has ready; deliver its dead letters first."""
        from streams.records import dead_letter

        join = self.labels
        deliveries = []
        now = time.time()
        for bad in join.take_dead_letters():
            if self.dead_letters is None:
                log.warning("label dead letter dropped (no dead-letter output): %s", bad.reason)
                continue
            self.metrics.dead_letters.labels(topic=bad.topic, reason=bad.reason).inc()
            record = dead_letter(bad.payload, topic=bad.topic, partition=bad.partition,
                                 offset=bad.offset, reason=bad.reason, message=bad.message,
                                 ts=now, max_bytes=self.dead_letter_max_bytes)
            deliveries.append(await self.dead_letters(
                f"{bad.topic}:{bad.partition}:{bad.offset}", record))
        await deliver_all(deliveries)
        trained = 0
        for task, joined in join.take_training().items():
            train = []
            for j in joined:
                if self.dedup.repeat_text(task, j.text):
                    self.metrics.repeat_texts.labels(task=task).inc()
                elif not self.probes.take(task, j.id, j.text, j.label):
                    train.append(Sample(j.id, task, j.text, j.label, j.event_ts, "", -1, -1,
                                        now, j.predicted, j.confidence, j.model_version))
            if train:
                await self._update(task, train)
                trained += len(train)
        join.refresh_gauges()
        return trained

    def _update_job(self, task: str, texts: list[str], labels: list[str], ids: list[str]):
        """Model thread: the update and its journal line, in model order; and the artifact of
        the new version when the co-located serving copy takes every update (head mode): built
        here, it costs no thread hop of its own."""
        before = self.learner.model_version
        stats = self.learner.learn_many(task, texts, labels)
        artifact = None
        if stats.model_version != before:
            self.durability.updated(stats.model_version, task, ids)
            if self.publisher is not None and self.publisher.refreshes_every_update(self.learner):
                artifact = artifact_from_learner(self.learner)
        return stats, artifact

    async def _update(self, task: str, train: list[Sample]) -> None:
        stats, artifact = await self.thread.run(self._update_job, task, [s.text for s in train],
                                                [s.label for s in train], [s.id for s in train])
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
        for s in train:
            m.freshness.labels(task=task).observe(max(0.0, done - s.timestamp))
        self.refresh_gauges()
        self._updates_since_probe += 1
        if self._updates_since_probe >= self.evaluate_every:
            self._updates_since_probe = 0
            await self._evaluate()
        if self.publisher is not None:
            await self.publisher.after_update(self.learner, artifact=artifact)

    # -- stability guard and rollback -------------------------------------------------------
    async def _evaluate(self) -> None:
        """Probe accuracy -> metrics, then the guard's verdict (promote / hold / rollback)."""
        m = self.metrics
        accuracy = await self.thread.run(self.probes.evaluate, self.learner)
        for probe_task, forgetting in self.probes.record(accuracy).items():
            m.probe_accuracy.labels(task=probe_task).set(accuracy[probe_task])
            m.forgetting.labels(task=probe_task).set(forgetting)
        if self.guard is None or self.champion is None or not accuracy:
            return
        sizes = self.probes.sizes()
        verdict = self.guard.judge(accuracy, sizes)
        if verdict.action == "promote":
            await self.thread.run(self._promote, accuracy, sizes)
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

    def versions(self) -> list[dict]:
        """Every version a rollback can go to, newest first."""
        from lifecycle.rollback import kept_versions

        checkpoints = self.durability.checkpoints
        return kept_versions(checkpoints.directory) if checkpoints is not None else []

    async def rollback_to(self, version: int | None, reason: str = "manual") -> dict:
        """Serve ``version`` (the champion when None) again; see :meth:`_rollback`."""
        async with self.lock():
            return await self._rollback(version, reason)

    async def _rollback(self, version: int | None, reason: str, verdict=None) -> dict:
        """Rearrange the checkpoint folder (lifecycle/rollback.py, the same as offline), load
        the version into the live learner (the dedup ids and probes stay current: the
        discarded updates' events are not trained again), release what waited for a
        checkpoint, publish the version and announce the rollback on ``model-events``."""
        from learner.checkpoints import CheckpointManager
        from lifecycle.rollback import rearrange

        checkpoints = self.durability.checkpoints
        if checkpoints is None:
            raise LookupError("rollback needs checkpoints (CHECKPOINT_DIR)")
        from_version = self.learner.model_version
        extra = self.extra_state()
        path = await asyncio.to_thread(rearrange, checkpoints.directory, version,
                                       keep_last=self.keep_last, extra=extra)

        def load() -> int:
            CheckpointManager(path.parent).load(path, self.learner)
            to = self.learner.model_version
            if self.guard is not None and self.guard.version is not None and self.guard.version > to:
                self.guard.forget()
                self.guard.version = None
            self._updates_since_probe = 0
            self.durability.dirty = False   # the rearranged folder holds exactly this state
            return to

        to_version = await self.thread.run(load)
        self.metrics.rollbacks.labels(reason=reason).inc()
        self.refresh_gauges()
        accuracy = await self.thread.run(self.probes.evaluate, self.learner)
        for probe_task, acc in accuracy.items():   # what is served now
            self.metrics.probe_accuracy.labels(task=probe_task).set(acc)
        await self.durability.acks.release()
        if self.publisher is not None:
            await self.publisher.announce(self.learner, "rollback", probe_accuracy=accuracy)
        event = ModelEvent(kind="rollback", reason=reason, from_version=from_version,
                           to_version=to_version, task=verdict.task if verdict else None,
                           accuracy=dict(verdict.accuracy) if verdict else {},
                           champion_accuracy=dict(verdict.champion) if verdict else {},
                           ts=time.time())
        log.warning("rolled back from version %d to %d (%s)", from_version, to_version, reason)
        if self.model_events is not None:
            await (await self.model_events("rollback", event))
        return event.asdict()

    async def reset_probes(self, task: str | None = None) -> dict:
        """Operator action after a genuine concept change: fresh probe sets are drawn from
        the stream and the guard stops comparing with the old ones."""
        async with self.lock():
            self.probes.clear(task)
            if self.guard is not None:
                self.guard.forget(task)
            return {"reset": task or "all", "probe_sizes": self.probes.sizes()}

    # -- idle and shutdown ------------------------------------------------------------------
    async def flush_if_idle(self) -> None:
        """Timer: when the stream went quiet, checkpoint and ack the events that wait, and
        make sure the topic has the live version. The two are independent: the last update
        may have been checkpointed in the batch path (nothing waits) while its publication
        was skipped because the previous one was still in flight."""
        if self.latch.failed or not self.durability.quiet():
            return
        publish = self.publisher is not None and self.publisher.behind(self.learner)
        if not (self.durability.idle() or publish):
            return
        async with self.lock():
            if self.latch.failed or not self.durability.quiet():
                return
            if self.durability.idle():
                await self.durability.flush()
            if self.publisher is not None:
                await self.publisher.flush(self.learner)

    async def drain(self) -> None:
        """Shutdown: finish the running batch, checkpoint, ack everything (after a failure:
        nothing; the unacknowledged events are redelivered)."""
        async with self.lock():
            if self.latch.failed:
                log.warning("not draining: stopped on a failure (%s)", self.latch.failure)
                return
            await self.durability.flush()
            if self.publisher is not None:
                await self.publisher.flush(self.learner)
        log.info("drained at model version %d", self.learner.model_version)

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.learner.model_version)
        for task, size in self.learner.replay.sizes().items():
            m.memory_samples.labels(task=task).set(size)
        for task in self.learner.tasks():
            m.labels.labels(task=task).set(len(self.learner.labels(task)))
