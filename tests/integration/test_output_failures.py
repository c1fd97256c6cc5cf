"""Issue #11: outputs the broker or producer refuses never lose a micro-batch.

Real Tansu broker, real worker processes, the real MiniLM:

* oversized events (64 KB - 16 MB) mixed into a labeled stream: each dead-lettered once
  within the output bound, with its coordinates; every valid event predicted and trained once;
  no agent crash; consumer lag back to 0; ``dlq replay`` finds every original again;
* the predictions topic does not exist: the worker retries, then stops with exit code 3
  without committing anything; once the topic exists a restarted worker gives every event
  exactly one prediction and trains each labeled id once;
* a broker that refuses writes to the dead-letter topic (Tansu's schema check): the worker
  stops with exit code 3 and nothing past the refused dead letter is committed.
"""

from __future__ import annotations

import collections
import json
import random
import uuid
from pathlib import Path

import orjson
import pytest

from tools.broker import EmbeddedBroker
from tools.demo import metric_sum, scrape
from tools.dlq import read_topic, replay
from tools.publish import make_producer, publish
from streams.topics import create_topics

from .conftest import WorkerProc, wait_until
from .test_crash import journal
from .test_overload import lag
from .test_worker_e2e import banking_events

MB = 1024 * 1024
BOUND = 256 * 1024    # STREAM_DEAD_LETTER_MAX_BYTES default


def _values(bootstrap, topic):
    return [(r.key.decode() if r.key else None, orjson.loads(r.value))
            for r in read_topic(bootstrap, topic, client_kwargs={})]


