"""The tracker never makes its caller wait, counts what fails or is dropped, and the worker's
run gets one step per published version (and registers the stability guard's champions)."""

import json
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from tests.harness import labeled, make_worker
from tracking.mlflow_tracker import Tracker


class Recorder:
    """MlflowClient's methods the tracker uses, recording calls; ``fail`` makes the first N
    calls raise, ``gate`` blocks every call until set."""

    def __init__(self, fail: int = 0, gate: threading.Event | None = None):
        self.fail, self.gate = fail, gate
        self.calls: list = []
        self.runs = 0

    def _call(self, name, *args):
        if self.gate is not None:
            self.gate.wait()
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("tracking server down")
        self.calls.append((name, *args))

    def get_experiment_by_name(self, name):
        self._call("get_experiment_by_name", name)
        return None

    def create_experiment(self, name, artifact_location=None):
        self._call("create_experiment", name)
        return "1"

    def create_run(self, experiment_id, run_name=None, tags=None):
        self._call("create_run", run_name, dict(tags or {}))
        self.runs += 1
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run{self.runs}",
                                                    artifact_uri=f"mem://run{self.runs}"))

    def get_run(self, run_id):
        return SimpleNamespace(info=SimpleNamespace(artifact_uri=f"mem://{run_id}"))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call("log_batch", run_id, {m.key: (m.value, m.step) for m in metrics},
                   {p.key: p.value for p in params})

    def log_artifacts(self, run_id, path, artifact_path=None):
        self._call("log_artifacts", run_id, path, artifact_path)

    def log_artifact(self, run_id, path, artifact_path=None):
        self._call("log_artifact", run_id, path, artifact_path)

    def create_registered_model(self, name):
        self._call("create_registered_model", name)

    def create_model_version(self, name, source, run_id=None, tags=None):
        self._call("create_model_version", name, source, run_id, dict(tags or {}))

    def set_terminated(self, run_id, status=None):
        self._call("set_terminated", run_id, status)

    def names(self):
        return [c[0] for c in self.calls]


def _value(registry, name, **labels):
    return registry.get_sample_value(name, labels or None) or 0.0


def test_a_dead_server_is_counted_never_raised():
    reg = CollectorRegistry()
    tracker = Tracker("http://127.0.0.1:9", client=Recorder(fail=10**6), registry=reg)
    run = tracker.start_run("x", params={"a": 1})
    assert all(run.log_metrics({"acc": 0.5}, step=i) for i in range(20))
    assert tracker.flush(60)
    assert _value(reg, "streamlearner_tracking_failures_total", op="start_run") == 1
    assert _value(reg, "streamlearner_tracking_failures_total", op="log") == 21   # params + 20
    assert _value(reg, "streamlearner_tracking_calls_total", op="log") == 0
    assert tracker.close(60)


def test_a_full_queue_drops_and_counts_without_waiting():
    reg = CollectorRegistry()
    gate = threading.Event()
    tracker = Tracker("http://slow", client=Recorder(gate=gate), registry=reg, queue_size=3)
    run = tracker.start_run("x")
    started = time.perf_counter()
    queued = [run.log_metrics({"acc": 1.0}, step=i) for i in range(50)]
    took = time.perf_counter() - started
    assert queued.count(False) >= 46 and _value(reg, "streamlearner_tracking_dropped_total") == queued.count(False)
    gate.set()
    assert tracker.close(60)
    print(f"50 calls against a blocked server took {took * 1000:.1f} ms")


def test_tracking_resumes_when_the_server_answers_again():
    reg = CollectorRegistry()
    client = Recorder(fail=2)          # get_experiment_by_name, then the retry of it, fail
    tracker = Tracker("http://flaky", client=client, registry=reg)
    run = tracker.start_run("x")       # fails: counted
    run.log_metrics({"acc": 0.1}, step=1)   # fails again: counted
    run.log_metrics({"acc": 0.2}, step=2)   # creates the run late, then logs
    run.end()
    assert tracker.close(60)
    assert _value(reg, "streamlearner_tracking_failures_total", op="start_run") == 1
    assert _value(reg, "streamlearner_tracking_failures_total", op="log") == 1
    logged = [c for c in client.calls if c[0] == "log_batch"]
    assert logged == [("log_batch", "run1", {"acc": (0.2, 2)}, {})]
    assert run.run_id == "run1" and client.names()[-1] == "set_terminated"


async def _feed(h, batch):
    report = await h.handle("feedback", batch)
    learning = getattr(report, "learning", None)
    return await learning if learning is not None else report


async def test_each_published_version_is_a_step_and_champions_are_registered(tiny_model_dir, tmp_path):
    client = Recorder()
    env = {"TRACKING_REGISTER_MODEL": "feedback-model", "METRICS_PROBE_SIZE": "4",
           "METRICS_PROBE_EVERY": "1", "METRICS_PROBE_EVERY_UPDATES": "1", "GUARD_MIN_PROBE": "1"}
    h = make_worker(tmp_path, tiny_model_dir, **env)
    from tracking.versions import track_versions

    tracker = Tracker("memory:", client=client, registry=CollectorRegistry())
    tracking = track_versions(h.trainer, h.settings, role="worker", tracker=tracker)
    try:
        for k in range(4):
            await _feed(h, labeled([f"e{k}-{i}" for i in range(4)], offset=4 * k))
        await h.trainer.publisher.wait()
        assert tracking.close(60)
    finally:
        h.close()
    steps = [c for c in client.calls if c[0] == "log_batch" and c[2]]
    published = [json.loads(value)["version"] for _, value in h.broker.records("model-versions")]
    assert len(steps) == len(published) >= 2
    assert [c[2]["model_version"][1] for c in steps] == published   # step = published version
    # ... and its model_version value is that version, not the live learner's (which may be
    # past it when the record is delivered): CI saw steps 1,2,3,4 with values 1,2,3,5.
    assert [c[2]["model_version"][0] for c in steps] == [float(v) for v in published]
    last = steps[-1][2]
    assert {"probe_accuracy.feedback", "forgetting.feedback", "prequential_accuracy.feedback",
            "loss.feedback", "drift_detections", "rollbacks", "champion_version"} <= set(last)
    params = next(c[3] for c in client.calls if c[0] == "log_batch" and c[3])
    assert params["role"] == "worker" and params["LEARNER_MODE"] == "full"
    registered = [c for c in client.calls if c[0] == "create_model_version"]
    assert registered and registered[0][1] == "feedback-model"
    assert registered[0][2].startswith("mem://run1/champion/v")


def test_tracking_is_off_unless_configured(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    h = make_worker(tmp_path, tiny_model_dir)
    try:
        assert h.trainer.tracking is None
    finally:
        h.close()


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRACKING_URI", raising=False)
