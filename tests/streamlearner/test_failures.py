"""Issue #11: an exception anywhere in the batch path never lets an ack pass an event whose
outcome was not delivered. Fake outputs, the real (tiny) learner, real checkpoints and journal:
a failure is injected at each stage; the batch and every later one stay unacknowledged,
nothing more is checkpointed, and a fresh pipeline restored from the last checkpoint
processes the redelivered batches exactly once."""

from __future__ import annotations

import json

import aiokafka.errors as ak
import pytest

from streams.admit import RawEvent
from tests.harness import Acks, Broker, make_worker


@pytest.fixture
def make(tiny_model_dir, tmp_path):
    made = []

    def build(broker, every=2, **env):
        pipe = make_worker(tmp_path, tiny_model_dir, broker=broker,
                           CHECKPOINT_EVERY_UPDATES=every, CHECKPOINT_KEEP_LAST=5, **env)
        made.append(pipe)
        return pipe, pipe.registry

    yield build
    for pipe in made:
        pipe.close()


def batch(ids, offset, label="lost", bad=()):
    out = []
    for k, i in enumerate(ids):
        value = b"\xff" if i in bad else json.dumps(
            {"id": i, "text": f"text of {i}", "label": label}).encode()
        out.append(RawEvent(value=value, topic="customer-feedback", partition=0,
                            offset=offset + k, timestamp=0.0))
    return out


BATCHES = [batch(["a", "b"], 0), batch(["c", "d"], 2), batch(["e", "f", "x"], 4, bad={"x"}),
           batch(["g", "h"], 7), batch(["i", "j"], 9)]


def _fail_predict(pipe, broker):
    def broken(task, texts, features=None):
        raise RuntimeError("model on fire")
    pipe.serving.models.current.score = broken


def _fail_learn(pipe, broker):
    def broken(task, texts, labels):
        raise RuntimeError("update bug")
    pipe.learner.learn_many = broken


def _refuse(topic, error):
    def inject(pipe, broker):
        broker.refuse[topic] = error
    return inject


def _fail_checkpoint(pipe, broker):
    def broken(learner, extra=None):
        raise OSError(28, "No space left on device")
    pipe.checkpoints.save = broken


def _fail_drift(pipe, broker):
    class Drift:
        async def observe(self, *a):
            raise ValueError("detector bug")
    pipe.trainer.drift = Drift()


STAGES = {
    "predict": (_fail_predict, "predict"),
    "learn": (_fail_learn, "learn"),
    "predictions refused": (_refuse("predictions", ak.UnknownError()), "publish"),
    "predictions too large": (_refuse("predictions", ak.MessageSizeTooLargeError()), "publish"),
    "predictions retries exhausted": (_refuse("predictions", ak.KafkaTimeoutError()), "publish"),
    "dead letters unauthorized": (_refuse("dead-letters", ak.TopicAuthorizationFailedError()),
                                  "publish"),
    "drift": (_fail_drift, "learn"),
}


