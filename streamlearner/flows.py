"""The batch flows: what one micro-batch goes through in each role, without Faust.

* :class:`WorkerFlow` — all-in-one: serve the batch, deliver its outcomes, learn from it,
  settle its ack (pipelined: serving lanes side by side, tails in batch order).
* :class:`ServeFlow` — a replica: serve the batch, publish its samples, ack once delivered.
* :class:`TrainFlow` — the trainer: decode samples, learn per task, ack after checkpoint.
* :class:`LabelFlow` — the labels topic: join each label to its event, learn the joined.

Each refuses batches once draining or failed (the latch), names the failing stage, and never
acknowledges past a batch that failed. The role builders (``streamlearner/roles.py``) hand
them to the agents.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["LabelFlow", "Report", "ServeFlow", "TrainFlow", "WorkerFlow"]


@dataclass
class Report:
    """What one batch handler did (the agent yields it; tests read it)."""

    accepted: int = 0
    invalid: int = 0
    duplicate: int = 0
    trained: int = 0
    model_version: int = 0
    refused: bool = False   # draining or failed: not processed, not acked (redelivered)
    failed: bool = False    # this batch failed the latch
    learning: Any = None    # the worker's pipelined learning of this batch: awaits its Report


class _Flow:
    """Refuses batches once draining or failed; names the failing stage."""

    def __init__(self, latch, lock: Callable[[], asyncio.Lock]) -> None:
        self.latch = latch
        self._lock = lock
        self.draining = False
        self.stage = "internal"
        self.batch_events = 0

    def refused(self) -> bool:
        return self.draining or self.latch.failed

    def failed(self, exc: Exception, waiting: int) -> Report:
        from streams.outputs import OutputError

        self.latch.fail("publish" if isinstance(exc, OutputError) else self.stage, exc,
                        waiting=waiting)
        return Report(refused=True, failed=True)

    async def _durably(self, trainer, n_events: int, ack, body, *,
                       cleanup: Callable[[], None] | None = None) -> Report:
        """Run ``body()`` (-> Report) under the batch lock while the trainer's durability
        knows a batch is open; a failure fails the latch and nothing is acked; otherwise the
        ack waits for the checkpoint that holds the batch. ``cleanup`` runs when the batch is
        refused or fails (e.g. close deliveries never started)."""
        durability = trainer.durability
        async with self._lock():
            if self.refused():
                if cleanup is not None:
                    cleanup()
                return Report(refused=True)
            durability.in_batch = True
            try:
                report = await body()
            except Exception as exc:
                if cleanup is not None:
                    cleanup()
                return self.failed(exc, durability.acks.pending_events + n_events)
            finally:
                durability.in_batch = False
            await durability.settle(ack, n_events)
            report.model_version = trainer.learner.model_version
            return report


class WorkerFlow(_Flow):
    """All-in-one: serve the batch, deliver its outcomes, learn from it, settle its ack.

    Pipelined: up to ``lanes`` batches are predicted side by side, each on a serving thread
    of its own (one intra-op thread each), and one more waits admitted for the first lane to
    free, so a serving thread never waits for the event loop to admit a batch. Up to
    ``depth`` batches beyond those wait for their tail, in two stages that overlap: publish
    the predictions (after the batch before has published) and await their delivery, then
    learn on the model thread and settle the ack (after the batch before has learned). So a
    delivery's round trip runs beside the previous batch's update instead of after it.
    Measured on 2 cores: with one serving thread whose batches were split into sub-batches
    across the cores, every moment the event loop or the model thread took a core stalled
    the whole batch; two whole batches side by side share the cores in proportion instead,
    and the batch admitted ahead plus the overlapped delivery took the bf16 worker from
    ~880 to ~980 events/s in steady state (docs/performance.md).

    Every event is still predicted before it is learned; a prediction comes from the newest
    version whose batch had finished learning when the batch was admitted (at most
    ``lanes + 1 + depth`` batches behind a strictly sequential loop). Admission (and so the
    serving dedup), publishing, learning and acks stay in batch order. Serving drops ids with
    its own best-effort copy of the dedup state; the trainer's exact dedup (checkpointed)
    only holds ids that were learned, so a batch that was served but not yet learned when a
    checkpoint was written is never mistaken for a redelivery after a crash.
    """

    def __init__(self, serving, trainer, *, pipelined: bool = True, depth: int = 2,
                 lanes: int = 1) -> None:
        super().__init__(trainer.latch, trainer.lock)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.serving = serving
        self.trainer = trainer
        self.pipelined = pipelined
        self.depth = depth
        self.lanes = lanes
        self._serve_lock = asyncio.Lock()
        self._tail: asyncio.Future | None = None   # the last batch's delivery + learning
        self._published: asyncio.Future | None = None   # set once its outcomes are handed out
        self._tails: collections.deque = collections.deque()   # (tail, events) not done
        self._predicting: collections.deque = collections.deque()   # predictions running
        self._waiting_events = 0

    def _in_flight(self) -> int:
        while self._tails and self._tails[0][0].done():
            self._waiting_events -= self._tails.popleft()[1]
        return len(self._tails)

    async def handle(self, task: str, batch: Sequence, ack=None) -> Report:
        """Admit ``batch`` and start predicting it; its tail runs behind (``Report.learning``,
        whose report has the batch's counts), after the batches before it, or here when not
        ``pipelined``. Returns once at most ``lanes`` predictions run or wait and at most
        ``depth`` batches wait for their tail."""
        if self.refused():
            return Report(refused=True)
        async with self._serve_lock:
            if self.refused():
                return Report(refused=True)
            deliveries: list = []
            # A task of its own, so that the next batch can start while this one is encoded;
            # tasks start in order, and admission runs before the first await: in batch order.
            served = asyncio.ensure_future(self.serving.predict(task, batch, deliveries))
            published = asyncio.get_running_loop().create_future()
            tail = asyncio.ensure_future(self._learn(self._tail, self._published, published,
                                                     served, task, batch, deliveries, ack))
            self._tail, self._published = tail, published
            self._tails.append((tail, len(batch)))
            self._waiting_events += len(batch)
            self._predicting.append(served)
            while self._predicting and self._predicting[0].done():
                self._predicting.popleft()
            while len(self._predicting) > self.lanes:   # one waits ahead; the oldest first
                await asyncio.wait([self._predicting.popleft()])
            while self._in_flight() > self.depth:
                await asyncio.wait([self._tails[0][0]])
        if not self.pipelined:
            return await tail
        return Report(learning=tail, model_version=self.serving.models.model_version)

    async def _learn(self, previous: asyncio.Future | None,
                     previous_published: asyncio.Future | None, published: asyncio.Future,
                     served_future: asyncio.Future, task: str, batch: Sequence,
                     deliveries: list, ack) -> Report:
        """One batch's tail, in two stages that overlap with the batches around it: publish
        its outcomes once the batch before has published (their order), await their delivery
        while the batch before learns, then learn once it has (model updates and acks in
        batch order). So a delivery's round trip (and a producer's linger) is off the path
        that bounds throughput: the model thread's updates one after the other."""
        from streams.outputs import deliver_all

        try:
            if previous_published is not None:
                await asyncio.wait([previous_published])
            try:
                served = await served_future
            except Exception as exc:
                _close_unstarted(deliveries)
                if previous is not None:   # what went before settles first
                    await asyncio.wait([previous])
                if self.refused():   # failed or draining already: this batch waits unacked too
                    return Report(refused=True)
                self.stage = "predict"
                self._in_flight()
                return self.failed(exc, self.trainer.durability.acks.pending_events
                                   + self._waiting_events)
            if self.refused():
                _close_unstarted(deliveries)
                return Report(refused=True)
            self.stage = "publish"
            try:
                await self.serving.publish(served, deliveries)
            finally:
                if not published.done():
                    published.set_result(None)
            await deliver_all(deliveries)   # every outcome out before the model learns
        except Exception as exc:
            _close_unstarted(deliveries)
            if previous is not None:
                await asyncio.wait([previous])
            self._in_flight()
            return self.failed(exc, self.trainer.durability.acks.pending_events
                               + self._waiting_events)
        finally:
            if not published.done():
                published.set_result(None)
        if previous is not None:   # in batch order: the batch before finishes learning first
            await asyncio.wait([previous])

        async def body() -> Report:
            self.stage = "learn"
            trained = await self.trainer.learn(task, served.samples, features=served.features,
                                               check_ids=True)
            return Report(accepted=len(served.samples), invalid=served.invalid,
                          duplicate=served.duplicate, trained=trained)

        return await self._durably(self.trainer, len(batch), ack, body)

    async def settled(self) -> None:
        """Wait until the last batch handed in has finished learning."""
        if self._tail is not None:
            await asyncio.wait([self._tail])

    async def drain(self) -> None:
        self.draining = True
        async with self._serve_lock:
            await self.settled()
        await self.trainer.drain()


