"""``streamlearner tune`` and the worker's tracking against a real ``mlflow server`` on loopback.

One server for the module (it takes ~15 s to start): a 6-trial tune on a small BANKING77
stream with the real encoder, read back with ``MlflowClient``; the env file it writes starts
a worker; a worker tracking to the server keeps learning every event after the server is
killed (the last test: it kills the server) and counts the failures in its metrics.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import labeled, make_worker
from tools.broker import free_port
from tools.demo import wait_http

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
CATEGORIES = ("card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="mlflow comes with the 'tracking' extra (make install)")
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(work / "server.log", "ab")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                             "--artifacts-destination", str(work / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError((work / "server.log").read_text()[-3000:]) from None
    state = {"url": url, "proc": proc, "work": work}
    yield state
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def tuned(mlflow_server, tmp_path_factory):
    """The 6-trial study (run once for the module)."""
    from tuning import cli

    out = tmp_path_factory.mktemp("tune")
    rows = {c: [] for c in CATEGORIES}
    with open(ROOT / "data" / "banking77" / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["category"] in rows and len(rows[r["category"]]) < 30:
                rows[r["category"]].append(r)
    path = out / "stream.csv"
    with open(path, "w", newline="") as f:   # one intent after another: class-incremental
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for c in CATEGORIES:
            w.writerows((r["text"], c) for r in rows[c])
    env = {"METRICS_PROBE_SIZE": "12", "METRICS_PROBE_EVERY": "4", "METRICS_PROBE_EVERY_UPDATES": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = time.perf_counter()
        rc = cli.main([f"feedback={path}", "--trials", "6", "--out", str(out / "study"),
                       "--tracking-uri", mlflow_server["url"], "--experiment", "it-tune",
                       "--batch-sizes", "8,16", "--tune-fraction", "0.5"])
        print(f"tune: 6 trials on 120 BANKING77 events in {time.perf_counter() - started:.1f} s")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == 0
    return out / "study"


def test_tune_trials_are_mlflow_runs_on_the_server(mlflow_server, tuned, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server["url"])
    exp = client.get_experiment_by_name("it-tune")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.info.run_name.startswith("trial")]
    study = [r for r in runs if r.info.run_name.startswith("study")]
    assert len(trials) == 6 and len(study) == 1
    summary = json.loads((tuned / "summary.json").read_text())
    assert sum(summary["trials"].values()) == 6
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == study[0].info.run_id
        assert {"LEARNER_HEAD_LR", "MEMORY_REPLAY_RATIO", "STREAM_BATCH_SIZE"} <= set(r.data.params)
        assert r.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        history = client.get_metric_history(r.info.run_id, "delayed_prequential_accuracy")
        assert len({m.step for m in history}) >= 2   # step-wise: events seen at each report
    best = next(r for r in trials if r.data.tags["optuna.trial"] == str(summary["best_trial"]))
    assert best.data.metrics["delayed_prequential_accuracy"] == pytest.approx(summary["best_value"])
    names = {a.path for a in client.list_artifacts(study[0].info.run_id)}
    assert {"history.png", "importances.png", "best.env", "summary.json"} <= names
    local = client.download_artifacts(study[0].info.run_id, "best.env", str(tmp_path))
    assert Path(local).read_text() == (tuned / "best.env").read_text()
    assert study[0].data.metrics["holdout_accuracy_tuned"] == pytest.approx(
        summary["confirmation"]["tuned"]["holdout_accuracy"])


async def _feed(h, batch):
    report = await h.handle("feedback", batch)
    learning = getattr(report, "learning", None)
    return await learning if learning is not None else report


async def test_the_best_env_file_starts_a_worker(tuned, tmp_path):
    from learner.model import default_model_path
    from streamlearner.cli import _settings, build_parser
    from streamlearner.settings import read_env_file

    env_file = str(tuned / "best.env")
    values = read_env_file(env_file)
    settings = _settings(build_parser().parse_args(["worker", "--env-file", env_file]))
    assert settings.learner.head_lr == float(values["LEARNER_HEAD_LR"])
    assert settings.stream.batch_size == int(values["STREAM_BATCH_SIZE"])
    h = make_worker(tmp_path, default_model_path(), METRICS_PROBE_SIZE="0", **values)
    try:
        assert h.learner.config.mode == values["LEARNER_MODE"] == "head"
        assert h.learner.memory.capacity == int(values["MEMORY_CAPACITY"])
        trained = 0
        for k in range(3):
            trained += (await _feed(h, labeled([f"w{k}-{i}" for i in range(8)], offset=8 * k,
                                               label=CATEGORIES[k]))).trained
        assert trained == 24 and h.learner.model_version == 3
        assert len(h.predictions()) == 24
    finally:
        h.close()


async def test_a_killed_tracking_server_never_stops_learning(mlflow_server, tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    h = make_worker(tmp_path, tiny_model_dir, TRACKING_URI=mlflow_server["url"],
                    TRACKING_EXPERIMENT="it-worker", TRACKING_RUN_NAME="worker-under-test")
    tracking = h.trainer.tracking
    assert tracking is not None

    async def stream(first: int, batches: int) -> float:
        started = time.perf_counter()
        for k in range(first, first + batches):
            report = await _feed(h, labeled([f"e{k}-{i}" for i in range(4)], offset=4 * k))
            assert report.trained == 4
        await h.trainer.publisher.wait()
        return batches / (time.perf_counter() - started)

    try:
        before = await stream(0, 10)
        assert tracking.tracker.flush(60)
        client = MlflowClient(tracking_uri=mlflow_server["url"])
        exp = client.get_experiment_by_name("it-worker")
        run = client.search_runs([exp.experiment_id])[0]
        steps = client.get_metric_history(run.info.run_id, "model_version")
        assert [m.step for m in steps] == [int(m.value) for m in steps] and len(steps) >= 2
        assert run.data.params["role"] == "worker"

        os.killpg(mlflow_server["proc"].pid, signal.SIGKILL)
        mlflow_server["proc"].wait(10)
        after = await stream(10, 10)
        assert tracking.tracker.flush(60)
        sample = h.registry.get_sample_value
        assert sample("streamlearner_learner_samples_total", {"task": "feedback", "kind": "new"}) == 80
        assert h.learner.model_version == 20
        assert sample("streamlearner_tracking_failures_total", {"op": "log"}) >= 1
        assert sample("streamlearner_tracking_dropped_total") == 0
        print(f"batches/s with the tracking server up {before:.1f}, killed {after:.1f} "
              f"(ratio {after / before:.2f})")
    finally:
        tracking.close(5)
        h.close()
