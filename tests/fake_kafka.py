"""An in-memory stand-in for the kafka-python clients the CLI tools use.

``FakeKafka.install(monkeypatch)`` replaces ``kafka.KafkaConsumer``, ``kafka.KafkaProducer``
and ``kafka.KafkaAdminClient``; every constructor call is recorded in ``clients`` as
``(class name, kwargs)``, so tests can prove which settings reached which client.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field

from kafka import TopicPartition

Record = namedtuple("Record", "topic partition offset key value headers timestamp")
Meta = namedtuple("Meta", "topic partition offset")


class FakeFuture:
    def __init__(self, meta: Meta | None = None, error: Exception | None = None):
        self.meta, self.error = meta, error

    def get(self, timeout=None):
        if self.error is not None:
            raise self.error
        return self.meta


@dataclass
class FakeKafka:
    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    clients: list[tuple[str, dict]] = field(default_factory=list)
    fail_sends: set = field(default_factory=set)  # (topic, payload) pairs whose send fails
    log_start: dict = field(default_factory=dict)  # (topic, partition) -> first retained offset
    end_offsets_short_by: int = 0  # like Tansu: ListOffsets(latest) below the high-water mark

    def create(self, topic: str, partitions: int = 1) -> None:
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def append(self, topic: str, value, key=None, partition: int = 0, headers=None) -> Meta:
        self.create(topic)
        log = self.topics[topic][partition]
        log.append(Record(topic, partition, len(log), key, value, headers or [], 0))
        return Meta(topic, partition, len(log) - 1)

    def records(self, topic: str) -> list[Record]:
        return [r for part in self.topics.get(topic, []) for r in part]

    def install(self, monkeypatch) -> "FakeKafka":
        import kafka

        fake = self

        class KafkaConsumer:
            def __init__(self, *topics, **kwargs):
                fake.clients.append(("KafkaConsumer", kwargs))
                self._pos: dict[TopicPartition, int] = {}

            def partitions_for_topic(self, topic):
                parts = fake.topics.get(topic)
                return set(range(len(parts))) if parts else None

            def assign(self, tps):
                self._pos = {tp: 0 for tp in tps}

            def seek_to_beginning(self, *tps):
                for tp in tps:
                    self._pos[tp] = fake.log_start.get((tp.topic, tp.partition), 0)

            def seek(self, tp, offset):
                self._pos[tp] = offset

            def beginning_offsets(self, tps):
                return {tp: fake.log_start.get((tp.topic, tp.partition), 0) for tp in tps}

            def end_offsets(self, tps):
                ends = {tp: len(fake.topics[tp.topic][tp.partition]) for tp in tps}
                return {tp: min(n, max(1, n - fake.end_offsets_short_by)) for tp, n in ends.items()}

            def highwater(self, tp):
                return len(fake.topics[tp.topic][tp.partition])

            def position(self, tp):
                return self._pos[tp]

            def poll(self, timeout_ms=0, max_records=500):
                out = {}
                for tp, pos in self._pos.items():
                    pos = max(pos, fake.log_start.get((tp.topic, tp.partition), 0))
                    batch = fake.topics[tp.topic][tp.partition][pos:pos + max_records]
                    if batch:
                        out[tp] = batch
                        self._pos[tp] = pos + len(batch)
                return out

            def close(self):
                pass

        class KafkaProducer:
            def __init__(self, **kwargs):
                fake.clients.append(("KafkaProducer", kwargs))

            def partitions_for(self, topic):
                return set(range(len(fake.topics.get(topic, []))))

            def send(self, topic, value=None, key=None, partition=None, headers=None, **_):
                if (topic, value) in fake.fail_sends:
                    return FakeFuture(error=kafka.errors.KafkaTimeoutError("fake timeout"))
                return FakeFuture(fake.append(topic, value, key, partition or 0, headers))

            def flush(self, timeout=None):
                pass

            def close(self, timeout=None):
                pass

        class KafkaAdminClient:
            def __init__(self, **kwargs):
                fake.clients.append(("KafkaAdminClient", kwargs))

            def list_topics(self):
                return list(fake.topics)

            def create_topics(self, new_topics, timeout_ms=None, **_):
                for t in new_topics:
                    if t.name in fake.topics:
                        raise kafka.errors.TopicAlreadyExistsError(t.name)
                    fake.create(t.name, t.num_partitions)

            def close(self):
                pass

        monkeypatch.setattr(kafka, "KafkaConsumer", KafkaConsumer)
        monkeypatch.setattr(kafka, "KafkaProducer", KafkaProducer)
        monkeypatch.setattr(kafka, "KafkaAdminClient", KafkaAdminClient)
        return self

    def kwargs_of(self, kind: str) -> list[dict]:
        return [kw for name, kw in self.clients if name == kind]