class ServeFlow(_Flow):
    """A replica: serve the batch, publish its samples, ack once everything is delivered.

    Pipelined (the default): a batch's deliveries are awaited, and its ack released, in a
    tail behind it, while the next batch is admitted and predicted; up to ``depth`` tails wait,
    settled in batch order. So a producer that lingers (KAFKA_PRODUCER_LINGER_MS) sends a
    batch's outcomes in one request without the replica idling meanwhile. A failed delivery
    fails the latch: that batch and every later one stay unacknowledged (redelivered)."""

    def __init__(self, serving, acks, samples, *, pipelined: bool = True,
                 depth: int = 2) -> None:
        lock = asyncio.Lock()
        super().__init__(acks.latch, lambda: lock)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.serving = serving
        self.acks = acks
        self.samples = samples   # Output.publish of the samples topic
        self.pipelined = pipelined
        self.depth = depth
        self._tail: asyncio.Future | None = None   # the last batch's deliveries and ack
        self._tails: collections.deque = collections.deque()
        self._waiting_events = 0   # handed in, not yet acknowledged

    async def handle(self, task: str, batch: Sequence, ack=None) -> Report:
        from streams.records import SampleRecord

        if self.refused():
            return Report(refused=True)
        async with self._lock():
            if self.refused():
                return Report(refused=True)
            deliveries: list = []
            self._waiting_events += len(batch)
            try:
                self.stage = "predict"
                served = await self.serving.handle(task, batch, deliveries)
                self.stage = "publish"
                now = time.time()
                for sample in served.samples:
                    deliveries.append(await self.samples(sample.id, SampleRecord.of(sample, now)))
            except Exception as exc:
                _close_unstarted(deliveries)
                return self.failed(exc, self._waiting_events)
            report = Report(accepted=len(served.samples), invalid=served.invalid,
                            duplicate=served.duplicate,
                            model_version=self.serving.models.model_version)
            tail = asyncio.ensure_future(self._settle(self._tail, deliveries, ack, len(batch),
                                                      report))
            self._tail = tail
            self._tails.append(tail)
            while self._tails and self._tails[0].done():
                self._tails.popleft()
            while len(self._tails) > self.depth:
                await asyncio.wait([self._tails.popleft()])
        if not self.pipelined:
            return await tail
        return Report(accepted=report.accepted, invalid=report.invalid,
                      duplicate=report.duplicate, model_version=report.model_version,
                      learning=tail)

    async def _settle(self, previous: asyncio.Future | None, deliveries: list, ack,
                      n_events: int, report: Report) -> Report:
        """Deliver one batch's outcomes, then release its ack: after the batch before."""
        from streams.outputs import deliver_all

        if previous is not None:
            await asyncio.wait([previous])
        try:
            await deliver_all(deliveries)
        except Exception as exc:
            _close_unstarted(deliveries)
            self.stage = "publish"
            return self.failed(exc, self._waiting_events)
        finally:
            self._waiting_events -= n_events
        if self.latch.failed:   # a batch before failed: acking this one would commit past it
            return Report(refused=True)
        if ack is not None:
            self.acks.add(ack, n_events)
            await self.acks.release()
        return report

    async def settled(self) -> None:
        """Wait until the last batch handed in is delivered and acknowledged."""
        if self._tail is not None:
            await asyncio.wait([self._tail])

    async def drain(self) -> None:
        self.draining = True
        async with self._lock():
            await self.settled()