@pytest.mark.parametrize("stage", STAGES)
async def test_failure_at_a_stage_acks_nothing_past_it_and_redelivery_processes_it_once(
        make, stage):
    inject, label = STAGES[stage]
    broker = Broker()
    pipe, reg = make(broker)
    acks = Acks()
    # Batches 0-1: two updates -> a checkpoint -> acked.
    for k in (0, 1):
        await pipe.handle("feedback", BATCHES[k], acks(str(k)))
    assert acks.done == ["0", "1"]
    checkpoint = pipe.checkpoints.latest()
    inject(pipe, broker)
    report = await pipe.handle("feedback", BATCHES[2], acks("2"))     # fails
    assert report.failed and report.refused and pipe.failed
    assert pipe.failure.stage == label and len(pipe.stopped) == 1
    assert reg.get_sample_value("streamlearner_stream_batch_failures_total",
                                {"stage": label}) == 1
    # Nothing after it is processed or acknowledged, by any path.
    later = await pipe.handle("feedback", BATCHES[3], acks("3"))
    assert later.refused and not later.failed
    await pipe.flush_if_idle()
    await pipe.drain()
    pipe.checkpoint_now()
    assert acks.done == ["0", "1"]
    assert pipe.checkpoints.latest() == checkpoint        # nothing of batch 2 checkpointed
    pipe.model.call(lambda: None)
    pipe.journal.close()

    # The restart: the cause is gone, Kafka redelivers everything after the committed offsets.
    broker.refuse.clear()
    pipe2, _ = make(broker)
    assert pipe2.learner.model_version == 2
    assert pipe2.serving.models.model_version == 2
    for k in (2, 3, 4):
        report = await pipe2.handle("feedback", BATCHES[k], acks(f"{k}'"))
        assert not report.refused and report.duplicate == 0
    await pipe2.drain()
    assert acks.done == ["0", "1", "2'", "3'", "4'"]
    pipe2.model.call(lambda: None)
    counts = pipe2.journal.trained_counts()
    assert sorted(i for _, i in counts) == list("abcdefghij") and set(counts.values()) == {1}
    # Every event has an outcome: a prediction, or (the bad payload) a dead letter.
    predicted = set(broker.keys("predictions"))
    assert predicted == set("abcdefghij")
    assert broker.keys("dead-letters").count("customer-feedback:0:6") >= 1


async def test_failed_checkpoints_stop_after_max_failures(make):
    broker = Broker()
    pipe, reg = make(broker, every=1, CHECKPOINT_MAX_FAILURES="3")
    acks = Acks()
    _fail_checkpoint(pipe, broker)
    for k in range(3):
        await pipe.handle("feedback", BATCHES[k], acks(str(k)))
    assert acks.done == [] and pipe.failed and pipe.failure.stage == "checkpoint"
    assert reg.get_sample_value("streamlearner_learner_checkpoint_failures_total") == 3
    assert (await pipe.handle("feedback", BATCHES[3], acks("3"))).refused
    assert acks.done == []


async def test_a_failing_ack_stops_later_acks(make):
    broker = Broker()
    pipe, _ = make(broker, every=1)
    done = []

    async def bad_ack():
        raise RuntimeError("consumer gone")

    async def good_ack():
        done.append("later")
    await pipe.handle("feedback", BATCHES[0], bad_ack)
    assert pipe.failed and pipe.failure.stage == "ack"
    await pipe.handle("feedback", BATCHES[1], good_ack)
    await pipe.drain()
    assert done == []


async def test_one_event_that_breaks_the_model_is_dead_lettered_and_the_rest_go_on(make):
    broker = Broker()
    pipe, reg = make(broker)
    snapshot = pipe.serving.models.current
    real = snapshot.score

    def picky(task, texts, features=None):
        if any("poison" in t for t in texts):
            raise ValueError("cannot predict this one")
        return real(task, texts)
    snapshot.score = picky
    events = batch(["p1", "p2", "poison", "p3"], 0)
    report = await pipe.handle("feedback", events, Acks()("0"))
    assert not pipe.failed
    assert (report.accepted, report.invalid) == (3, 1)
    assert set(broker.keys("predictions")) == {"p1", "p2", "p3"}
    [(key, letter)] = broker.topics["dead-letters"]
    assert key == "customer-feedback:0:2" and letter.reason == "internal_error"
    assert "prediction failed" in letter.message
    assert reg.get_sample_value("streamlearner_stream_events_total",
                                {"topic": "customer-feedback", "outcome": "accepted"}) == 3


async def test_outcomes_are_delivered_before_the_model_learns(make):
    broker = Broker()
    pipe, _ = make(broker)
    seen_at_learn = []
    real = pipe.learner.learn_many

    def spy(task, texts, labels):
        seen_at_learn.append(set(broker.keys("predictions")))
        return real(task, texts, labels)
    pipe.learner.learn_many = spy
    await pipe.handle("feedback", BATCHES[0], Acks()("0"))
    assert seen_at_learn == [{"a", "b"}]
