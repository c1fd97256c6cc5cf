"""Topic administration with kafka-python: create source and output topics explicitly.

Create topics with their partition count before workers start: auto-created topics
may get another count and confuse Faust's partition assignor.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)


COMPACTED = {"cleanup.policy": "compact"}


def create_topics(bootstrap: str, topics: Mapping[str, int | tuple[int, dict]], *,
                  replication_factor: int = 1, client_kwargs: Mapping | None = None,
                  timeout_s: float = 30.0) -> list[str]:
    """Create ``{name: partitions}`` (or ``{name: (partitions, configs)}``) topics that do not
    exist yet; returns the ones created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamlearner-admin",
                             request_timeout_ms=int(timeout_s * 1000), **dict(client_kwargs or {}))
    try:
        existing = set(admin.list_topics())
        wanted = []
        for name, spec in topics.items():
            if name in existing:
                continue
            parts, configs = spec if isinstance(spec, tuple) else (spec, {})
            wanted.append(NewTopic(name=name, num_partitions=parts,
                                   replication_factor=replication_factor,
                                   topic_configs=dict(configs)))
        created = []
        for topic in wanted:  # one by one: a race with another creator is not an error
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()


def settings_topics(kafka) -> dict[str, int | tuple[int, dict]]:
    """The topics every role needs, from a :class:`~streams.config.KafkaConfig`: source and
    output topics with ``KAFKA_PARTITIONS`` each; model-versions with one, compacted (replicas
    read its newest record)."""
    topics: dict[str, int | tuple[int, dict]] = {name: kafka.partitions
                                                 for name in kafka.all_topics()}
    topics[kafka.model_versions_topic] = (1, COMPACTED)
    return topics


def read_topic(bootstrap: str, topic: str, *, client_kwargs: Mapping[str, Any],
               timeout_s: float = 30.0) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning up to its end when called, in offset
    order per partition. No consumer group: nothing is committed, nothing rebalanced."""
    from kafka import KafkaConsumer, TopicPartition

    # Reading must not create a missing topic (a dry run writes nothing, not even that);
    # kafka-python before 2.1 has no such option.
    supported = getattr(KafkaConsumer, "DEFAULT_CONFIG", {"allow_auto_create_topics": True})
    no_create = ({"allow_auto_create_topics": False}
                 if "allow_auto_create_topics" in supported else {})
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             client_id="streamlearner-dlq", **no_create, **dict(client_kwargs))
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # The end when called; raised to the high-water mark of the first fetch, because
        # some Kafka-protocol brokers (Tansu) answer ListOffsets(latest) with less.
        ends = dict(consumer.end_offsets(tps))
        fetched: set = set()
        pending = {tp for tp in tps if ends[tp] > consumer.position(tp)}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: no progress for {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                deadline = time.monotonic() + timeout_s
                if tp not in fetched:
                    fetched.add(tp)
                    ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield rec
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()


def newest_record(bootstrap: str, topic: str, *, key: bytes | None = None,
                  client_kwargs: Mapping[str, Any] | None = None, scan: int = 100,
                  timeout_s: float = 10.0) -> bytes | None:
    """The value of the newest record of ``topic`` (with ``key``, among the last ``scan`` of
    each partition), or None: what a trainer reads at start from model-versions."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="streamlearner-newest",
                             max_partition_fetch_bytes=4 * 1024 * 1024,
                             **dict(client_kwargs or {}))
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = dict(consumer.end_offsets(tps))
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - scan))
        newest: tuple[int, bytes] | None = None
        deadline = time.monotonic() + timeout_s
        pending = set(tps)
        while pending and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=300, max_records=500).items():
                ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
                for rec in records:
                    if rec.value is not None and (key is None or rec.key == key):
                        if newest is None or rec.timestamp >= newest[0]:
                            newest = (rec.timestamp, rec.value)
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return newest[1] if newest else None
    finally:
        consumer.close()