def _committed(bootstrap, group, topic):
    """The group's committed offset of ``topic`` partition 0 (None: nothing committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        offset = consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()
    return None if offset is None or offset < 0 else offset


def _trained_counts(ck: Path) -> collections.Counter:
    return collections.Counter(i for e in journal(ck / "journal.jsonl") for i in e["ids"])


def test_oversized_events_are_dead_lettered_within_the_bound(broker, worker_env, start_worker):
    env = dict(worker_env, CHECKPOINT_IDLE_S="1", STREAM_BATCH_SIZE="16",
               STREAM_DEDUP_TEXT_WINDOW="0", METRICS_LAG_INTERVAL_S="1")
    rng = random.Random(11)
    events = banking_events(40)                         # 200 valid labeled events
    stream = [json.dumps(e).encode() for e in events]
    sizes = sorted(int(65 * 1024 * (252 ** (k / 19))) for k in range(20))   # 65 KB .. 16 MB
    oversized = {}
    for k, size in enumerate(sizes):
        body = {"id": f"big-{k}", "text": "", "label": "card_arrival"}
        filler = size - len(json.dumps(body))
        body["text"] = ("lorem ipsum \u00e9 " * (filler // 14 + 1))[:max(1, filler // 2)]
        payload = json.dumps(body, ensure_ascii=False).encode()
        payload += b" " * max(0, size - len(payload))   # JSON allows trailing whitespace
        oversized[f"big-{k}"] = payload
    for payload in oversized.values():
        stream.insert(rng.randrange(len(stream) + 1), payload)
    offsets = {p: i for i, p in enumerate(stream)}

    worker = start_worker(**env)
    producer = make_producer(broker.bootstrap, max_request_size=32 * MB)
    assert publish(broker.bootstrap, env["KAFKA_FEEDBACK_TOPIC"], stream, producer=producer,
                   progress=False) == len(stream)
    ck = Path(env["CHECKPOINT_DIR"])
    ids = {e["id"] for e in events}
    wait_until(lambda: set(_trained_counts(ck)) >= ids, 240, 1.0, "not every event was trained")

    topic = env["KAFKA_FEEDBACK_TOPIC"]
    wait_until(lambda: lag(worker.metrics_url, topic) == 0, 60, 1.0,
               "consumer lag did not drain to 0")
    s = scrape(worker.metrics_url)
    assert worker.stop() == 0

    counts = _trained_counts(ck)
    assert set(counts) == ids and set(counts.values()) == {1}     # each valid one exactly once
    predictions = collections.Counter(k for k, _ in _values(broker.bootstrap,
                                                            env["KAFKA_PREDICTIONS_TOPIC"]))
    assert set(predictions) == ids and set(predictions.values()) == {1}
    raw_letters = list(read_topic(broker.bootstrap, env["KAFKA_DEAD_LETTER_TOPIC"],
                                  client_kwargs={}))
    assert len(raw_letters) == 20
    assert max(len(r.value) for r in raw_letters) <= BOUND       # the record on the wire
    letters = [(r.key.decode(), orjson.loads(r.value)) for r in raw_letters]
    by_offset = {v["offset"]: v for _, v in letters}
    for name, payload in oversized.items():
        letter = by_offset[offsets[payload]]                        # its coordinates
        assert letter["reason"] == "payload_too_large" and letter["topic"] == \
            env["KAFKA_FEEDBACK_TOPIC"] and letter["partition"] == 0
        assert letter["payload_bytes"] == len(payload)
        assert letter["payload_truncated"] == (len(payload) > BOUND - 4096)
        assert payload.decode().startswith(letter["payload"])
    assert metric_sum(s, "streamlearner_stream_dead_letters_total",
                      reason="payload_too_large") == 20
    assert metric_sum(s, "streamlearner_stream_output_failures_total") == 0
    assert metric_sum(s, "streamlearner_stream_batch_failures_total") == 0
    text = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "crashed" not in text.lower(), worker.log_tail()

    # The re-drive finds every original (up to 16 MB) at its coordinates; a dry run only.
    report = replay(broker.bootstrap, dead_letter_topic=env["KAFKA_DEAD_LETTER_TOPIC"],
                    source_topics=[env["KAFKA_FEEDBACK_TOPIC"]], dry_run=True)
    assert (report.selected, report.republished, report.not_retained, report.mismatch) == \
        (20, 20, 0, 0)


def test_missing_predictions_topic_stops_unacknowledged_then_recovers(
        broker, worker_env, start_worker):
    missing = f"predictions-missing-{uuid.uuid4().hex[:6]}"      # never created (yet)
    env = dict(worker_env, KAFKA_PREDICTIONS_TOPIC=missing, STREAM_OUTPUT_RETRIES="2",
               STREAM_OUTPUT_BACKOFF_S="0.2", KAFKA_PRODUCER_REQUEST_TIMEOUT_S="2",
               CHECKPOINT_IDLE_S="1", STREAM_DEDUP_TEXT_WINDOW="0")
    events = banking_events(16, prefix="missing")                 # 80 labeled events
    unlabeled = [{"id": f"u-{k}", "text": e["text"] + " please"} for k, e in
                 enumerate(events[:20])]
    stream = events + unlabeled
    publish(broker.bootstrap, env["KAFKA_FEEDBACK_TOPIC"],
            [json.dumps(e).encode() for e in stream], progress=False)

    worker = start_worker(**env)
    wait_until(lambda: worker.proc.poll() is not None, 120, 0.5, "the worker did not stop")
    assert worker.proc.returncode == 3, worker.log_tail()
    text = worker.log_path.read_text(errors="replace")
    assert f"output topic {missing!r} refuses delivery (unknown_topic" in text, worker.log_tail()
    assert "worker exits with code 3" in text
    assert _committed(broker.bootstrap, env["KAFKA_APP_ID"], env["KAFKA_FEEDBACK_TOPIC"]) in (None, 0)
    ck = Path(env["CHECKPOINT_DIR"])
    assert not list(ck.glob("ckpt-*"))                             # nothing checkpointed

    create_topics(broker.bootstrap, {missing: 1})
    worker = start_worker(**env)
    ids = {e["id"] for e in events}
    wait_until(lambda: set(_trained_counts(ck)) >= ids, 180, 1.0, "not every event was trained")
    wait_until(lambda: len(_values(broker.bootstrap, missing)) >= len(stream), 60, 1.0,
               "not every event was predicted")
    assert worker.stop() == 0
    predictions = collections.Counter(k for k, _ in _values(broker.bootstrap, missing))
    assert predictions == collections.Counter(e["id"] for e in stream)   # exactly one each
    counts = _trained_counts(ck)
    assert set(counts) == ids and set(counts.values()) == {1}


@pytest.fixture
def refusing_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu-schema.log",
                        schema_dir=tmp_path / "schema") as b:
        yield b


def test_refused_dead_letter_stops_without_committing_past_it(refusing_broker, worker_env,
                                                               tmp_path):
    b = refusing_broker
    env = dict(worker_env, KAFKA_BOOTSTRAP=b.bootstrap, CHECKPOINT_IDLE_S="1",
               CHECKPOINT_EVERY_UPDATES="2", STREAM_BATCH_SIZE="8",
               STREAM_DEDUP_TEXT_WINDOW="0")
    # Every record of the dead-letter topic fails the broker's schema: writes are refused.
    (b.schema_dir / f"{env['KAFKA_DEAD_LETTER_TOPIC']}.json").write_text(json.dumps(
        {"type": "object", "properties": {"value": {"type": "object",
                                                     "required": ["never_present"]}}}))
    create_topics(b.bootstrap, {env[k]: 1 for k in env if k.endswith("_TOPIC")})
    events = banking_events(10, prefix="refused")                 # 50 labeled events
    first, second = events[:40], events[40:]
    stream = [json.dumps(e).encode() for e in first]
    bad_offset = len(stream)
    stream.append(b"{not json")
    stream += [json.dumps(e).encode() for e in second]

    worker = WorkerProc(env, tmp_path / "worker-refused.log").start()
    try:
        publish(b.bootstrap, env["KAFKA_FEEDBACK_TOPIC"], stream[:bad_offset], progress=False)
        ck = Path(env["CHECKPOINT_DIR"])
        # The first 40 are trained, checkpointed and committed before the bad one arrives.
        wait_until(lambda: _committed(b.bootstrap, env["KAFKA_APP_ID"],
                                      env["KAFKA_FEEDBACK_TOPIC"]) == bad_offset,
                   180, 1.0, "the valid head of the stream was not committed")
        publish(b.bootstrap, env["KAFKA_FEEDBACK_TOPIC"], stream[bad_offset:], progress=False)
        wait_until(lambda: worker.proc.poll() is not None, 120, 0.5, "the worker did not stop")
        assert worker.proc.returncode == 3, worker.log_tail()
        text = worker.log_path.read_text(errors="replace")
        assert (f"output topic {env['KAFKA_DEAD_LETTER_TOPIC']!r} refuses delivery (refused"
                in text), worker.log_tail()
        # Nothing at or after the undelivered dead letter is committed or trained.
        assert _committed(b.bootstrap, env["KAFKA_APP_ID"],
                          env["KAFKA_FEEDBACK_TOPIC"]) == bad_offset
        trained = set(_trained_counts(ck))
        assert trained == {e["id"] for e in first}
    finally:
        worker.kill()
