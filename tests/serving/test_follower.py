"""The trainer's VersionPublisher and a replica's VersionFollower, without Kafka: records
captured from the publisher are offered to the follower; a bad artifact is refused and the
previous version keeps serving; versions move forward, except an announced rollback."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from prometheus_client import CollectorRegistry

from lifecycle.config import ModelsConfig
from lifecycle.publishing import ModelStore, VersionPublisher, VersionRecord, base_model_id
from monitoring.metrics import Metrics
from serving.follower import VersionFollower
from serving.models import ServedModels
from serving.snapshot import ModelSnapshot, base_classifier
from streams.handoff import ModelThread

TEXTS = ["card stolen", "card lost", "rate of euro", "exchange rate"]


class Topic:
    def __init__(self):
        self.records: list[bytes] = []

    async def send(self, key, value):
        self.records.append(value)


@pytest.fixture
def setup(tiny_learner, tiny_model_dir, tmp_path):
    reg = CollectorRegistry()
    metrics = Metrics(registry=reg)
    thread = ModelThread()
    learner = thread.call(tiny_learner, mode="lora", lora_rank=4)
    topic = Topic()
    store = ModelStore(str(tmp_path / "store"))
    # Inline off: every artifact goes through the store (lora adapters are small enough to
    # travel inline otherwise).
    cfg = ModelsConfig(store=str(tmp_path / "store"), inline_max_bytes=0, publish_every_s=1e-9)
    publisher = VersionPublisher(cfg, trainer_id="trainer-a", thread=thread, metrics=metrics,
                                 store=store, send=topic.send)
    base = base_classifier(tiny_model_dir, max_length=64, device=torch.device("cpu"))
    models = ServedModels(ModelSnapshot.empty(base, mode="lora"), metrics=metrics)
    follower = VersionFollower(models, base=base, base_model=base_model_id(base),
                               store=store, metrics=metrics)
    yield learner, publisher, topic, follower, models, reg, store
    thread.close()


async def _learn_and_publish(learner, publisher, labels=("lost", "lost", "rate", "rate")):
    await publisher.thread.run(learner.learn_many, "feedback", TEXTS, list(labels))
    await publisher.after_update(learner)
    await publisher.wait()


async def test_published_versions_are_followed_and_served(setup):
    learner, publisher, topic, follower, models, reg, store = setup
    for _ in range(3):
        await _learn_and_publish(learner, publisher)
    assert [VersionRecord.from_json(r).version for r in topic.records] == [1, 2, 3]
    assert [VersionRecord.from_json(r).sequence for r in topic.records] == [1, 2, 3]
    for raw in topic.records:
        assert await follower.offer(raw)
    assert models.model_version == 3 and models.sequence == 3
    ours = [p.label for p in learner.predict_many("feedback", TEXTS)]
    assert [p.label for p in models.current.predict_many("feedback", TEXTS)] == ours
    assert reg.get_sample_value("streamlearner_serve_model_version") == 3
    assert reg.get_sample_value("streamlearner_serve_swaps_total") == 3
    assert reg.get_sample_value("streamlearner_serve_model_staleness_seconds_count") == 3
    assert reg.get_sample_value("streamlearner_train_published_version") == 3
    # An old record again (a re-read, or out of order) changes nothing.
    assert not await follower.offer(topic.records[0])
    assert models.model_version == 3


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "checksum"), ("sha", "checksum"), ("missing", "unreadable"),
    ("base_model", "base_model"), ("garbage", "format")])
async def test_a_bad_version_is_refused_and_the_old_one_keeps_serving(setup, damage, reason):
    learner, publisher, topic, follower, models, reg, store = setup
    await _learn_and_publish(learner, publisher)
    assert await follower.offer(topic.records[-1])
    served = models.current
    await _learn_and_publish(learner, publisher)
    raw = topic.records[-1]
    record = json.loads(raw)
    path = record["uri"].removeprefix("file://")
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "sha":
        record["sha256"] = "0" * 64
    elif damage == "missing":
        import os
        os.remove(path)
    elif damage == "base_model":
        record["base_model"] = "another-encoder@0123456789abcdef"
    raw = b"{not json" if damage == "garbage" else json.dumps(record).encode()
    assert not await follower.offer(raw)
    assert models.current is served and models.model_version == 1
    assert reg.get_sample_value("streamlearner_serve_refused_artifacts_total",
                                {"reason": reason}) == 1


async def test_an_announced_rollback_is_followed_to_a_lower_version(setup):
    learner, publisher, topic, follower, models, reg, store = setup
    for _ in range(3):
        await _learn_and_publish(learner, publisher)
    for raw in topic.records:
        await follower.offer(raw)
    rollback = json.loads(topic.records[0])            # version 1's artifact, re-announced
    rollback.update(sequence=4, kind="rollback")
    assert await follower.offer(json.dumps(rollback).encode())
    assert models.model_version == 1 and models.sequence == 4
    forward = json.loads(topic.records[2])
    forward.update(sequence=5)                         # the trainer moves on: followed
    assert await follower.offer(json.dumps(forward).encode())
    back = json.loads(topic.records[0])
    back.update(sequence=6)                            # a plain update going backwards: no
    assert not await follower.offer(json.dumps(back).encode())
    assert models.model_version == 3
    assert reg.get_sample_value("streamlearner_serve_refused_artifacts_total",
                                {"reason": "stale"}) == 1


async def test_small_artifacts_travel_inline_and_the_store_is_pruned(setup, tmp_path):
    learner, publisher, topic, follower, models, reg, store = setup
    publisher.config = ModelsConfig(store=str(tmp_path / "store"), keep=2, publish_every_s=1e-9)
    for _ in range(2):
        await _learn_and_publish(learner, publisher)
    record = VersionRecord.from_json(topic.records[-1])
    assert record.inline is not None and record.uri is None
    assert await follower.offer(topic.records[-1])
    publisher.config = ModelsConfig(store=str(tmp_path / "store"), keep=2,
                                    inline_max_bytes=0, publish_every_s=1e-9)
    for _ in range(4):
        await _learn_and_publish(learner, publisher)
    assert len(store.list()) == 2


async def test_the_sequence_survives_a_restart_and_follows_the_topic(setup):
    learner, publisher, topic, follower, models, reg, store = setup
    await _learn_and_publish(learner, publisher)
    state = publisher.state_dict()
    fresh = VersionPublisher(publisher.config, trainer_id="trainer-a", thread=publisher.thread,
                             store=store, send=topic.send)
    fresh.load_state_dict(state)
    newer = json.loads(topic.records[-1])
    newer["sequence"] = 7                              # published after that checkpoint
    fresh.resume_after(VersionRecord.from_json(json.dumps(newer)))
    await fresh.announce(learner, "rollback")
    await fresh.wait()
    assert VersionRecord.from_json(topic.records[-1]).sequence == 8


def test_publish_failures_are_counted_not_raised(setup):
    learner, publisher, topic, follower, models, reg, store = setup

    async def broken(key, value):
        raise RuntimeError("topic gone")
    publisher.send = broken

    async def go():
        await _learn_and_publish(learner, publisher)
    asyncio.run(go())
    assert reg.get_sample_value("streamlearner_train_publish_failures_total") == 1


class _Consumer:
    """Just enough of aiokafka's consumer for VersionFollower.run: one partition."""

    def __init__(self, records: list[bytes]):
        self.records = records
        self.pos = 0

    def partitions_for_topic(self, topic):
        return {0}

    def assign(self, tps):
        self.tp = tps[0]

    async def end_offsets(self, tps):
        return {tp: len(self.records) for tp in tps}

    def seek(self, tp, offset):
        self.pos = offset

    async def position(self, tp):
        return self.pos

    async def getmany(self, timeout_ms=0, max_records=100):
        batch = self.records[self.pos:self.pos + max_records]
        self.pos += len(batch)
        if not batch:
            await asyncio.sleep(timeout_ms / 1000 / 50)
            return {}
        return {self.tp: [type("R", (), {"key": b"trainer-a", "value": v}) for v in batch]}


