"""The pipeline on its own: real (tiny) learner, real metrics, outputs captured in lists."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from learner.checkpoints import CheckpointManager
from learner.config import MemoryConfig
from monitoring.metrics import Metrics
from streams.handoff import ModelThread
from streams.pipeline import Pipeline, RawEvent
from streams.records import Reason
from streams.settings import Settings


class Sink:
    def __init__(self):
        self.records = []

    async def __call__(self, key, record):
        self.records.append((key, record))

        async def delivered():
            return None
        return delivered()


@pytest.fixture
def make_pipeline(tiny_learner, tmp_path):
    made = []

    def make(checkpoint_every=1000, text_window=100):
        settings = Settings.from_env({"CHECKPOINT_DIR": str(tmp_path / "ck"),
                                      "CHECKPOINT_EVERY_UPDATES": str(checkpoint_every),
                                      "STREAM_DEDUP_TEXT_WINDOW": str(text_window)})
        reg = CollectorRegistry()
        metrics = Metrics(registry=reg, topics=settings.kafka.source_topics(),
                          tasks=["feedback", "market"], reasons=[r.value for r in Reason])
        mt = ModelThread()
        learner = mt.call(tiny_learner, MemoryConfig(capacity=50))
        pipe = Pipeline(settings, learner, metrics, mt,
                        CheckpointManager(settings.checkpoint.dir, keep_last=2))
        pipe.publish_prediction, pipe.publish_dead_letter = Sink(), Sink()
        made.append(mt)
        return pipe, reg

    yield make
    for mt in made:
        mt.close()


def raw(offset, payload, topic="customer-feedback"):
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return RawEvent(value=payload, topic=topic, partition=0, offset=offset, timestamp=0.0)


async def test_batch_outcomes(make_pipeline):
    pipe, reg = make_pipeline()
    batch = [
        raw(0, {"id": "a", "text": "my card is lost", "label": "lost"}),
        raw(1, b"\xff\xfe"),
        raw(2, {"id": "b", "text": "what is the rate", "label": "rate"}),
        raw(3, {"id": "a", "text": "my card is lost", "label": "lost"}),   # same id again
        raw(4, {"id": "c", "text": "my  card is <b>lost</b>", "label": "lost"}),  # same cleaned text
        raw(5, {"id": "d", "text": "no label here"}),
    ]
    report = await pipe.handle("feedback", batch)
    assert (report.accepted, report.invalid, report.duplicate, report.trained) == (4, 1, 1, 2)
    preds = pipe.publish_prediction.records
    assert [k for k, _ in preds] == ["a", "b", "c", "d"]
    assert all(r.label is None for _, r in preds)   # nothing learned before the first predict
    [(key, dl)] = pipe.publish_dead_letter.records
    assert key == "customer-feedback:0:1" and dl.reason == "invalid_utf8" and dl.offset == 1
    assert dl.payload_encoding == "base64"
    get = reg.get_sample_value
    assert get("streamlearner_stream_events_total",
               {"topic": "customer-feedback", "outcome": "accepted"}) == 4
    assert get("streamlearner_stream_events_total",
               {"topic": "customer-feedback", "outcome": "duplicate"}) == 1
    assert get("streamlearner_stream_dead_letters_total",
               {"topic": "customer-feedback", "reason": "invalid_utf8"}) == 1
    assert get("streamlearner_stream_repeat_texts_total", {"task": "feedback"}) == 1
    assert get("streamlearner_learner_samples_total", {"task": "feedback", "kind": "new"}) == 2
    assert get("streamlearner_learner_model_version") == 1 == report.model_version
    assert get("streamlearner_learner_freshness_seconds_count", {"task": "feedback"}) == 2
    assert get("streamlearner_learner_prequential_accuracy_ratio", {"task": "feedback"}) == 0.0


async def test_checkpoint_when_due_and_restore(make_pipeline):
    pipe, _ = make_pipeline(checkpoint_every=1)
    await pipe.handle("market", [raw(0, {"id": "m1", "text": "profit rose", "label": "positive"},
                                     topic="market-events")])
    assert pipe.checkpoints.latest() is not None
    pipe2, reg2 = make_pipeline()
    assert pipe2.restore() == 1
    assert reg2.get_sample_value("streamlearner_learner_model_version") == 1
    assert pipe2.dedup.seen_id("market", "m1")   # dedup state came back with the checkpoint


async def test_unexpected_error_is_dead_lettered_not_lost(make_pipeline, monkeypatch):
    pipe, reg = make_pipeline()
    import streams.pipeline as mod

    def broken(event):
        raise KeyError("bug")
    monkeypatch.setattr(mod, "clean_event", broken)
    report = await pipe.handle("feedback", [raw(7, {"id": "x", "text": "hi"})])
    assert report.invalid == 1
    [(_, dl)] = pipe.publish_dead_letter.records
    assert dl.reason == "internal_error" and dl.offset == 7
