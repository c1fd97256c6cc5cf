"""Dead-letter re-drive end to end: events dead-lettered for a fixable reason (a text limit
set too low) are replayed after the fix, get predictions and are trained on; replaying again
publishes nothing; a re-driven event the worker already accepted is dropped by its dedup."""

from __future__ import annotations

import csv

import orjson

from streamlearner.cli import main
from tools.demo import metric_sum, scrape
from tools.dlq import marker_topic
from tools.publish import make_producer, publish

from .conftest import ROOT, wait_until
from .test_poison import read_all

LIMIT = 60


def banking_texts() -> tuple[list[tuple[str, str]], list[str]]:
    longer, shorter = [], []
    with open(ROOT / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if len(row["text"]) > LIMIT + 10 and len(longer) < 20:
                longer.append((row["text"], row["category"]))
            elif len(row["text"]) < LIMIT - 10 and len(shorter) < 5:
                shorter.append(row["text"])
    return longer, shorter


def counters(url: str) -> dict:
    s = scrape(url)
    return {outcome: metric_sum(s, "streamlearner_stream_events_total", outcome=outcome)
            for outcome in ("accepted", "invalid", "duplicate")} | {
        "trained": metric_sum(s, "streamlearner_learner_samples_total", kind="new")}


def replay_cli(capsys, *args: str) -> str:
    assert main(["dlq", "replay", *args]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_replay_after_fix_is_idempotent(broker, worker_env, start_worker, monkeypatch, capsys):
    env = worker_env
    fb, dlq, preds = (env["KAFKA_FEEDBACK_TOPIC"], env["KAFKA_DEAD_LETTER_TOPIC"],
                      env["KAFKA_PREDICTIONS_TOPIC"])
    for name, value in env.items():  # the CLI reads the same settings as the worker
        monkeypatch.setenv(name, value)
    longer, shorter = banking_texts()
    long_events = [orjson.dumps({"id": f"long-{i}", "text": t, "label": label})
                   for i, (t, label) in enumerate(longer)]
    short_events = [orjson.dumps({"id": f"short-{i}", "text": t}) for i, t in enumerate(shorter)]
    broken = [b'{"id": "bad-1", "text": ', b"[1]", b'{"id": 5, "text": "x"}']
    stream = [p for group in zip(long_events[:5], short_events) for p in group]
    stream += long_events[5:] + broken

    worker = start_worker(STREAM_MAX_TEXT_CHARS=str(LIMIT))
    producer = make_producer(broker.bootstrap)
    publish(broker.bootstrap, fb, stream, producer=producer, progress=False)
    wait_until(lambda: sum(counters(worker.metrics_url).values()) >= len(stream), timeout=120,
               message="first worker did not process the stream")
    letters = [orjson.loads(r.value) for r in read_all(broker.bootstrap, dlq, 23, timeout=30)]
    assert sorted(d["reason"] for d in letters) == sorted(
        ["text_too_long"] * 20 + ["invalid_json", "not_an_object", "wrong_type"])
    assert worker.stop() == 0, worker.log_tail()

    # The fix: a larger limit. The restarted worker resumes after the committed offsets.
    worker2 = start_worker(STREAM_MAX_TEXT_CHARS="2000")
    out = replay_cli(capsys, "--reason", "text_too_long", "--dry-run")
    assert "read 23" in out and "selected 20" in out and "would republish 20" in out
    out = replay_cli(capsys, "--reason", "text_too_long", "--since", "1h", "--topic-filter", fb)
    assert "selected 20" in out and "republished 20 (text_too_long 20)" in out

    def replayed_predicted():
        ids = {orjson.loads(r.value)["id"] for r in read_all(broker.bootstrap, preds, 25, 10)}
        return ids >= {f"long-{i}" for i in range(20)} and ids
    ids = wait_until(replayed_predicted, timeout=120, message="replayed events not predicted")
    assert ids == {f"long-{i}" for i in range(20)} | {f"short-{i}" for i in range(5)}
    wait_until(lambda: counters(worker2.metrics_url)["trained"] >= 20, timeout=120,
               message="replayed labeled events not trained")
    c = counters(worker2.metrics_url)
    assert (c["accepted"], c["invalid"], c["duplicate"], c["trained"]) == (20, 0, 0, 20)

    # Again: nothing re-published, whatever the filters.
    out = replay_cli(capsys, "--reason", "text_too_long")
    assert "republished 0" in out and "already replayed 20" in out
    out = replay_cli(capsys, "--reason", "text_too_long", "--dry-run")
    assert "would republish 0" in out
    markers = read_all(broker.bootstrap, marker_topic(dlq), 20, timeout=10)
    assert sorted(m.key.decode() for m in markers) == sorted(
        f"{d['topic']}:{d['partition']}:{d['offset']}" for d in letters
        if d["reason"] == "text_too_long")

    # Deleting a marker re-arms its dead letter; the worker's id dedup makes it harmless.
    tombstone = make_producer(broker.bootstrap)
    tombstone.send(marker_topic(dlq), key=markers[0].key, value=None).get(timeout=30)
    tombstone.close()
    out = replay_cli(capsys, "--reason", "text_too_long")
    assert "republished 1" in out and "already replayed 19" in out
    wait_until(lambda: counters(worker2.metrics_url)["duplicate"] >= 1, timeout=60,
               message="re-driven duplicate not seen")
    c = counters(worker2.metrics_url)
    assert (c["accepted"], c["invalid"], c["duplicate"], c["trained"]) == (20, 0, 1, 20)
    assert len(read_all(broker.bootstrap, dlq, 24, timeout=5)) == 23  # no new dead letters
    producer.close()
    assert worker2.stop() == 0, worker2.log_tail()
