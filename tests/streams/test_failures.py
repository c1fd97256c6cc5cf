"""Issue #11: an exception anywhere in the batch path never lets an ack pass an event whose
outcome was not delivered. Fake outputs, the real (tiny) learner, real checkpoints and journal:
a failure is injected at each stage; the batch and every later one stay unacknowledged,
nothing more is checkpointed, and a fresh pipeline restored from the last checkpoint
processes the redelivered batches exactly once."""

from __future__ import annotations

import asyncio
import json

import aiokafka.errors as ak
import pytest
from prometheus_client import CollectorRegistry

from learner.checkpoints import CheckpointManager
from learner.config import MemoryConfig
from monitoring.metrics import Metrics
from streams.handoff import ModelThread
from streams.journal import UpdateJournal
from streams.outputs import DeliveryPolicy, Output
from streams.pipeline import Pipeline, RawEvent
from streams.records import Reason
from streams.settings import Settings


class Broker:
    """Output topics in memory; ``refuse[topic]`` = an error every send to it fails with."""

    def __init__(self):
        self.topics: dict[str, list] = {}
        self.refuse: dict[str, Exception] = {}

    def sender(self, topic):
        async def send(key, record):
            error = self.refuse.get(topic)
            future = asyncio.get_running_loop().create_future()
            if error is not None:
                future.set_exception(error)
            else:
                self.topics.setdefault(topic, []).append((key, record))
                future.set_result(None)
            return future
        return send

    def keys(self, topic):
        return [k for k, _ in self.topics.get(topic, [])]


class Acks:
    def __init__(self):
        self.done: list[str] = []

    def __call__(self, name):
        async def ack():
            self.done.append(name)
        return ack


@pytest.fixture
def make(tiny_learner, tmp_path):
    threads = []

    def build(broker, every=2, **env):
        settings = Settings.from_env({"CHECKPOINT_DIR": str(tmp_path / "ck"),
                                      "CHECKPOINT_EVERY_UPDATES": str(every),
                                      "STREAM_DEDUP_TEXT_WINDOW": "0",
                                      "METRICS_PROBE_SIZE": "0", **env})
        reg = CollectorRegistry()
        metrics = Metrics(registry=reg, topics=settings.kafka.source_topics(),
                          tasks=["feedback"], reasons=[r.value for r in Reason],
                          outputs=["predictions", "dead-letters", "model-events"])
        mt = ModelThread()
        threads.append(mt)
        learner = mt.call(tiny_learner, MemoryConfig(capacity=50))
        ck = settings.checkpoint.dir
        pipe = Pipeline(settings, learner, metrics, mt, CheckpointManager(ck, keep_last=5),
                        journal=UpdateJournal(f"{ck}/journal.jsonl"))
        policy = DeliveryPolicy(retries=2, backoff_s=0.0, backoff_max_s=0.0)
        for attr, topic in (("publish_prediction", "predictions"),
                            ("publish_dead_letter", "dead-letters"),
                            ("publish_model_event", "model-events")):
            setattr(pipe, attr, Output(topic, broker.sender(topic), metrics=metrics,
                                       policy=policy).publish)
        pipe.stopped = []
        pipe.on_failure = pipe.stopped.append
        pipe.restore()
        return pipe, reg

    yield build
    for mt in threads:
        mt.close()


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
    def broken(task, texts):
        raise RuntimeError("model on fire")
    pipe.learner.predict_many = broken


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
    pipe.drift = Drift()


STAGES = {
    "predict": (_fail_predict, "predict"),
    "learn": (_fail_learn, "learn"),
    "predictions refused": (_refuse("predictions", ak.UnknownError()), "publish"),
    "predictions too large": (_refuse("predictions", ak.MessageSizeTooLargeError()), "publish"),
    "predictions retries exhausted": (_refuse("predictions", ak.KafkaTimeoutError()), "publish"),
    "dead letters unauthorized": (_refuse("dead-letters", ak.TopicAuthorizationFailedError()),
                                  "publish"),
    "drift": (_fail_drift, "internal"),
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
    real = pipe.learner.predict_many

    def picky(task, texts):
        if any("poison" in t for t in texts):
            raise ValueError("cannot predict this one")
        return real(task, texts)
    pipe.learner.predict_many = picky
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
