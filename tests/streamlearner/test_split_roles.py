"""Serve and train roles joined by the samples topic (in memory): a replica acks once its
outputs are out, the trainer trains each sample id once (a replica's redelivery is dropped),
bad samples are dead-lettered, and the trainer's version reaches the replica."""

from __future__ import annotations

import asyncio

from tests.harness import Acks, Broker, labeled, make_split, raw, sample_events


async def test_samples_flow_from_replica_to_trainer_exactly_once(tiny_model_dir, tmp_path):
    serve, train, broker, reg = make_split(tmp_path, tiny_model_dir,
                                           CHECKPOINT_EVERY_UPDATES=1)
    acks = Acks()
    first = labeled(["a", "b", "c"]) + [raw(3, {"id": "u", "text": "no label"})]
    report = await serve.handle("feedback", first, acks("serve-1"))
    assert report.accepted == 4 and acks.done == ["serve-1"]    # acked once delivered
    samples = broker.records("samples")
    assert [k for k, _ in samples] == ["a", "b", "c", "u"]
    assert all(r.model_version == 0 and r.predicted is None for _, r in samples)
    assert samples[0][1].offset == 0 and samples[0][1].topic == "customer-feedback"

    batch = sample_events(broker)
    r1 = await train.handle("samples", batch, acks("train-1"))
    assert (r1.accepted, r1.trained) == (4, 3) and r1.model_version == 1
    assert acks.done[-1] == "train-1"                            # after the checkpoint
    # The replica crashed before its offsets were committed: a fresh one (no dedup state)
    # gets the same events again and publishes their samples again.
    from streams.dedup import Deduplicator

    serve.serving.dedup = Deduplicator(text_window=0)
    await serve.handle("feedback", first, acks("serve-again"))
    assert len(broker.records("samples")) == 8
    again = await train.handle("samples", sample_events(broker, start=4), acks("train-2"))
    assert again.trained == 0 and again.model_version == 1
    assert reg.get_sample_value("streamlearner_train_duplicate_samples_total",
                                {"task": "feedback"}) == 4   # the unlabeled one too
    counts = train.trainer.durability.journal.trained_counts()
    assert sorted(i for _, i in counts) == ["a", "b", "c"] and set(counts.values()) == {1}
    # Prequential accuracy uses the prediction each sample carries (version 0: no label).
    assert reg.get_sample_value("streamlearner_learner_prequential_accuracy_ratio",
                                {"task": "feedback"}) == 0.0


async def test_a_bad_sample_is_dead_lettered_with_its_coordinates(tiny_model_dir, tmp_path):
    from streams.admit import RawEvent

    serve, train, broker, reg = make_split(tmp_path, tiny_model_dir)
    await serve.handle("feedback", labeled(["a"]), Acks()("s"))
    good = sample_events(broker)
    bad = [RawEvent(b'{"id": "x"}', "samples", 0, 9, 0.0),
           RawEvent(b'{"id": "y", "task": "weather", "text": "t", "ts": 0, "topic": "t", '
                    b'"partition": 0, "offset": 0, "timestamp": 0, "confidence": 0, '
                    b'"model_version": 0}', "samples", 0, 10, 0.0)]
    report = await train.handle("samples", good + bad, Acks()("t"))
    assert (report.trained, report.invalid) == (1, 2)
    letters = {k: v.reason for k, v in broker.records("dead-letters")}
    assert letters == {"samples:0:9": "missing_field", "samples:0:10": "unknown_task"}


async def test_the_trainers_version_is_what_the_replica_serves_next(tiny_model_dir, tmp_path):
    from lifecycle.publishing import base_model_id
    from serving.follower import VersionFollower

    serve, train, broker, reg = make_split(tmp_path, tiny_model_dir, MODELS_PUBLISH_EVERY_S=1e-6)
    await serve.handle("feedback", labeled(["a", "b"], label="lost") +
                       labeled(["c", "d"], 2, label="rate"), Acks()("s"))
    await train.handle("samples", sample_events(broker), Acks()("t"))
    await train.trainer.publisher.wait()
    [(key, record)] = broker.records("model-versions")
    models = serve.serving.models
    base = serve.serving.models.current.model   # the replica's base (a head-mode shell)
    follower = VersionFollower(models, base=base, base_model=base_model_id(base))
    assert await follower.offer(record)
    assert models.model_version == 1
    report = await serve.handle("feedback", [raw(9, {"id": "e", "text": "text of a"})],
                                Acks()("s2"))
    assert report.model_version == 1
    assert broker.records("predictions")[-1][1].label in {"lost", "rate"}


