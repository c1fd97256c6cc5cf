"""The replay harness: bench continual's numbers for the same settings, delayed labels,
recorded files and Kafka ranges."""

import json

import pytest

from bench import continual
from streamlearner.settings import Settings
from tests.bench.test_continual import LABELS, _write
from tuning.replay import replay
from tuning.stream import StreamError, from_files, from_records, from_segments, split


@pytest.mark.parametrize("mode", ["head", "full"])
def test_replay_reproduces_bench_continual(tiny_model_dir, tmp_path, mode):
    rows = [(f"{LABELS[i % 6]} word{i % 3} please {i}", LABELS[i % 6]) for i in range(60)]
    train, test = _write(tmp_path / "train.csv", rows[:42]), _write(tmp_path / "test.csv", rows[42:])
    argv = ["--train", train, "--test", test, "--tasks", "3", "--strategy", "er", "--mode", mode,
            "--model", tiny_model_dir, "--memory-per-class", "2", "--batch-size", "4",
            "--head-lr", "0.02", "--out", str(tmp_path / "bench")]
    assert continual.main(argv) == 0
    bench = json.loads((tmp_path / "bench" / "results.json").read_text())["results"]["er"]

    args = continual.parse_args(argv)
    tasks = continual.build_tasks(args)
    settings = Settings.from_env({
        "LEARNER_MODEL": tiny_model_dir, "LEARNER_DEVICE": "cpu", "LEARNER_MODE": mode,
        "LEARNER_STRATEGY": "er", "LEARNER_HEAD_LR": "0.02", "STREAM_BATCH_SIZE": "4",
        "MEMORY_CAPACITY": str(2 * 6), "METRICS_PROBE_SIZE": "0", "STREAM_DEDUP_TEXT_WINDOW": "0"})
    events = from_segments((t.name, t.head, t.train) for t in tasks)
    features = continual.load_features(args, tasks)
    seen = []

    def evaluate(name, learner):
        seen.append(name)
        return [continual.evaluate(learner, t) if j < len(seen) else None for j, t in enumerate(tasks)]

    result = replay(settings, events, features=features, on_segment_end=evaluate)
    assert [result.evaluations[t.name] for t in tasks] == bench["acc_matrix"]
    assert result.trained == bench["train_samples"] == 42
    assert result.labeled == 42 and 0 <= result.accuracy <= 1   # predicted before learned


def test_delayed_labels_score_the_prediction_served_on_arrival(tiny_model_dir, tmp_path):
    events = [{"id": f"e{i}", "text": f"{LABELS[i % 2]} thing {i}", "ts": i} for i in range(8)]
    inline = [dict(e, label=LABELS[i % 2]) for i, e in enumerate(events)]
    late = events + [{"id": f"e{i}", "label": LABELS[i % 2], "ts": 100 + i} for i in range(8)]
    for name, lines in (("inline", inline), ("late", late)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    settings = Settings.from_env({"LEARNER_MODEL": tiny_model_dir, "LEARNER_DEVICE": "cpu",
                                  "LEARNER_MODE": "full", "STREAM_BATCH_SIZE": "2",
                                  "METRICS_PROBE_SIZE": "0", "STREAM_MAX_WAIT_S": "60"})
    got = {}
    for name in ("inline", "late"):
        stream, rejected = from_files([("feedback", str(tmp_path / f"{name}.jsonl"))])
        assert not rejected and len(stream) == 8
        got[name] = replay(settings, stream)
    # Inline labels: the second batch is predicted by a model that learned the first.
    assert got["inline"].updates == 4 and got["inline"].trained == 8
    # Labels 100 s later: every event was served by the empty model (no label known yet:
    # wrong), and all of them are still trained when their labels arrive.
    late_events, _ = from_files([("feedback", str(tmp_path / "late.jsonl"))])
    assert [e.label_ts for e in late_events] == [100.0 + i for i in range(8)]
    assert got["late"].accuracy == 0.0 and got["late"].labeled == 8 and got["late"].trained == 8


def test_csv_stream_is_admitted_like_the_worker_and_split(tmp_path):
    path = _write(tmp_path / "s.csv", [("lost card", "card", "0"), ("  ", "card", "1"),
                                       ("<b>rate</b> please", "rate", "2")],
                  header=("text", "category", "ts"))
    events, rejected = from_files([("feedback", path)], label_delay_s=5)
    assert [e.text for e in events] == ["lost card", "rate please"]   # cleaned; empty rejected
    assert rejected == {"empty_field": 1}
    assert [(e.ts, e.label_ts) for e in events] == [(0.0, 5.0), (2.0, 7.0)]
    with pytest.raises(StreamError):
        split(events, 2)
    assert [len(part) for part in split(events, 0.5)] == [1, 1]


def test_kafka_range_without_consumer_group(tmp_path):
    from collections import namedtuple

    Rec = namedtuple("Rec", "topic partition offset timestamp value")
    recs = [Rec("customer-feedback", 0, i, 1000 * i,
                json.dumps({"id": f"k{i}", "text": f"text {i}", "label": "x"}).encode())
            for i in range(6)]
    recs.append(Rec("labels", 0, 0, 0, b'{"id": "k3", "label": "y", "ts": 9}'))
    events, _ = from_records(recs, tasks={"customer-feedback": "feedback"}, labels_topic="labels",
                             start=2, end=5)
    assert [e.id for e in events] == ["k2", "k3", "k4"]
    assert events[0].ts == 2.0 and events[1].label == "x"   # the first label wins
