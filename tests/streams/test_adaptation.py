"""The drift policy in the pipeline: a shift publishes an alert, counts it, takes a rollback
checkpoint, opens the learner's adaptation window and resets the task's references."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from learner.config import MemoryConfig
from monitoring.metrics import Metrics
from streams.adaptation import DriftWatch, rollback_manager
from streams.handoff import ModelThread
from streams.pipeline import Pipeline, RawEvent
from streams.records import Reason
from streams.settings import Settings

from .test_pipeline import Sink

ENV = {"DRIFT_REFERENCE": "40", "DRIFT_WINDOW": "40", "DRIFT_EVERY": "10",
       "DRIFT_P_VALUE": "0.01", "DRIFT_PERMUTATIONS": "200", "DRIFT_GRACE": "1000",
       "DRIFT_ADAPT_UPDATES": "100", "METRICS_PROBE_SIZE": "0"}


@pytest.fixture
def pipeline(tiny_learner, tmp_path):
    settings = Settings.from_env(dict(ENV, CHECKPOINT_DIR=str(tmp_path / "ck")))
    reg = CollectorRegistry()
    metrics = Metrics(registry=reg, topics=settings.kafka.source_topics(), tasks=["feedback"],
                      reasons=[r.value for r in Reason])
    mt = ModelThread()
    learner = mt.call(tiny_learner, MemoryConfig(capacity=50))
    rollback = rollback_manager(settings.checkpoint.dir, 2)
    watch = DriftWatch(settings.drift, learner, metrics, mt, rollback)
    pipe = Pipeline(settings, learner, metrics, mt, drift=watch)
    pipe.publish_prediction, pipe.publish_dead_letter, watch.publish = Sink(), Sink(), Sink()
    yield pipe, reg
    mt.close()


def batch(start, n, label):
    return [RawEvent(value=json.dumps({"id": f"{label}-{i}", "text": f"{label} words number {i}",
                                       "label": label}).encode(),
                     topic="customer-feedback", partition=0, offset=i, timestamp=0.0)
            for i in range(start, start + n)]


async def test_label_shift_alerts_and_adapts(pipeline):
    pipe, reg = pipeline
    for k in range(6):   # reference: labels a and b
        await pipe.handle("feedback", batch(10 * k, 5, "alpha") + batch(10 * k + 5, 5, "beta"))
    assert pipe.drift.publish.records == []
    for k in range(8):   # a new intent takes over
        await pipe.handle("feedback", batch(1000 + 10 * k, 10, "gamma"))
    alerts = [rec for _, rec in pipe.drift.publish.records]
    assert alerts, "no drift alert"
    first = alerts[0]
    assert first.task == "feedback" and first.kind in ("label", "data")
    assert first.p_value <= 0.01 and first.window_size == 40 and first.action == "adapt"
    assert reg.get_sample_value("streamlearner_learner_drift_detections_total",
                                {"task": "feedback", "kind": first.kind,
                                 "detector": first.detector}) >= 1
    assert pipe.learner.adapting > 0
    assert pipe.drift.rollback.latest() is not None      # pre-drift rollback point
    state = pipe.drift._tasks["feedback"]
    assert len(state.label._ref) < 40 or len(state.label._recent) < 40   # reference rebuilt
    assert reg.get_sample_value("streamlearner_learner_drift_p_value",
                                {"task": "feedback", "kind": "label"}) < 1.0


async def test_disabled_watch_does_nothing(pipeline):
    pipe, _ = pipeline
    pipe.drift.config = Settings.from_env({"DRIFT_ENABLED": "false"}).drift
    await pipe.handle("feedback", batch(0, 5, "alpha"))
    assert pipe.drift._tasks == {}