async def test_the_idle_timer_publishes_a_version_skipped_while_one_was_in_flight(
        tiny_model_dir, tmp_path):
    """The last update is checkpointed in the batch path (nothing waits for the idle
    checkpoint) while the previous publication is still in flight, so ``after_update`` skips
    it: the idle timer must still publish it, or replicas never reach the newest version."""
    import asyncio

    serve, train, broker, reg = make_split(tmp_path, tiny_model_dir, CHECKPOINT_EVERY_UPDATES=1,
                                           CHECKPOINT_IDLE_S=0.05, MODELS_PUBLISH_EVERY_S=1e-6)
    trainer = train.trainer
    await serve.handle("feedback", labeled(["a", "b"], label="lost"), Acks()("s1"))
    await serve.handle("feedback", labeled(["c", "d"], 2, label="rate"), Acks()("s2"))
    samples = sample_events(broker)
    gate = asyncio.Event()
    send = trainer.publisher.send

    async def slow_send(key, value):
        await gate.wait()
        await send(key, value)

    trainer.publisher.send = slow_send
    await train.handle("samples", samples[:2], Acks()("t1"))    # version 1: publication waits
    assert trainer.publisher.busy
    await train.handle("samples", samples[2:], Acks()("t2"))    # version 2: skipped (busy)
    assert trainer.learner.model_version == 2
    assert len(trainer.durability.acks) == 0                     # checkpointed in the batch path
    gate.set()
    await trainer.publisher.wait()
    assert trainer.publisher.published_version == 1
    await asyncio.sleep(0.06)
    await trainer.flush_if_idle()
    await trainer.publisher.wait()
    assert trainer.publisher.published_version == 2
    from lifecycle.publishing import VersionRecord

    *_, (_, last) = broker.records("model-versions")
    assert VersionRecord.from_json(last).version == 2


class _HeldBroker(Broker):
    """Deliveries held until the test settles them (``held``: their futures, in send order)."""

    def __init__(self):
        super().__init__()
        self.held = []

    def sender(self, topic):
        async def send(key, record):
            future = asyncio.get_running_loop().create_future()
            self.topics.setdefault(topic, []).append((key, record))
            self.held.append(future)
            return future
        return send


async def test_a_pipelined_replica_acks_in_batch_order_once_delivered(tiny_model_dir, tmp_path):
    broker = _HeldBroker()
    serve, _, _, _ = make_split(tmp_path, tiny_model_dir, broker=broker, pipelined=True)
    acks = Acks()
    first = await serve.handle("feedback", labeled(["a", "b"]), acks("1"))
    second = await serve.handle("feedback", labeled(["c", "d"], 2), acks("2"))
    # Both batches were predicted and handed to the producer; nothing is delivered yet.
    assert first.accepted == second.accepted == 2
    assert broker.keys("samples") == ["a", "b", "c", "d"] and acks.done == []
    assert not first.learning.done() and not second.learning.done()
    for future in reversed(broker.held):   # the later batch's deliveries complete first
        future.set_result(None)
    assert (await second.learning).accepted == 2 and (await first.learning).accepted == 2
    assert acks.done == ["1", "2"]          # still in batch order
    await serve.drain()


async def test_a_pipelined_replica_acks_nothing_after_a_failed_delivery(tiny_model_dir, tmp_path):
    broker = _HeldBroker()
    serve, _, _, _ = make_split(tmp_path, tiny_model_dir, broker=broker, pipelined=True)
    acks = Acks()
    first = await serve.handle("feedback", labeled(["a", "b"]), acks("1"))
    n_first = len(broker.held)
    second = await serve.handle("feedback", labeled(["c", "d"], 2), acks("2"))
    broker.refuse["samples"] = broker.refuse["predictions"] = RuntimeError("refused")
    for future in broker.held[:n_first]:
        future.set_exception(RuntimeError("refused"))
    for future in broker.held[n_first:]:
        future.set_result(None)
    assert (await first.learning).failed and (await second.learning).refused
    assert acks.done == [] and serve.latch.failed
    third = await serve.handle("feedback", labeled(["e"], 4), acks("3"))
    assert third.refused and acks.done == []
