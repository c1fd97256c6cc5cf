"""``bench continual --tracking-uri``: every run is an MLflow run with step-wise accuracy."""

import csv

from bench import continual
from tests.tracking.test_tracker import Recorder
from tracking.mlflow_tracker import Tracker


def test_each_bench_continual_run_is_tracked(tiny_model_dir, tmp_path, monkeypatch):
    client = Recorder()
    monkeypatch.setattr(Tracker, "client", lambda self: client)
    labels = ["card", "topup", "rate", "pin"]
    for name, n in (("train", 24), ("test", 8)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((f"{labels[i % 4]} words {i}", labels[i % 4]) for i in range(n))
    rc = continual.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                         "--tasks", "2", "--strategy", "naive,er", "--model", tiny_model_dir,
                         "--memory-per-class", "2", "--out", str(tmp_path / "out"),
                         "--tracking-uri", "http://mlflow.invalid"])
    assert rc == 0
    runs = [c[1] for c in client.calls if c[0] == "create_run"]
    assert runs == ["continual naive", "continual er"]
    steps = [c[2]["avg_acc_after_task"][1] for c in client.calls
             if c[0] == "log_batch" and "avg_acc_after_task" in c[2]]
    assert steps == [1, 2, 1, 2]
    params = [c[3] for c in client.calls if c[0] == "log_batch" and c[3]]
    assert params[1]["strategy"] == "er" and params[1]["mode"] == "head"
    artifacts = {c[2].rsplit("/", 1)[-1] for c in client.calls if c[0] == "log_artifact"}
    assert {"accuracy.png", "results.json"} <= artifacts
