"""Issue #5, regression + security: labels corrupted mid-stream make the stability guard roll
back to the last good model within one evaluation interval; the admin surface refuses
without the bearer token and changes nothing; the CLI rolls back with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from kafka import KafkaConsumer, TopicPartition

from tools.demo import metric_sum, scrape
from tools.publish import make_producer, publish

from .conftest import ROOT, wait_until
from .test_worker_e2e import INTENTS, banking_events

TOKEN = "test-admin-token-0123456789abcdef"
EVAL_EVERY = 3


def read_topic(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out = []
    for _ in range(10):
        for records in consumer.poll(timeout_ms=500).values():
            out += [json.loads(r.value) for r in records]
    consumer.close()
    return out


def post(port: int, path: str, body: dict, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_corrupted_labels_trigger_rollback_and_admin_needs_the_token(broker, worker_env,
                                                                     start_worker):
    env = dict(worker_env, METRICS_PROBE_SIZE="30", METRICS_PROBE_EVERY="3",
               METRICS_PROBE_EVERY_UPDATES=str(EVAL_EVERY), GUARD_MIN_PROBE="20",
               STREAM_BATCH_SIZE="16", CHECKPOINT_EVERY_UPDATES="5",
               STREAM_DEDUP_TEXT_WINDOW="0", SERVE_ADMIN_TOKEN=TOKEN)
    worker = start_worker(**env)
    url = worker.metrics_url

    def m(name, **labels):
        return metric_sum(scrape(url), name, **labels)

    topic = env["KAFKA_FEEDBACK_TOPIC"]
    producer = make_producer(broker.bootstrap)
    clean = banking_events(60, prefix="clean")
    publish(broker.bootstrap, topic, (json.dumps(e).encode() for e in clean),
            producer=producer, progress=False)
    wait_until(lambda: m("streamlearner_stream_predictions_total") >= len(clean), 300, 1,
               "clean phase not processed")
    wait_until(lambda: m("streamlearner_learner_champion_version") > 0, 60, 1,
               "no champion after the clean phase")
    champion = m("streamlearner_learner_champion_version")
    good_acc = m("streamlearner_learner_probe_accuracy_ratio", task="feedback")
    assert good_acc >= 0.6, good_acc
    version_at_corruption = m("streamlearner_learner_model_version")
    assert m("streamlearner_learner_rollbacks_total", reason="regression") == 0

    # Corruption: every label moved to the next intent (a consistent, wrong mapping).
    shift = {a: INTENTS[(i + 1) % len(INTENTS)] for i, a in enumerate(INTENTS)}
    corrupt = [dict(e, label=shift[e["label"]]) for e in banking_events(60, offset=60,
                                                                         prefix="bad")]
    publish(broker.bootstrap, topic, (json.dumps(e).encode() for e in corrupt),
            producer=producer, progress=False)
    producer.close()
    total = len(clean) + len(corrupt)
    wait_until(lambda: m("streamlearner_stream_predictions_total") >= total, 300, 1,
               "corrupted phase not processed")
    wait_until(lambda: m("streamlearner_learner_rollbacks_total", reason="regression") >= 1,
               60, 1, "the guard never rolled back")

    events = [e for e in read_topic(broker.bootstrap, env["KAFKA_MODEL_EVENTS_TOPIC"])
              if e["kind"] == "rollback"]
    assert events and all(e["reason"] == "regression" and e["task"] == "feedback"
                          for e in events)
    first = events[0]
    # Rolled back at the first evaluation that saw the drop: within one interval.
    latency = first["from_version"] - version_at_corruption
    print(f"champion {champion} acc {good_acc:.3f}; first rollback {first['from_version']} -> "
          f"{first['to_version']} after {latency} corrupted updates; {len(events)} rollbacks; "
          f"probe acc {first['accuracy']} vs champion {first['champion_accuracy']}")
    assert first["to_version"] <= first["from_version"] - 1
    for e in events:
        drop = e["champion_accuracy"]["feedback"] - e["accuracy"]["feedback"]
        assert drop > 0.10, e
    # What is served now is never left below the margin.
    served = m("streamlearner_learner_probe_accuracy_ratio", task="feedback")
    champion_acc = events[-1]["champion_accuracy"]["feedback"]
    assert served >= champion_acc - 0.10, (served, champion_acc)

    # Security: the admin surface refuses without the right token and changes nothing.
    version = m("streamlearner_learner_model_version")
    rollbacks = m("streamlearner_learner_rollbacks_total", reason="manual")
    for token in (None, "wrong-token-wrong-token-0000"):
        status, body = post(worker.port, "/admin/rollback", {"version": 1}, token)
        assert status == 401 and body["error"] == "unauthorized", (status, body)
    status, _ = post(worker.port, "/admin/reset-probes", {}, None)
    assert status == 401
    assert m("streamlearner_learner_model_version") == version
    assert m("streamlearner_learner_rollbacks_total", reason="manual") == rollbacks
    assert TOKEN not in worker.log_path.read_text(errors="replace")

    # With the token, the CLI rolls back to a kept version.
    listing = subprocess.run(
        [sys.executable, "-m", "streamlearner.cli", "versions", "--url", f"http://127.0.0.1:{worker.port}"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    kept = [v["version"] for v in json.loads(listing.stdout)["versions"] if v["version"] < version]
    target = kept[0]
    done = subprocess.run(
        [sys.executable, "-m", "streamlearner.cli", "rollback", "--to", str(target),
         "--url", f"http://127.0.0.1:{worker.port}"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["to_version"] == target
    assert m("streamlearner_learner_model_version") == target
    assert m("streamlearner_learner_rollbacks_total", reason="manual") == rollbacks + 1
    assert worker.stop() == 0, worker.log_tail()


def test_admin_is_off_without_a_configured_token(worker_env, start_worker):
    worker = start_worker(**worker_env)
    status, body = post(worker.port, "/admin/rollback", {}, "any-token-any-token-any")
    assert status == 403 and body["error"] == "admin_disabled"