class TrainFlow(_Flow):
    """The trainer: decode samples (bad ones dead-lettered), learn per task, settle the ack."""

    def __init__(self, trainer, *, tasks: set[str], limits, dead_letters, metrics) -> None:
        super().__init__(trainer.latch, trainer.lock)
        self.trainer = trainer
        self.tasks = tasks
        self.limits = limits
        self.dead_letters = dead_letters
        self.metrics = metrics

    async def handle(self, _task: str, batch: Sequence, ack=None) -> Report:
        from streams.outputs import deliver_all
        from streams.records import RejectedEvent, dead_letter, decode_sample

        if self.refused():
            return Report(refused=True)
        deliveries: list = []

        async def body() -> Report:
            report = Report()
            self.stage = "decode"
            by_task: dict[str, list] = {}
            for raw in batch:
                try:
                    sample = decode_sample(raw.value, tasks=self.tasks,
                                           max_text_chars=self.limits.max_text_chars,
                                           max_label_chars=self.limits.max_label_chars)
                except RejectedEvent as bad:
                    self.metrics.dead_letters.labels(topic=raw.topic,
                                                     reason=bad.reason.value).inc()
                    record = dead_letter(raw.value, topic=raw.topic, partition=raw.partition,
                                         offset=raw.offset, reason=bad.reason,
                                         message=bad.message, ts=time.time(),
                                         max_bytes=self.limits.dead_letter_max_bytes)
                    self.stage = "publish"
                    deliveries.append(await self.dead_letters(raw.key, record))
                    self.stage = "decode"
                    report.invalid += 1
                    continue
                by_task.setdefault(sample.task, []).append(sample)
            self.stage = "publish"
            await deliver_all(deliveries)
            self.stage = "learn"
            for task, samples in by_task.items():
                report.accepted += len(samples)
                report.trained += await self.trainer.learn(task, samples, check_ids=True)
            return report

        return await self._durably(self.trainer, len(batch), ack, body,
                                   cleanup=lambda: _close_unstarted(deliveries))

    async def drain(self) -> None:
        self.draining = True
        await self.trainer.drain()


class LabelFlow(_Flow):
    """The labels topic, where the model learns: join each label to its event, train the
    joined ones once, dead-letter the rest; the ack waits for the checkpoint holding it."""

    def __init__(self, trainer) -> None:
        super().__init__(trainer.latch, trainer.lock)
        self.trainer = trainer

    async def handle(self, _task: str, batch: Sequence, ack=None) -> Report:
        if self.refused():
            return Report(refused=True)

        async def body() -> Report:
            self.stage = "learn"
            return Report(accepted=len(batch), trained=await self.trainer.learn_labels(batch))

        return await self._durably(self.trainer, len(batch), ack, body)


def _close_unstarted(deliveries: list) -> None:
    import inspect

    for d in deliveries:   # never started (the batch failed before delivering them)
        if inspect.iscoroutine(d) and inspect.getcoroutinestate(d) == inspect.CORO_CREATED:
            d.close()
