"""The study: the objective on a tiny stream, the env file the worker reads, resuming."""

import csv
import json

import pytest

from streamlearner.settings import Settings, read_env_file
from tuning import cli
from tuning.replay import encode_features, replay
from tuning.space import SearchSpace
from tuning.stream import from_files, split
from tuning.study import TuneOptions, open_study, run_study

LABELS = ["card", "topup", "rate", "refund"]


@pytest.fixture
def stream_csv(tmp_path):
    path = tmp_path / "stream.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(64):
            w.writerow([f"{LABELS[i % 4]} words {i % 5} about {i}", LABELS[(i // 16 + i) % 4]])
    return str(path)


@pytest.fixture
def tiny_env(tiny_model_dir, monkeypatch):
    env = {"LEARNER_MODEL": tiny_model_dir, "LEARNER_DEVICE": "cpu", "METRICS_PROBE_SIZE": "8",
           "METRICS_PROBE_EVERY": "2", "METRICS_PROBE_EVERY_UPDATES": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRACKING_URI", raising=False)
    return env


def test_objective_env_file_and_embedded_tracking(stream_csv, tiny_env, tmp_path):
    out = tmp_path / "tune"
    rc = cli.main([f"feedback={stream_csv}", "--trials", "3", "--out", str(out),
                   "--strategies", "er,derpp", "--batch-sizes", "4,8", "--tune-fraction", "0.5"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 3} or sum(summary["trials"].values()) == 3
    assert summary["stream"]["tune_events"] == 32 and summary["stream"]["holdout_events"] == 32
    conf = summary["confirmation"]
    assert 0 <= conf["tuned"]["holdout_accuracy"] <= 1 and 0 <= conf["defaults"]["holdout_accuracy"] <= 1

    # The env file is what the worker reads, and it holds the winner's parameters.
    env = read_env_file(str(out / "best.env"))
    assert env == summary["best_params"]
    settings = Settings.from_env(dict(tiny_env), env_file=str(out / "best.env"))
    assert settings.stream.batch_size == int(env["STREAM_BATCH_SIZE"])
    assert settings.learner.head_lr == float(env["LEARNER_HEAD_LR"])

    # The objective is the delayed-prequential accuracy of a replay of the tuning segment.
    events, _ = from_files([("feedback", stream_csv)])
    head, _ = split(events, 0.5)
    again = replay(Settings.from_env(dict(tiny_env), overrides=env), head)
    assert again.accuracy == pytest.approx(summary["best_value"])
    assert summary["defaults_value"] is not None   # trial 0 ran the settings as they were

    for name in ("history.png", "importances.png"):
        assert (out / name).stat().st_size > 0

    # Every trial is an MLflow run in the embedded SQLite store, under the study's run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("streamlearner-tune")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.info.run_name.startswith("trial")]
    study_run = next(r for r in runs if r.info.run_name.startswith("study"))
    assert len(trials) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == study_run.info.run_id for r in trials)
    assert all("LEARNER_HEAD_LR" in r.data.params for r in trials)
    history = client.get_metric_history(trials[0].info.run_id, "delayed_prequential_accuracy")
    assert len(history) >= 2
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"history.png", "best.env", "summary.json"} <= artifacts


def test_a_resumed_study_continues_its_trials(stream_csv, tiny_env, tmp_path):
    events, _ = from_files([("feedback", stream_csv)])
    head, _ = split(events, 0.5)
    features = encode_features(Settings.from_env(dict(tiny_env)), [e.text for e in head])
    space = SearchSpace(strategies=("er",), batch_sizes=(4, 8))
    options = TuneOptions(trials=2, out=str(tmp_path / "s"), space=space, prune=False)
    first = run_study(dict(tiny_env), head, options, features=features)
    before = [(t.number, t.value, t.params) for t in first.trials]
    assert len(before) == 2

    resumed = run_study(dict(tiny_env), head, TuneOptions(trials=4, out=str(tmp_path / "s"),
                                                         space=space, prune=False),
                        features=features)
    after = [(t.number, t.value, t.params) for t in resumed.trials]
    assert [n for n, _, _ in after] == [0, 1, 2, 3]
    assert after[:2] == before                      # the first two were kept, not rerun
    assert all(t.state.name == "COMPLETE" for t in resumed.trials)
    # Asking again for 4 runs nothing more: the study already holds them.
    again = run_study(dict(tiny_env), head, TuneOptions(trials=4, out=str(tmp_path / "s"),
                                                       space=space, prune=False))
    assert len(again.trials) == 4
    assert len(open_study(TuneOptions(out=str(tmp_path / "s"))).trials) == 4


def test_fixed_settings_stay_out_of_the_search():
    import optuna

    space = SearchSpace(strategies=("er",), fixed=(("MEMORY_CAPACITY", "5000"),))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    params = space.suggest(trial)
    assert params["MEMORY_CAPACITY"] == "5000" and "MEMORY_CAPACITY" not in trial.params
    assert "MEMORY_CAPACITY" not in space.defaults(Settings.from_env({}))
    with pytest.raises(ValueError):
        cli._fixed("MEMORY_CAPACITY")
