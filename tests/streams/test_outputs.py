"""streams/outputs.py: which produce errors are retried, bounded retries, fail-fast delivery."""

from __future__ import annotations

import asyncio

import aiokafka.errors as ak
import kafka.errors as kp
import pytest
from faust.exceptions import ProducerSendError
from prometheus_client import CollectorRegistry

from monitoring.metrics import OUTPUT_REASONS, Metrics
from streams.outputs import DeliveryPolicy, Output, OutputError, classify, deliver_all


def _wrapped(exc):
    """What Faust raises from topic.send(): ProducerSendError from the Kafka error."""
    try:
        raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as outer:
        return outer


@pytest.mark.parametrize("exc, expected", [
    (ak.KafkaTimeoutError(), ("timeout", True)),
    (ak.RequestTimedOutError(), ("timeout", True)),
    (ak.KafkaConnectionError(), ("unavailable", True)),
    (ak.NotLeaderForPartitionError(), ("unavailable", True)),
    (ak.LeaderNotAvailableError(), ("unavailable", True)),
    (ak.NotEnoughReplicasError(), ("unavailable", True)),
    (ak.UnknownTopicOrPartitionError(), ("unknown_topic", True)),
    (ak.MessageSizeTooLargeError(), ("too_large", False)),
    (ak.RecordTooLargeError(), ("too_large", False)),
    (ak.TopicAuthorizationFailedError(), ("authorization", False)),
    (ak.ClusterAuthorizationFailedError(), ("authorization", False)),
    (ak.UnknownError(), ("refused", False)),
    (kp.InvalidRecordError(), ("refused", False)),
    (kp.KafkaTimeoutError(), ("timeout", True)),
    (kp.MessageSizeTooLargeError(), ("too_large", False)),
    (ak.CoordinatorNotAvailableError(), ("broker_error", True)),   # flagged retriable
    (ak.InvalidRequiredAcksError(), ("broker_error", False)),
    (asyncio.TimeoutError(), ("timeout", True)),
    (ConnectionResetError(), ("unavailable", True)),
    (TypeError("not JSON serialisable"), ("serialization", False)),
    (RuntimeError("bug"), ("error", False)),
])
def test_classify(exc, expected):
    assert classify(exc) == expected
    assert classify(_wrapped(exc)) == expected   # found on the cause chain
    assert expected[0] in OUTPUT_REASONS


class FakeTopic:
    """``send`` fails with the queued errors, then succeeds; ``fail_at`` picks where."""

    def __init__(self, errors=(), fail_at="future"):
        self.errors = list(errors)
        self.fail_at = fail_at
        self.sent = []
        self.attempts = 0

    async def send(self, key, record):
        self.attempts += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None and self.fail_at == "send":
            raise _wrapped(error)
        future = asyncio.get_running_loop().create_future()
        if error is not None:
            future.set_exception(error)
        else:
            self.sent.append((key, record))
            future.set_result("meta")
        return future


def _output(topic, retries=3):
    reg = CollectorRegistry()
    metrics = Metrics(registry=reg, outputs=["predictions"])
    sleeps = []

    async def sleep(s):
        sleeps.append(s)

    out = Output("predictions", topic.send, metrics=metrics, sleep=sleep,
                 policy=DeliveryPolicy(retries=retries, backoff_s=0.5, backoff_max_s=2.0))
    return out, reg, sleeps


@pytest.mark.parametrize("fail_at", ["send", "future"])
async def test_retriable_error_is_retried_with_backoff_then_delivered(fail_at):
    topic = FakeTopic([ak.KafkaTimeoutError(), ak.UnknownTopicOrPartitionError()], fail_at)
    out, reg, sleeps = _output(topic)
    await out.send_and_wait("k", {"v": 1})
    assert topic.sent == [("k", {"v": 1})] and topic.attempts == 3
    assert sleeps == [0.5, 1.0]
    get = reg.get_sample_value
    assert get("streamlearner_stream_output_retries_total",
               {"topic": "predictions", "reason": "timeout"}) == 1
    assert get("streamlearner_stream_output_retries_total",
               {"topic": "predictions", "reason": "unknown_topic"}) == 1
    assert get("streamlearner_stream_output_failures_total",
               {"topic": "predictions", "reason": "timeout"}) == 0


@pytest.mark.parametrize("fail_at", ["send", "future"])
async def test_retries_are_bounded(fail_at):
    topic = FakeTopic([ak.KafkaTimeoutError()] * 10, fail_at)
    out, reg, sleeps = _output(topic, retries=3)
    with pytest.raises(OutputError) as err:
        await out.send_and_wait("k", {"v": 1})
    assert (err.value.topic, err.value.reason, err.value.attempts) == ("predictions", "timeout", 4)
    assert "predictions" in str(err.value) and "KafkaTimeoutError" in str(err.value)
    assert topic.attempts == 4 and sleeps == [0.5, 1.0, 2.0]
    assert reg.get_sample_value("streamlearner_stream_output_failures_total",
                                {"topic": "predictions", "reason": "timeout"}) == 1


@pytest.mark.parametrize("fail_at", ["send", "future"])
async def test_final_error_is_not_retried(fail_at):
    topic = FakeTopic([ak.MessageSizeTooLargeError()], fail_at)
    out, reg, sleeps = _output(topic)
    with pytest.raises(OutputError) as err:
        await out.send_and_wait("k", {"v": 1})
    assert err.value.reason == "too_large" and topic.attempts == 1 and sleeps == []
    assert reg.get_sample_value("streamlearner_stream_output_failures_total",
                                {"topic": "predictions", "reason": "too_large"}) == 1


async def test_deliver_all_raises_the_first_failure_and_cancels_the_rest():
    never = asyncio.get_running_loop().create_future()
    cancelled = []

    async def hangs():
        try:
            await never
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fails():
        raise OutputError("t", "refused", RuntimeError("x"), 1)

    async def ok():
        return None

    with pytest.raises(OutputError):
        await asyncio.wait_for(deliver_all([ok(), hangs(), fails()]), timeout=5)
    await asyncio.sleep(0)
    assert cancelled == [True]
    await deliver_all([])
    await deliver_all([ok()])
