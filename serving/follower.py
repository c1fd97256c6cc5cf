"""A serving replica follows the trainer's model versions.

Every replica reads the whole ``model-versions`` topic (no consumer group: each one needs
every record): on start from its newest record, so a late replica catches up at once, then
each new one. A record is checked (format, base encoder), its artifact fetched (inline, or
from the model store) and verified against its SHA-256 off the event loop, the snapshot is
built off the serving thread, and only then swapped in, between two batches. A record or an
artifact that fails any check is refused with a warning and counted
(``streamlearner_serve_refused_artifacts_total{reason}``); the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from lifecycle.publishing import ArtifactError, VersionRecord, fetch, read_artifact
from serving.snapshot import ModelSnapshot

if TYPE_CHECKING:
    from lifecycle.publishing import ModelStore
    from serving.models import ServedModels

log = logging.getLogger(__name__)

from monitoring.metrics import REFUSALS  # noqa: F401  (the reason label values)


class VersionFollower:
    def __init__(self, models: "ServedModels", *, base, base_model: str,
                 store: "ModelStore | None" = None, metrics=None) -> None:
        self.models = models
        self.base = base                 # the replica's pristine base encoder (TextClassifier)
        self.base_model = base_model     # its id (lifecycle.publishing.base_model_id)
        self.store = store
        self.metrics = metrics
        # Set once the records that existed when following began were offered: a replica is
        # ready (``/readyz``) only then, so a late one never answers with a stale version.
        self.caught_up = asyncio.Event()
        # When this replica began following: a version published before it (a late replica
        # catching up) is stale from then on, not from its publication, which the replica
        # could not have served (streamlearner_serve_model_staleness_seconds).
        self.since: float | None = None

    def _refuse(self, reason: str, message: str) -> None:
        log.warning("refused model version: %s (%s); still serving version %d", message,
                    reason, self.models.model_version)
        if self.metrics is not None:
            self.metrics.serve_refused.labels(reason=reason).inc()

    async def offer(self, raw: bytes) -> bool:
        """Consider one record value; True when it was swapped in."""
        try:
            record = VersionRecord.from_json(raw)
        except ArtifactError as err:
            self._refuse(err.reason, str(err))
            return False
        why = self.models.accepts(record.sequence, record.version, record.kind)
        if why is not None:
            if record.sequence != self.models.sequence:   # a re-read of the current one is not
                self._refuse(why, f"sequence {record.sequence} (version {record.version}) is not "
                                  f"after {self.models.sequence}")
            return False
        if record.base_model != self.base_model:
            self._refuse("base_model", f"version {record.version} was trained on "
                                       f"{record.base_model}, this replica has {self.base_model}")
            return False
        try:
            data = await asyncio.to_thread(fetch, record, self.store)
            artifact = await asyncio.to_thread(read_artifact, data, sha256=record.sha256)
            if artifact.version != record.version or artifact.mode != record.mode:
                raise ArtifactError("format", "artifact and record disagree on version or mode")
            published = record.ts if self.since is None else max(record.ts, self.since)
            # Off the serving thread, so a version never waits behind a batch or a request
            # (nor they behind it); the base encoder is only read.
            snapshot = await asyncio.to_thread(ModelSnapshot.from_artifact, artifact,
                                               self.base, published_ts=published)
        except ArtifactError as err:
            self._refuse(err.reason, f"version {record.version}: {err}")
            return False
        except Exception as exc:   # a broken artifact must never take serving down
            self._refuse("unreadable", f"version {record.version}: {type(exc).__name__}: {exc}")
            return False
        self.models.swap(snapshot, sequence=record.sequence)
        log.info("serving model version %d (sequence %d, %s)", record.version, record.sequence,
                 record.kind)
        return True

    async def run(self, consumer: Any, topic: str, *, stop: asyncio.Event | None = None) -> None:
        """Follow ``topic`` with a started aiokafka consumer (no group): its newest record
        first, then every new one, until ``stop`` is set or the task is cancelled."""
        from aiokafka import TopicPartition

        self.since = time.time()
        partitions = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:   # the newest record of each partition (compaction keeps it)
            consumer.seek(tp, max(0, ends[tp] - 1))
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            newest: dict[str, bytes] = {}
            for records in batches.values():
                for rec in records:
                    if rec.value is not None:
                        newest[rec.key or b""] = rec.value   # only the last of a burst matters
            for value in newest.values():
                await self.offer(value)
            if not self.caught_up.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps)):
                    self.caught_up.set()