@pytest.mark.parametrize("published", [0, 3])
async def test_run_starts_from_the_newest_record_and_then_is_caught_up(setup, published):
    learner, publisher, topic, follower, models, reg, store = setup
    for _ in range(published):
        await _learn_and_publish(learner, publisher)
    consumer = _Consumer(list(topic.records))
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(consumer, "model-versions", stop=stop))
    await asyncio.wait([task, asyncio.create_task(follower.caught_up.wait())], timeout=10,
                       return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert follower.caught_up.is_set()
    # Ready (caught up) means already serving the newest record: never a stale version.
    newest = VersionRecord.from_json(topic.records[-1]).version if published else 0
    assert models.model_version == newest
    assert (reg.get_sample_value("streamlearner_serve_swaps_total") or 0) == (1 if published else 0)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_staleness_of_a_version_older_than_the_replica_counts_from_its_start(setup):
    """A late replica's catch-up is measured from when it began following, not from a
    publication it could not have served (streamlearner_serve_model_staleness_seconds)."""
    import time

    learner, publisher, topic, follower, models, reg, store = setup
    await _learn_and_publish(learner, publisher)
    old = json.loads(topic.records[-1])
    old["ts"] -= 300.0                               # published 5 minutes before the replica
    follower.since = time.time()
    assert await follower.offer(json.dumps(old).encode())
    total = reg.get_sample_value("streamlearner_serve_model_staleness_seconds_sum")
    assert 0.0 <= total < 60.0
