"""Dead-letter re-drive: re-publish dead-lettered events to their source topic after a fix.

``streamlearner dlq replay`` reads the dead-letter topic from the beginning up to its end
at start, selects dead letters (by reason, age and source topic), and re-publishes each
one's *original payload bytes* to the source topic it came from. It is idempotent:

* every re-published dead letter gets a **marker record** in ``<dead-letter topic>.replayed``
  (key: the source coordinates ``topic:partition:offset``, i.e. the dead letter's key), written
  after the broker acknowledged the re-published event; a later run reads the markers first
  and skips what they name, whatever filters either run used;
* the same source record dead-lettered twice (a worker crash between dead-lettering and the
  offset commit redelivers it) is re-published once, since both carry the same coordinates;
* an event that reaches the worker twice anyway (a crash between re-publishing and writing
  its marker) is dropped by the worker's id dedup, like any redelivery.

An event that fails again gets a new dead letter (new coordinates: its re-published offset),
which a later replay may re-drive once more. Only the worker's source topics are written to.

A dead letter whose payload was cut to the output bound (``payload_truncated``) is never
re-published as cut: the original record is read again at its source coordinates and
checked against ``payload_sha256``; when the source topic no longer retains it (or holds
other bytes there), the replay counts it as ``not retained`` / ``mismatch`` and leaves it.

>>> parse_since("1796029200", now=0.0), parse_since("90m", now=6000.0)
(1796029200.0, 600.0)
>>> parse_since("2026-11-30T09:00:00Z", now=0.0)
1796029200.0
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import orjson

from streams.topics import read_topic

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".replayed"
REDRIVE_HEADER = "streamlearner-redrive"  # on re-published events: the dead letter's key
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def marker_topic(dead_letter_topic: str) -> str:
    """Where replay markers go: ``dead-letters`` -> ``dead-letters.replayed``."""
    return dead_letter_topic + MARKER_SUFFIX


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: ISO-8601 (UTC unless it says otherwise), epoch seconds, or an age
    like ``30m``/``2h``/``7d`` before ``now``; returns epoch seconds."""
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    if value[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not accept 'Z'
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since must be ISO-8601, epoch seconds or an age like 30m/2h/7d, "
                         f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter as read back: the original bytes and where they came from."""

    payload: bytes
    topic: str
    partition: int
    offset: int
    reason: str
    ts: float
    truncated: bool = False       # payload is a cut prefix; the original is at the coordinates
    original_bytes: int | None = None
    original_sha256: str | None = None

    @property
    def key(self) -> str:
        """The source coordinates, ``topic:partition:offset`` (the dead letter's own key)."""
        return f"{self.topic}:{self.partition}:{self.offset}"


def decode_dead_letter(value: bytes | None) -> DeadLetterEntry:
    """Parse a dead-letter record value (see ``DeadLetter``); ``ValueError`` if it is not one."""
    try:
        d = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(d) is not dict:
        raise ValueError("not a JSON object")
    try:
        payload, encoding = d["payload"], d.get("payload_encoding", "utf-8")
        if type(payload) is not str:
            raise ValueError("payload is not a string")
        if encoding == "utf-8":
            raw = payload.encode("utf-8")
        elif encoding == "base64":
            raw = base64.b64decode(payload, validate=True)
        else:
            raise ValueError(f"unknown payload_encoding {encoding!r}")
        truncated = d.get("payload_truncated", False)
        if type(truncated) is not bool:
            raise ValueError("payload_truncated is not a boolean")
        sha = d.get("payload_sha256") or None
        size = d.get("payload_bytes")
        if truncated and (type(sha) is not str or len(sha) != 64):
            raise ValueError("a truncated dead letter needs its payload_sha256")
        entry = DeadLetterEntry(payload=raw, topic=d["topic"], partition=d["partition"],
                                offset=d["offset"], reason=d["reason"], ts=float(d["ts"]),
                                truncated=truncated,
                                original_bytes=size if type(size) is int else None,
                                original_sha256=sha)
    except (KeyError, TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not a dead letter: {type(exc).__name__}: {exc}") from None
    if not (type(entry.topic) is str and type(entry.partition) is int
            and type(entry.offset) is int and type(entry.reason) is str):
        raise ValueError("not a dead letter: coordinates or reason of the wrong type")
    return entry


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to re-drive; ``None`` means any."""

    reasons: frozenset[str] | None = None
    since: float | None = None
    topic_glob: str | None = None

    def matches(self, entry: DeadLetterEntry) -> bool:
        return ((self.reasons is None or entry.reason in self.reasons)
                and (self.since is None or entry.ts >= self.since)
                and (self.topic_glob is None or fnmatch.fnmatchcase(entry.topic, self.topic_glob)))


@dataclass
class ReplayReport:
    read: int = 0             # dead-letter records read
    selected: int = 0         # ... that passed the filters
    republished: int = 0      # ... re-published (or that would be, with --dry-run)
    already_replayed: int = 0  # selected, skipped: a marker (or an earlier copy this run) says done
    not_selected: int = 0     # skipped by the filters
    unreadable: int = 0       # not a dead-letter record
    unknown_topic: int = 0    # selected, skipped: the source topic is not one of the worker's
    not_retained: int = 0     # truncated, skipped: the source topic no longer holds the original
    mismatch: int = 0         # truncated, skipped: other bytes at the coordinates (topic recreated?)
    failed: int = 0           # the broker did not acknowledge the re-published event
    dry_run: bool = False
    by_reason: dict[str, int] = field(default_factory=dict)  # republished per reason

    @property
    def skipped(self) -> int:
        return (self.already_replayed + self.not_selected + self.unreadable + self.unknown_topic
                + self.not_retained + self.mismatch)

    def summary(self) -> str:
        verb = "would republish" if self.dry_run else "republished"
        lines = [
            f"read          {self.read}",
            f"selected      {self.selected}",
            f"{verb:<13} {self.republished}"
            + (f"  ({', '.join(f'{r} {n}' for r, n in sorted(self.by_reason.items()))})"
               if self.by_reason else ""),
            f"skipped       {self.skipped}  (already replayed {self.already_replayed}, "
            f"not selected {self.not_selected}, unreadable {self.unreadable}, "
            f"unknown topic {self.unknown_topic})",
        ]
        if self.not_retained or self.mismatch:
            lines.append(f"originals     {self.not_retained} not retained, {self.mismatch} "
                         f"mismatched  (truncated dead letters: their original is not at its "
                         f"source coordinates any more; a cut payload is never re-published)")
        if self.failed:
            lines.append(f"failed        {self.failed}  (not acknowledged; run again)")
        return "\n".join(lines)


class ReplayError(RuntimeError):
    """Some re-published events were not acknowledged; ``report`` counts what was done."""

    def __init__(self, report: ReplayReport, message: str) -> None:
        super().__init__(message)
        self.report = report


# -- Kafka access (kafka-python), kept apart so that tests can fake it ------------------------

class SourceReader:
    """Reads single records back at their coordinates (no consumer group): the originals of
    truncated dead letters. ``get`` returns None when the topic no longer retains the record."""

    def __init__(self, bootstrap: str, *, client_kwargs: Mapping[str, Any],
                 timeout_s: float = 30.0) -> None:
        self._bootstrap = bootstrap
        self._kwargs = dict(client_kwargs)
        self._timeout_s = timeout_s
        self._consumer = None

    def _open(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            supported = getattr(KafkaConsumer, "DEFAULT_CONFIG", {"allow_auto_create_topics": True})
            no_create = ({"allow_auto_create_topics": False}
                         if "allow_auto_create_topics" in supported else {})
            self._consumer = KafkaConsumer(
                bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="none", client_id="streamlearner-dlq",
                # Originals may be far larger than Kafka's 1 MB default fetch size.
                max_partition_fetch_bytes=64 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
                **no_create, **self._kwargs)
        return self._consumer

    def get(self, topic: str, partition: int, offset: int) -> bytes | None:
        from kafka import TopicPartition

        consumer = self._open()
        if partition not in (consumer.partitions_for_topic(topic) or set()):
            return None
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        start = consumer.beginning_offsets([tp]).get(tp, 0)
        if offset < start:
            return None
        consumer.seek(tp, offset)
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=1).values():
                for rec in records:
                    return rec.value if rec.offset == offset else None
            if consumer.position(tp) > offset:   # compacted or deleted: skipped past it
                return None
        return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def ensure_topic(bootstrap: str, topic: str, *, client_kwargs: Mapping[str, Any],
                 replication_factor: int = 1) -> None:
    """Create the (compacted, one-partition) marker topic if it is missing."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamlearner-dlq",
                             **dict(client_kwargs))
    try:
        if topic in set(admin.list_topics()):
            return
        try:
            admin.create_topics([NewTopic(name=topic, num_partitions=1,
                                          replication_factor=replication_factor,
                                          topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


def make_producer(bootstrap: str, *, client_kwargs: Mapping[str, Any],
                  max_request_size: int = 1_048_576):
    from kafka import KafkaProducer

    # Idempotence off: it needs broker support; duplicates are handled by markers and dedup.
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5,
                         client_id="streamlearner-dlq", max_request_size=max_request_size,
                         **dict(client_kwargs))


# -- the re-drive -------------------------------------------------------------------------------

def _restore_originals(bootstrap: str, todo: list[DeadLetterEntry], report: ReplayReport, *,
                       client_kwargs: Mapping[str, Any], timeout_s: float
                       ) -> list[DeadLetterEntry]:
    """Swap each truncated payload for the original read at its coordinates; drop (and
    count) those whose original is gone or differs."""
    import dataclasses
    import hashlib

    reader = SourceReader(bootstrap, client_kwargs=client_kwargs, timeout_s=timeout_s)
    kept: list[DeadLetterEntry] = []
    try:
        for entry in todo:
            if not entry.truncated:
                kept.append(entry)
                continue
            original = reader.get(entry.topic, entry.partition, entry.offset)
            if original is None:
                report.not_retained += 1
                log.warning("dead letter %s is truncated and %s no longer retains the original; "
                            "not re-published", entry.key, entry.topic)
            elif hashlib.sha256(original).hexdigest() != entry.original_sha256:
                report.mismatch += 1
                log.warning("dead letter %s: the record at its coordinates is not the original "
                            "(SHA-256 differs: topic recreated?); not re-published", entry.key)
            else:
                kept.append(dataclasses.replace(entry, payload=original, truncated=False))
    finally:
        reader.close()
    return kept


def replay(bootstrap: str, *, dead_letter_topic: str, source_topics: Iterable[str],
           select: ReplayFilter = ReplayFilter(), dry_run: bool = False,
           client_kwargs: Mapping[str, Any] | None = None, replication_factor: int = 1,
           timeout_s: float = 30.0, on_record: Callable[[DeadLetterEntry], None] | None = None,
           ) -> ReplayReport:
    """Re-publish the selected dead letters not replayed before; see the module docstring.

    ``on_record`` is called for each dead letter that is (or, dry run, would be) re-published.
    """
    kwargs = dict(client_kwargs or {})
    sources = set(source_topics)
    markers = marker_topic(dead_letter_topic)
    report = ReplayReport(dry_run=dry_run)
    done: set[str] = set()
    for rec in read_topic(bootstrap, markers, client_kwargs=kwargs, timeout_s=timeout_s):
        if rec.key is None:
            continue
        key = rec.key.decode("utf-8", "replace") if isinstance(rec.key, bytes) else str(rec.key)
        if rec.value is None:  # a tombstone deletes the marker: re-arms that dead letter
            done.discard(key)
        else:
            done.add(key)

    todo: list[DeadLetterEntry] = []
    for rec in read_topic(bootstrap, dead_letter_topic, client_kwargs=kwargs,
                          timeout_s=timeout_s):
        report.read += 1
        try:
            entry = decode_dead_letter(rec.value)
        except ValueError as exc:
            report.unreadable += 1
            log.warning("%s[%d]@%d is not a dead letter (%s); skipped", rec.topic,
                        rec.partition, rec.offset, exc)
            continue
        if not select.matches(entry):
            report.not_selected += 1
            continue
        report.selected += 1
        if entry.topic not in sources:
            report.unknown_topic += 1
            log.warning("dead letter %s: %r is not a source topic of this worker; skipped",
                        entry.key, entry.topic)
            continue
        if entry.key in done:
            report.already_replayed += 1
            continue
        done.add(entry.key)  # the same source record dead-lettered twice: once is enough
        todo.append(entry)

    if any(e.truncated for e in todo):
        todo = _restore_originals(bootstrap, todo, report, client_kwargs=kwargs,
                                  timeout_s=timeout_s)

    for entry in todo:
        report.republished += 1
        report.by_reason[entry.reason] = report.by_reason.get(entry.reason, 0) + 1
        if on_record is not None:
            on_record(entry)
    if dry_run or not todo:
        return report

    ensure_topic(bootstrap, markers, client_kwargs=kwargs, replication_factor=replication_factor)
    largest = max(len(e.payload) for e in todo)
    producer = make_producer(bootstrap, client_kwargs=kwargs,
                             max_request_size=max(1_048_576, largest + 64 * 1024))
    try:
        partitions = {t: producer.partitions_for(t) or set() for t in {e.topic for e in todo}}
        # Re-publish everything, wait for every acknowledgement, then write the markers: a
        # crash in between re-publishes at most this run's events again (dedup drops them).
        futures = []
        for entry in todo:
            partition = entry.partition if entry.partition in partitions[entry.topic] else None
            futures.append(producer.send(entry.topic, value=entry.payload, partition=partition,
                                         headers=[(REDRIVE_HEADER, entry.key.encode())]))
        producer.flush(timeout=timeout_s)
        acked, failed = [], []
        for entry, future in zip(todo, futures):
            try:
                acked.append((entry, future.get(timeout=timeout_s)))
            except Exception as exc:  # kafka errors: no marker, a later run retries it
                failed.append((entry, exc))
        now = time.time()
        marker_futures = []
        for entry, meta in acked:
            marker = {"dead_letter": entry.key, "reason": entry.reason,
                      "republished": f"{meta.topic}:{meta.partition}:{meta.offset}", "ts": now}
            marker_futures.append(producer.send(markers, key=entry.key.encode(),
                                                value=orjson.dumps(marker)))
        producer.flush(timeout=timeout_s)
        for future in marker_futures:
            future.get(timeout=timeout_s)
    finally:
        producer.close(timeout=timeout_s)
    if failed:
        report.republished -= len(failed)
        report.failed = len(failed)
        entry, exc = failed[0]
        raise ReplayError(report, f"{len(failed)} dead letters could not be re-published "
                                  f"(first: {entry.key}: {type(exc).__name__}: {exc}); "
                                  f"run the replay again")
    log.info("re-drove %d dead letters", len(todo))
    return report
