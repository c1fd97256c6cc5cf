"""Admission of one micro-batch: decode → validate → clean → dedup by id.

Pure (no Faust, no model): the one implementation that serving replicas, the all-in-one
worker and the ingest benchmark run. Each rejected event comes back with its reason and a
message for its dead letter; nothing is dropped silently.

>>> from streams.config import StreamConfig
>>> from streams.dedup import Deduplicator
>>> batch = [RawEvent(b'{"id": "a", "text": "hi"}', "t", 0, 0, 0.0),
...          RawEvent(b'[1]', "t", 0, 1, 0.0),
...          RawEvent(b'{"id": "a", "text": "hi"}', "t", 0, 2, 0.0)]
>>> a = admit(batch, task="feedback", limits=StreamConfig(), dedup=Deduplicator(), received_at=0.0)
>>> [e.id for _, e in a.accepted], [r.value for _, r, _ in a.rejected], len(a.duplicates)
(['a'], ['not_an_object'], 1)
"""

from __future__ import annotations

from collections.abc import Collection

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from streams.cleaning import clean_event
from streams.records import Event, Reason, RejectedEvent, decode_event

if TYPE_CHECKING:
    from streams.config import StreamConfig
    from streams.dedup import Deduplicator

log = logging.getLogger(__name__)

__all__ = ["Admission", "RawEvent", "admit"]


@dataclass(frozen=True, slots=True)
class RawEvent:
    """A consumed record with its coordinates (what a dead letter must carry)."""

    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp: float  # Kafka record timestamp, epoch seconds

    @property
    def key(self) -> str:
        """``topic:partition:offset``: the dead letter's key."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass
class Admission:
    accepted: list[tuple[RawEvent, Event]] = field(default_factory=list)
    rejected: list[tuple[RawEvent, Reason, str]] = field(default_factory=list)
    duplicates: list[tuple[RawEvent, Event]] = field(default_factory=list)


def admit(batch: Sequence[RawEvent], *, task: str, limits: "StreamConfig",
          dedup: "Deduplicator | None", received_at: float,
          labels: "Collection[str] | None" = None) -> Admission:
    """Sort one batch of ``task``'s events into accepted, rejected and duplicate ones.

    ``dedup`` drops an id seen before (a redelivery or a re-publish); ``None`` keeps every
    valid event. ``labels``: the task's fixed label set (KAFKA_TASKS), an inline label outside
    it is rejected (``label_not_allowed``). A bug in the decoder rejects the event as
    ``internal_error`` instead of losing it."""
    out = Admission()
    for raw in batch:
        try:
            event = clean_event(decode_event(
                raw.value, task=task, received_at=received_at,
                max_text_chars=limits.max_text_chars, max_payload_bytes=limits.max_payload_bytes,
                max_id_chars=limits.max_id_chars, max_label_chars=limits.max_label_chars))
        except RejectedEvent as rejected:
            out.rejected.append((raw, rejected.reason, rejected.message))
            continue
        except Exception as exc:  # a bug in our code must not lose the event either
            log.exception("unexpected error decoding %s[%d]@%d", raw.topic, raw.partition,
                          raw.offset)
            out.rejected.append((raw, Reason.internal_error, f"{type(exc).__name__} while decoding"))
            continue
        if labels is not None and event.label is not None and event.label not in labels:
            out.rejected.append((raw, Reason.label_not_allowed,
                                 f"label {event.label[:64]!r} is not in task {task!r}'s label "
                                 "set"))
            continue
        if dedup is not None and dedup.seen_id(task, event.id):
            out.duplicates.append((raw, event))
            continue
        out.accepted.append((raw, event))
    return out
