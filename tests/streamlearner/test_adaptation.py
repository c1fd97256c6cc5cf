"""The drift policy on the worker's batch path: a shift publishes an alert, counts it, takes a rollback
checkpoint, opens the learner's adaptation window and resets the task's references."""

from __future__ import annotations

import json

import pytest

from streams.admit import RawEvent
from streamlearner.settings import Settings
from tests.harness import make_worker

ENV = {"DRIFT_REFERENCE": "40", "DRIFT_WINDOW": "40", "DRIFT_EVERY": "10",
       "DRIFT_P_VALUE": "0.01", "DRIFT_PERMUTATIONS": "200", "DRIFT_GRACE": "1000",
       "DRIFT_ADAPT_UPDATES": "100", "METRICS_PROBE_SIZE": "0", "CHECKPOINT_KEEP_LAST": "2"}


@pytest.fixture
def pipeline(tiny_model_dir, tmp_path):
    pipe = make_worker(tmp_path, tiny_model_dir, **ENV)
    yield pipe, pipe.registry
    pipe.close()


def batch(start, n, label):
    return [RawEvent(value=json.dumps({"id": f"{label}-{i}", "text": f"{label} words number {i}",
                                       "label": label}).encode(),
                     topic="customer-feedback", partition=0, offset=i, timestamp=0.0)
            for i in range(start, start + n)]


async def test_label_shift_alerts_and_adapts(pipeline):
    pipe, reg = pipeline
    for k in range(6):   # reference: labels a and b
        await pipe.handle("feedback", batch(10 * k, 5, "alpha") + batch(10 * k + 5, 5, "beta"))
    assert pipe.broker.records("drift-alerts") == []
    for k in range(8):   # a new intent takes over
        await pipe.handle("feedback", batch(1000 + 10 * k, 10, "gamma"))
    alerts = [rec for _, rec in pipe.broker.records("drift-alerts")]
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


async def test_work_run_before_the_drift_test_shares_its_job_and_its_failures_count():
    """``observe(before=...)``: one model-thread job runs ``before`` then the test; a failing
    ``before`` raises (it is the batch's work), a failing test is logged and skipped."""
    import types

    from lifecycle.adaptation import DriftWatch
    from lifecycle.config import DriftConfig
    from streams.handoff import ModelThread

    with ModelThread() as thread:
        watch = DriftWatch(DriftConfig(), types.SimpleNamespace(model_version=0), None, thread)
        ran: list[str] = []

        def broken(*args):
            ran.append("test")
            raise RuntimeError("the drift test broke")

        watch._observe = broken
        jobs = 0
        real = thread.run

        async def counted(fn, *args):
            nonlocal jobs
            jobs += 1
            return await real(fn, *args)

        thread.run = counted
        assert await watch.observe("t", ["x"], [], [], before=lambda: ran.append("before")) == []
        assert ran == ["before", "test"] and jobs == 1

        def failing():
            raise ValueError("offer failed")

        with pytest.raises(ValueError, match="offer failed"):
            await watch.observe("t", ["x"], [], [], before=failing)
        watch.config = DriftConfig(enabled=False)   # no test: ``before`` still runs
        assert await watch.observe("t", ["x"], [], [], before=lambda: ran.append("alone")) == []
        assert ran[-1] == "alone"
