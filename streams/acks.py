"""Acknowledgements and fail-stop: when a consumed batch may let Kafka commit its offsets.

An agent takes events without acknowledging them (Faust ``noack_take``); a batch's ``ack`` is
queued in an :class:`AckQueue` and released, in batch order, once what the batch changed is
durable (the trainer's checkpoint) — or at once where nothing has to be (a serving replica,
once the batch's outputs are delivered).

:class:`FailStop` is the latch every role shares: once something in the batch path fails in a
way that is not one event's own fault, nothing is acknowledged or checkpointed any more, the
role is told to stop (exit code 3), and Kafka redelivers the unacknowledged events to the
restarted process.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[Any]]   # lets the consumer commit one batch's offsets


class PipelineFailed(RuntimeError):
    """The batch path stopped on a failure; ``stage`` is where (a metric label)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


class FailStop:
    """Set once, never reset: ``failed`` stops every ack and checkpoint of the process."""

    def __init__(self, metrics=None) -> None:
        self.metrics = metrics
        self.failure: PipelineFailed | None = None
        self.on_failure: Callable[[PipelineFailed], Any] | None = None  # the role stops

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, stage: str, exc: BaseException, *, waiting: int = 0) -> PipelineFailed:
        if self.failure is not None:
            return self.failure
        self.failure = PipelineFailed(stage, exc)
        if self.metrics is not None:
            self.metrics.batch_failures.labels(stage=stage).inc()
        topic = getattr(exc, "topic", None)
        if topic is not None and hasattr(exc, "reason"):
            log.error("output topic %r refuses delivery (%s: %s); stopping without "
                      "acknowledging this batch or anything after it: the %d events consumed "
                      "since the last acknowledged batch are redelivered after a restart, once "
                      "the cause is fixed", topic, exc.reason, exc.cause, waiting)
        else:
            log.error("%s failed (%s: %s); stopping without acknowledging this batch or anything "
                      "after it: the %d events consumed since the last acknowledged batch are "
                      "redelivered after a restart", stage, type(exc).__name__, exc, waiting,
                      exc_info=exc)
        if self.on_failure is not None:
            try:
                self.on_failure(self.failure)
            except Exception:
                log.exception("on_failure callback raised")
        return self.failure


class AckQueue:
    """Acks of consumed batches, released in batch order; nothing after a failure."""

    def __init__(self, latch: FailStop, metrics=None) -> None:
        self.latch = latch
        self.metrics = metrics
        self._pending: list[Ack] = []
        self.pending_events = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ack: Ack, n_events: int) -> None:
        if self.latch.failed:
            return
        self._pending.append(ack)
        self.pending_events += n_events
        self._gauge()

    def drop(self) -> None:
        """Forget every queued ack (after a failure: their events are redelivered)."""
        self._pending = []
        self.pending_events = 0
        self._gauge()

    async def release(self) -> None:
        """Ack everything queued, oldest first; a failing ack stops the later ones."""
        if self.latch.failed:
            self.drop()
            return
        pending, self._pending = self._pending, []
        self.pending_events = 0
        self._gauge()
        for ack in pending:
            try:
                await ack()
            except Exception as exc:   # the later batches must not be acked past this one
                self.latch.fail("ack", exc)
                return

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.pending_events.set(self.pending_events)
