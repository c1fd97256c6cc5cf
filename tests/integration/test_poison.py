"""Poison: 10,000+ malformed payloads through the embedded broker into a real worker.

Zero crashes (the process stays up, ``/healthz`` answers, valid events after the flood
are still predicted), and every malformed payload lands in the dead-letter topic with
its reason and source coordinates — the reason the worker gives is exactly the one
``decode_event`` + ``clean_event`` give for it here. Also: no secret in the worker log.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request

import orjson

from streams.cleaning import clean_event
from tools.demo import metric_sum, scrape
from tools.publish import make_producer, publish
from streams.records import Reason, RejectedEvent, decode_event

from .conftest import wait_until

N_MALFORMED = int(os.environ.get("POISON_PAYLOADS", "10000"))
MAX_TEXT_CHARS = 300
MAX_PAYLOAD_BYTES = 4096
CANARY = "poison-canary-password-4d1e"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghij klmnop") for _ in range(n))


def _nasty(rng: random.Random) -> str:
    return "".join(rng.choice(["\x00", "\u200b", "\u202e", "\u0301", "\ufeff", "<b>", "&amp;",
                               "\U0001f600", "a", " "]) for _ in range(rng.randint(1, 12)))


def malformed(rng: random.Random, i: int) -> bytes:
    """One malformed payload of a kind picked by ``i`` (every kind equally often)."""
    eid = f"p-{i}"
    kinds = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) + b"\xff",
        lambda: b'{"id": "' + eid.encode() + b'", "text": "caf\xe9"}',          # Latin-1
        lambda: b'{"id": "' + eid.encode() + b'", "text": "\xed\xa0\x80"}',     # surrogate
        lambda: b"",
        lambda: orjson.dumps({"id": eid, "text": _text(rng, 20)})[:rng.randint(1, 20)],
        lambda: b'{"id": "%s", "text": NaN}' % eid.encode(),
        lambda: b"{'id': 'single-quotes', 'text': 'x'}",
        lambda: b"[" * 1500 + b"]" * 1500,                                      # depth limit
        lambda: b'{"id": "%s", "text": "x", "deep": ' % eid.encode() + b"[" * 1100
        + b"]" * 1100 + b"}",
        lambda: rng.choice([b"null", b"42", b'"a string"', b"[1, 2]", b"true", b"1e400"]),
        lambda: orjson.dumps({"text": _text(rng, 10)}),
        lambda: orjson.dumps({"id": eid}),
        lambda: orjson.dumps({"id": None, "text": "null id"}),
        lambda: orjson.dumps({"id": rng.choice(["", "   ", "\t\n"]), "text": "blank id"}),
        lambda: orjson.dumps({"id": eid, "text": " "}),
        lambda: orjson.dumps({"id": rng.choice([1, 2.5, True, [], {}]), "text": "typed id"}),
        lambda: orjson.dumps({"id": eid, "text": rng.choice([1, [], {"a": 1}, False])}),
        lambda: orjson.dumps({"id": eid, "text": "x", "label": rng.choice([1, [], True])}),
        lambda: orjson.dumps({"id": eid, "text": "x", "label": "   "}),
        lambda: orjson.dumps({"id": eid, "text": "x", "channel": 7}),
        lambda: orjson.dumps({"id": eid, "text": "x", "customer_id": ["c"]}),
        lambda: orjson.dumps({"id": eid, "text": "x", "ts": rng.choice(
            ["yesterday", "", "2026-13-45", True, 1e20, -1e13, [], "9999-99-99T00:00:00Z"])}),
        lambda: orjson.dumps({"id": eid, "text": _text(rng, MAX_TEXT_CHARS + rng.randint(1, 500))}),
        lambda: orjson.dumps({"id": eid, "text": "x", "pad": "z" * (MAX_PAYLOAD_BYTES + 10)}),
        lambda: orjson.dumps({"id": eid, "text": rng.choice(
            ["<p>&nbsp;</p>", "\u200b\u200c", "<script>alert(1)</script>", "<!-- -->", "\x00\x01",
             "<style>p{}</style>&#x200b;"])}),
        lambda: json.dumps({"id": eid, "text": _nasty(rng) + "\ud800"}).encode(),   # escaped
        lambda: json.dumps({"id": eid, "text": _nasty(rng) + "\udfff"},
                           ensure_ascii=False).encode("utf-8", "surrogatepass"),  # raw
    ]
    return kinds[i % len(kinds)]()


def expected_reason(raw: bytes) -> Reason:
    try:
        clean_event(decode_event(raw, task="feedback", received_at=0.0,
                                 max_text_chars=MAX_TEXT_CHARS,
                                 max_payload_bytes=MAX_PAYLOAD_BYTES))
    except RejectedEvent as exc:
        return exc.reason
    raise AssertionError(f"not malformed: {raw[:80]!r}")


def read_all(bootstrap: str, topic: str, expected: int, timeout: float) -> list:
    """Consume ``topic`` from the beginning until ``expected`` records or ``timeout``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_ten_thousand_malformed_payloads(broker, worker_env, start_worker):
    env = worker_env
    topic = env["KAFKA_FEEDBACK_TOPIC"]
    rng = random.Random(5)
    payloads = [malformed(rng, i) for i in range(N_MALFORMED)]
    reasons = [expected_reason(p) for p in payloads]
    assert len({r for r in reasons}) >= 10, sorted(set(reasons))  # varied, not one kind
    valid = [orjson.dumps({"id": f"ok-{i}", "text": f"my card number {i} has not arrived"})
             for i in range(5)]

    worker = start_worker(STREAM_MAX_TEXT_CHARS=str(MAX_TEXT_CHARS),
                          STREAM_MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD_BYTES),
                          STREAM_BATCH_SIZE="256",
                          KAFKA_SASL_PASSWORD=CANARY)  # unused with PLAINTEXT; never logged
    started = time.monotonic()
    producer = make_producer(broker.bootstrap, batch_size=256 * 1024)
    try:
        assert publish(broker.bootstrap, topic, payloads + valid, producer=producer,
                       progress=False) == len(payloads) + 1 * len(valid)
    finally:
        producer.close()
    published_s = time.monotonic() - started

    def processed() -> bool:
        s = scrape(worker.metrics_url)
        return metric_sum(s, "streamlearner_stream_events_total") >= len(payloads) + len(valid)
    wait_until(processed, timeout=240, interval=1.0,
               message=f"worker did not get through the payloads\n{worker.log_tail()}")
    processed_s = time.monotonic() - started

    dead = read_all(broker.bootstrap, env["KAFKA_DEAD_LETTER_TOPIC"], len(payloads), timeout=60)
    letters = [orjson.loads(r.value) for r in dead]
    print(f"\npoison: {len(payloads)} malformed payloads published in {published_s:.1f} s, "
          f"processed in {processed_s:.1f} s; {len(letters)} dead letters; reasons "
          f"{ {r.value: reasons.count(r) for r in sorted(set(reasons), key=str)} }")

    # Zero crashes: alive, healthy, and still predicting.
    assert worker.proc.poll() is None, worker.log_tail()
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=5) as resp:
        assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    preds = read_all(broker.bootstrap, env["KAFKA_PREDICTIONS_TOPIC"], len(valid), timeout=60)
    assert sorted(orjson.loads(p.value)["id"] for p in preds) == sorted(
        f"ok-{i}" for i in range(5))

    # Every one dead-lettered once, with its coordinates and the reason computed here.
    assert len(letters) == len(payloads)
    by_offset = {d["offset"]: d for d in letters}
    assert sorted(by_offset) == list(range(len(payloads)))
    for offset, d in by_offset.items():
        assert d["topic"] == topic and d["partition"] == 0 and d["message"]
        assert d["reason"] == reasons[offset].value, (offset, payloads[offset][:80], d)
        assert d["reason"] != Reason.internal_error.value
    assert [r.key.decode() for r in dead[:3]] == [f"{topic}:0:{d['offset']}" for d in
                                                 (orjson.loads(r.value) for r in dead[:3])]

    s = scrape(worker.metrics_url)
    assert metric_sum(s, "streamlearner_stream_dead_letters_total", topic=topic) == len(payloads)
    for reason in set(reasons):
        assert metric_sum(s, "streamlearner_stream_dead_letters_total", topic=topic,
                          reason=reason.value) == reasons.count(reason)
    assert metric_sum(s, "streamlearner_stream_events_total", outcome="invalid") == len(payloads)
    assert metric_sum(s, "streamlearner_stream_events_total", outcome="accepted") == len(valid)

    assert worker.stop() == 0, worker.log_tail()
    log_text = worker.log_path.read_text(errors="replace")
    assert CANARY not in log_text
    assert "Traceback" not in log_text, worker.log_tail()
