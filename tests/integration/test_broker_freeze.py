"""Broker freeze: the broker process is paused (SIGSTOP) for 30 s in the middle of a labeled
stream, then resumed (SIGCONT). The worker must recover on its own — no restart, no operator —
and lose nothing: every published event gets a prediction and every labeled event is trained on
exactly once (ids are unique and the id dedup window drops redeliveries)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tools.broker import EmbeddedBroker
from tools.demo import Follower
from tools.publish import make_producer, publish

from .conftest import wait_until
from .test_worker_e2e import banking_events, counters



@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """Our own broker: pausing the session one would stall every other integration test."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("freeze-broker") / "tansu.log") as b:
        yield b


@pytest.mark.parametrize("freeze_s", [
    30.0,
    # Longer than aiokafka's request timeout (40 s): in-flight requests time out and are retried.
    pytest.param(75.0, marks=pytest.mark.slow),
])
def test_worker_survives_broker_freeze(broker, worker_env, start_worker, freeze_s):
    env = worker_env
    topic = env["KAFKA_FEEDBACK_TOPIC"]
    events = banking_events(60)                      # 300 labeled BANKING77 events, 5 intents
    payloads = [json.dumps(e).encode() for e in events]
    before, during = payloads[:200], payloads[200:]

    worker = start_worker()
    follower = Follower(broker.bootstrap, env["KAFKA_PREDICTIONS_TOPIC"],
                        env["KAFKA_DEAD_LETTER_TOPIC"]).start()
    # A producer patient enough to outlast the freeze: its sends wait in its buffer.
    producer = make_producer(broker.bootstrap, request_timeout_ms=120_000,
                             delivery_timeout_ms=180_000,
                             max_block_ms=120_000)
    try:
        assert publish(broker.bootstrap, topic, before, producer=producer,
                       progress=False) == len(before)
        # Mid-stream: the worker is fetching, predicting, training and committing.
        wait_until(lambda: counters(worker.metrics_url)["predictions"] >= 50, timeout=120,
                   interval=0.2, message="worker did not start on the stream")
        c_paused = counters(worker.metrics_url)
        broker.pause()
        paused_at = time.monotonic()
        try:
            # Producers go on producing into the frozen broker.
            sender = threading.Thread(target=publish, args=(broker.bootstrap, topic, during),
                                      kwargs={"producer": producer, "progress": False},
                                      daemon=True)
            sender.start()
            while time.monotonic() - paused_at < freeze_s:
                assert worker.proc.poll() is None, f"worker died during the freeze:\n" \
                                                   f"{worker.log_tail()}"
                time.sleep(1)
            # Nothing can have been processed end to end while the broker was stopped.
            c_frozen = counters(worker.metrics_url)
        finally:
            broker.resume()
        resumed_at = time.monotonic()
        frozen_s = resumed_at - paused_at
        delivered = len(follower.predictions)
        wait_until(lambda: len(follower.predictions) > delivered, timeout=120, interval=0.2,
                   message="no prediction delivered after the broker resumed:\n"
                           + worker.log_tail())
        first_s = time.monotonic() - resumed_at
        sender.join(timeout=150)
        assert not sender.is_alive(), "publisher still blocked after the broker resumed"
        wait_until(lambda: counters(worker.metrics_url)["new_samples"] >= len(events)
                   and len(follower.predictions) >= len(events), timeout=180,
                   message="worker did not recover after the broker resumed:\n"
                           + worker.log_tail())
        recovery_s = time.monotonic() - resumed_at
        c = counters(worker.metrics_url)
        print(f"broker frozen {frozen_s:.1f} s with {c_paused['predictions']:.0f} of "
              f"{len(events)} predicted (during the freeze: {c_frozen['predictions']:.0f}); "
              f"first new prediction {first_s:.1f} s after resume, all {len(events)} "
              f"predicted and trained {recovery_s:.1f} s after resume; "
              f"accepted {c['accepted']:.0f}, duplicates {c['duplicate']:.0f}, "
              f"updates {c['updates']:.0f}")

        assert worker.proc.poll() is None, worker.log_tail()
        assert set(follower.predictions) == {e["id"] for e in events}   # nothing lost
        assert c["accepted"] == len(events)        # each id accepted once
        assert c["invalid"] == 0 and c["dead"] == 0
        assert c["new_samples"] == len(events)     # ... and trained on exactly once
        assert c["predictions"] == len(events)
        assert worker.stop() == 0, worker.log_tail()
    finally:
        producer.close(timeout=5)
        follower.stop()
