"""The worker's HTTP API against a live worker on the embedded broker (real MiniLM):
predict, explain, status, readiness, OpenAPI, 4xx for bad input, sampled stream
explanations, and a hot swap to a distilled student under load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from tools.publish import make_producer, publish

from .conftest import ROOT, wait_until
from .test_worker_e2e import banking_events, counters


def call(port: int, path: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_api_explanations_and_student_hot_swap(broker, worker_env, start_worker):
    worker = start_worker(SERVE_MODEL="student", SERVE_RELOAD_INTERVAL_S="1",
                          SERVE_EXPLAIN_FRACTION="0.25", SERVE_EXPLAIN_METHOD="gxi",
                          CHECKPOINT_EVERY_UPDATES="1", METRICS_PROBE_SIZE="0")
    port = worker.port
    events = banking_events(16)
    producer = make_producer(broker.bootstrap)
    publish(broker.bootstrap, worker_env["KAFKA_FEEDBACK_TOPIC"],
            [json.dumps(e).encode() for e in events], producer=producer, progress=False)
    wait_until(lambda: counters(worker.metrics_url)["new_samples"] >= len(events), timeout=240,
               message="stream not learned")
    # A second wave, served by a model that has labels: only those predictions are explained
    # (the first batches are predicted before anything was learned).
    second = banking_events(8, offset=16, prefix="w2")
    publish(broker.bootstrap, worker_env["KAFKA_FEEDBACK_TOPIC"],
            [json.dumps(e).encode() for e in second], producer=producer, progress=False)
    events = events + second
    wait_until(lambda: counters(worker.metrics_url)["new_samples"] >= len(events), timeout=240,
               message="second wave not learned")
    wait_until(lambda: call(port, "/readyz")[0] == 200, timeout=60, message="not ready")

    status, spec = call(port, "/openapi.json")
    assert status == 200 and {"/predict", "/explain", "/status"} <= set(spec["paths"])

    status, out = call(port, "/predict", {"task": "feedback", "text": "I lost my card, please block it"})
    assert status == 200, out
    assert out["model"] == "teacher" and out["model_version"] >= 1   # no student yet
    [pred] = out["predictions"]
    assert pred["label"] in {e["label"] for e in events}
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4
    status, out = call(port, "/predict", {"task": "feedback", "texts": ["how old must I be", "rates?"]})
    assert status == 200 and len(out["predictions"]) == 2

    status, ex = call(port, "/explain", {"task": "feedback", "text": "My card has still not arrived"})
    assert status == 200, ex
    assert [w["word"] for w in ex["words"]] == ["My", "card", "has", "still", "not", "arrived"]
    assert "<span" in ex["html"]

    bad = [
        (None, b"{not json", 400, "invalid_json"),
        ({"task": "feedback"}, None, 400, "missing_field"),
        (["a list"], None, 400, "not_an_object"),
        ({"task": "weather", "text": "x"}, None, 404, "unknown_task"),
        ({"task": "feedback", "text": "<p> </p>"}, None, 422, "empty_text"),
        ({"task": "feedback", "text": "a" * 5000}, None, 413, "text_too_long"),
        ({"task": "feedback", "texts": ["x"] * 300}, None, 413, "too_many_texts"),
        ({"task": "feedback", "texts": [1, 2]}, None, 400, "wrong_type"),
    ]
    for body, raw, code, error in bad:
        status, out = call(port, "/predict", body, raw)
        assert (status, out["error"]) == (code, error), (body, out)
    status, out = call(port, "/explain", {"task": "feedback", "text": "hi", "label": "nope"})
    assert (status, out["error"]) == (422, "unknown_label")
    status, out = call(port, "/explain", {"task": "market", "text": "profit rose"})
    assert (status, out["error"]) == (409, "no_labels")

    status, st = call(port, "/status")
    assert status == 200 and st["serving"]["model"] == "teacher"
    assert set(st["labels"]["feedback"]) == {e["label"] for e in events}
    assert st["memory"]["feedback"] > 0 and st["last_update_ts"] > 0
    assert st["drift"]["feedback"]["events"] == len(events)

    # Hot swap: distil while clients keep asking; no request may fail, the version shows.
    failures, answers, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            code, body = call(port, "/predict", {"task": "feedback", "text": "card never arrived"})
            (answers if code == 200 else failures).append((code, body.get("model")))
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    env = dict(os.environ, **worker_env)
    done = subprocess.run([sys.executable, "-m", "streamlearner.cli", "distill", "--layers", "1",
                           "--epochs", "1"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: call(port, "/status")[1]["serving"]["model"] == "student", timeout=60,
               message="worker did not swap to the student")
    wait_until(lambda: any(m == "student" for _, m in answers[-3:]), timeout=30,
               message="no prediction from the student")
    stop.set()
    thread.join(timeout=60)
    assert not failures, failures[:3]
    assert {"teacher", "student"} <= {m for _, m in answers}

    # A sampled fraction of stream predictions was explained onto the explanations topic.
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(worker_env["KAFKA_EXPLANATIONS_TOPIC"], bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None)
    records = [json.loads(r.value) for r in consumer]
    consumer.close()
    producer.close()
    assert records and all(r["task"] == "feedback" and r["words"] for r in records)
    assert worker.stop() == 0, worker.log_tail()
