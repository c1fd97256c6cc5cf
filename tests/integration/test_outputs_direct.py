"""Outputs go to Kafka through the aiokafka producer under Faust's (streams/app.py ``output``):
what arrives is what Faust's own ``Topic.send`` would have sent, key, value and partition."""

from __future__ import annotations

import asyncio
import uuid

import faust
from aiokafka import AIOKafkaConsumer

from streams.app import output
from streams.outputs import DeliveryPolicy
from streams.records import Prediction
from streams.topics import create_topics


async def _read(bootstrap: str, topic: str, n: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        out: list = []
        while len(out) < n:
            for records in (await consumer.getmany(timeout_ms=5000)).values():
                out += records
        return out
    finally:
        await consumer.stop()


def test_records_arrive_as_faust_would_send_them(broker):
    uid = uuid.uuid4().hex[:6]
    direct, via_faust = f"direct-{uid}", f"faust-{uid}"
    create_topics(broker.bootstrap, {direct: 3, via_faust: 3})
    predictions = [Prediction(id=f"ev-{i}", task="feedback", label="card_arrival",
                              confidence=0.5 + i / 100, model_version=i, ts=1.7e9 + i)
                   for i in range(30)]

    async def scenario():
        app = faust.App(f"outputs-{uid}", broker=f"kafka://{broker.bootstrap}",
                        value_serializer="raw", producer_acks=-1)
        out = output(app, direct, metrics=None, policy=DeliveryPolicy(retries=0),
                     value_type=Prediction)
        raw = output(app, direct, metrics=None, policy=DeliveryPolicy(retries=0))
        theirs = app.topic(via_faust, value_type=Prediction, key_type=str,
                           key_serializer="raw", value_serializer="json")
        try:
            deliveries = [await out.publish(p.id, p) for p in predictions]
            deliveries.append(await raw.publish(None, b"raw bytes"))
            for d in deliveries:
                await d
            for p in predictions:
                await (await theirs.send(key=p.id, value=p))
            with_direct = app.producer._producer
            # A value only Faust knows how to serialise takes Faust's own path.
            await (await raw.publish("k", "a str value"))
            return with_direct
        finally:
            await app.producer.stop()

    producer = asyncio.run(scenario())
    assert producer is not None   # the direct path was there to take
    ours = asyncio.run(_read(broker.bootstrap, direct, 32))
    faust_sent = asyncio.run(_read(broker.bootstrap, via_faust, 30))
    assert {(r.key, r.value, r.partition) for r in ours if r.key and r.key.startswith(b"ev-")} \
        == {(r.key, r.value, r.partition) for r in faust_sent}
    assert {r.value for r in ours if r.key is None} == {b"raw bytes"}
    assert {r.value for r in ours if r.key == b"k"} == {b"a str value"}

