"""End to end on the embedded broker with the real MiniLM: publish → worker → predictions,
dead letters, /metrics, learning, then stop/restart from the checkpoint."""

from __future__ import annotations

import csv
import json
import random

from tools.demo import MALFORMED, Follower, metric_sum, scrape
from tools.publish import make_producer, publish

from .conftest import ROOT, wait_until

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "age_limit", "top_up_limits"]
PER_INTENT = 60


def banking_events(per_intent: int, offset: int = 0, prefix: str = "b") -> list[dict]:
    rows: dict[str, list[str]] = {i: [] for i in INTENTS}
    with open(ROOT / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in rows:
                rows[row["category"]].append(row["text"])
    events = []
    for intent in INTENTS:
        for j, text in enumerate(rows[intent][offset:offset + per_intent]):
            events.append({"id": f"{prefix}-{intent}-{j}", "text": text, "label": intent,
                           "channel": "chat", "customer_id": f"c-{j}"})
    random.Random(3).shuffle(events)
    return events


def counters(url: str) -> dict:
    s = scrape(url)
    return {
        "accepted": metric_sum(s, "streamlearner_stream_events_total", outcome="accepted"),
        "invalid": metric_sum(s, "streamlearner_stream_events_total", outcome="invalid"),
        "duplicate": metric_sum(s, "streamlearner_stream_events_total", outcome="duplicate"),
        "dead": metric_sum(s, "streamlearner_stream_dead_letters_total"),
        "updates": metric_sum(s, "streamlearner_learner_updates_total"),
        "version": metric_sum(s, "streamlearner_learner_model_version"),
        "memory": metric_sum(s, "streamlearner_learner_memory_samples"),
        "new_samples": metric_sum(s, "streamlearner_learner_samples_total", kind="new"),
        "predictions": metric_sum(s, "streamlearner_stream_predictions_total"),
        "freshness_count": metric_sum(s, "streamlearner_learner_freshness_seconds_count"),
    }


def test_stream_learns_dead_letters_and_resumes(broker, worker_env, start_worker):
    env = worker_env
    fb_topic = env["KAFKA_FEEDBACK_TOPIC"]
    events = banking_events(PER_INTENT)
    good = [json.dumps(e).encode() for e in events]
    bad = [payload for payload, _ in MALFORMED]
    stream = list(good)
    for i, payload in enumerate(bad):  # malformed events spread through the stream
        stream.insert(20 + i * 25, payload)
    stream += good[:3]  # a producer retry: the same events re-published

    worker = start_worker()
    follower = Follower(broker.bootstrap, env["KAFKA_PREDICTIONS_TOPIC"],
                        env["KAFKA_DEAD_LETTER_TOPIC"]).start()
    try:
        producer = make_producer(broker.bootstrap)
        assert publish(broker.bootstrap, fb_topic, stream, producer=producer, progress=False) \
            == len(stream)
        def consumed():
            c = counters(worker.metrics_url)
            return c["accepted"] + c["invalid"] + c["duplicate"] >= len(stream)
        wait_until(lambda: consumed() and len(follower.predictions) >= len(good)
                   and len(follower.dead_letters) >= len(bad), timeout=420,
                   message="worker did not process the stream")
        wait_until(lambda: counters(worker.metrics_url)["new_samples"] >= len(good), timeout=120,
                   message="not every labeled event was trained on")
        c = counters(worker.metrics_url)

        # One prediction per valid event, none for the rest.
        assert set(follower.predictions) == {e["id"] for e in events}
        assert all(p["task"] == "feedback" and p["model_version"] >= 0
                   for p in follower.predictions.values())
        # Exactly the malformed ones are dead-lettered, with coordinates and reasons.
        assert sorted(d["reason"] for d in follower.dead_letters) == \
            sorted(reason for _, reason in MALFORMED)
        for d in follower.dead_letters:
            assert d["topic"] == fb_topic and d["partition"] == 0 and d["offset"] >= 0
            assert d["message"]
        offsets = {d["offset"] for d in follower.dead_letters}
        assert len(offsets) == len(bad)
        # /metrics agrees with what was published.
        assert c["accepted"] == len(good)
        assert c["invalid"] == len(bad) == c["dead"]
        assert c["duplicate"] == 3
        assert c["predictions"] == len(good)
        assert c["new_samples"] == len(good)
        assert c["updates"] >= len(good) / 32 and c["version"] == c["updates"]
        assert c["memory"] == len(good)
        assert c["freshness_count"] == len(good)

        # Prequential accuracy: later predictions (after learning) beat early ones clearly.
        ordered = [e["id"] for e in events]
        third = len(ordered) // 3
        e_label = {e["id"]: e["label"] for e in events}

        def acc(ids):
            return sum(follower.predictions[i]["label"] == e_label[i] for i in ids) / len(ids)
        early, late = acc(ordered[:third]), acc(ordered[-third:])
        print(f"prequential accuracy early {early:.3f} late {late:.3f}")
        assert late >= early + 0.3 and late >= 0.6, (early, late)

        version_before = c["version"]
        assert worker.stop() == 0, worker.log_tail()

        # Restart: resumes from the checkpoint, acknowledged events are not trained again.
        worker2 = start_worker()
        c2 = counters(worker2.metrics_url)
        assert c2["version"] == version_before
        assert c2["memory"] == len(good)
        more = banking_events(4, offset=PER_INTENT, prefix="n")
        replays = [json.dumps(e).encode() for e in events[:5]]  # old ids, re-published
        publish(broker.bootstrap, fb_topic, replays + [json.dumps(e).encode() for e in more],
                producer=producer, progress=False)
        producer.close()
        wait_until(lambda: counters(worker2.metrics_url)["new_samples"] >= len(more),
                   timeout=180, message="new events after restart not trained")
        c3 = counters(worker2.metrics_url)
        assert c3["accepted"] == len(more)       # nothing old redelivered or re-trained
        assert c3["duplicate"] == len(replays)   # dedup state came back with the checkpoint
        assert c3["new_samples"] == len(more)
        assert c3["version"] > version_before
        assert worker2.stop() == 0, worker2.log_tail()
    finally:
        follower.stop()
