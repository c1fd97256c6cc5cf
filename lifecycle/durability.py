"""Exactly-once effect on the model: checkpoints, and the acks they release.

Batches run one at a time. A batch that changed the model queues its ack behind the next
checkpoint; one that did not is acknowledged at once when nothing before it waits. A
checkpoint is written every ``CHECKPOINT_EVERY_UPDATES`` updates, every ``CHECKPOINT_EVERY_S``
seconds, when ``CHECKPOINT_MAX_PENDING_EVENTS`` events wait, when the stream is quiet for
``CHECKPOINT_IDLE_S`` (a timer), and on drain; it carries the dedup ids of everything it holds
(``extra``), so after a crash Kafka redelivers exactly the events after it and the ones it
already holds are recognised. The update journal is fsynced before every checkpoint.
After a fail-stop (streams/acks.py) nothing is checkpointed or acknowledged any more.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from learner.checkpoints import CheckpointManager
    from learner.learner import Learner
    from lifecycle.config import CheckpointConfig
    from lifecycle.journal import UpdateJournal
    from monitoring.metrics import Metrics
    from streams.acks import Ack, AckQueue, FailStop
    from streams.handoff import ModelThread

log = logging.getLogger(__name__)


class Durability:
    def __init__(self, config: "CheckpointConfig", *, learner: "Learner", thread: "ModelThread",
                 checkpoints: "CheckpointManager | None", journal: "UpdateJournal | None",
                 acks: "AckQueue", metrics: "Metrics", extra: Callable[[], dict]) -> None:
        self.config = config
        self.learner = learner
        self.thread = thread
        self.checkpoints = checkpoints
        self.journal = journal
        self.acks = acks
        self.latch: "FailStop" = acks.latch
        self.metrics = metrics
        self._extra = extra
        self.dirty = False              # the model changed since the last checkpoint
        self.in_batch = False
        self._updates = 0               # since the last checkpoint
        self._failures = 0              # consecutive failed checkpoints
        self._last_checkpoint = time.monotonic()
        self.last_batch = time.monotonic()

    # -- model thread ---------------------------------------------------------------------
    def updated(self, version: int, task: str, ids: list[str]) -> None:
        """After an applied update, on the model thread: its journal line, in model order."""
        self.dirty = True
        self._updates += 1
        if self.journal is not None:
            self.journal.append(version, task, ids)

    def touched(self) -> None:
        """State the checkpoint carries changed without a model update (the label join's
        pending store): the batch's ack waits for the next checkpoint."""
        self.dirty = True

    def _save(self, extra: dict) -> None:
        if self.journal is not None:
            self.journal.sync()   # the journal lines of what this checkpoint holds, first
        path = self.checkpoints.save(self.learner, extra=extra)
        self.dirty = False
        self._updates = 0
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        log.info("checkpoint %s", path.name)

    # -- event loop -----------------------------------------------------------------------
    def due(self) -> bool:
        cfg = self.config
        return (self._updates >= cfg.every_updates
                or time.monotonic() - self._last_checkpoint >= cfg.every_s
                or self.acks.pending_events >= cfg.max_pending_events)

    async def checkpoint(self) -> bool:
        """Save (model thread), then release every ack it holds; False when it did not."""
        if self.latch.failed or self.checkpoints is None:
            return False
        try:
            # The extra state is snapshotted on the event loop: the dedup sets change there.
            await self.thread.run(self._save, self._extra())
        except Exception as exc:
            self.metrics.checkpoint_failures.inc()
            self._failures += 1
            if self._failures >= self.config.max_failures:
                self.latch.fail("checkpoint", exc, waiting=self.acks.pending_events)
                self.acks.drop()
                return False
            log.exception("checkpoint failed (%d in a row); %d events stay unacknowledged and "
                          "will be retried", self._failures, self.acks.pending_events)
            return False
        self._failures = 0
        await self.acks.release()
        return True

    async def settle(self, ack: "Ack | None", n_events: int) -> None:
        """After a batch: queue its ack behind the next checkpoint; checkpoint when due."""
        self.last_batch = time.monotonic()
        if self.latch.failed:
            return
        if ack is not None:
            self.acks.add(ack, n_events)
        if self.checkpoints is None:
            await self.acks.release()
        elif self.dirty and self.due():
            await self.checkpoint()
        elif not self.dirty and len(self.acks):
            await self.acks.release()   # nothing changed the model since the last checkpoint

    async def flush(self) -> None:
        """Make everything waiting durable now (idle timer, drain)."""
        if self.latch.failed:
            return
        if self.dirty and self.checkpoints is not None:
            await self.checkpoint()
        elif len(self.acks):
            await self.acks.release()

    def quiet(self) -> bool:
        """No batch for ``idle_s``."""
        return time.monotonic() - self.last_batch >= self.config.idle_s

    def idle(self) -> bool:
        """Quiet, with acknowledgements waiting for a checkpoint."""
        return len(self.acks) > 0 and self.quiet()

    def checkpoint_now(self) -> None:
        """Synchronous checkpoint (shutdown fallback once the event loop is gone): only when no
        batch was cut short and nothing failed, so it never holds half a batch."""
        if (self.checkpoints is None or not self.dirty or self.in_batch
                or self.latch.failed):
            return
        self.thread.call(self._save, self._extra())
