"""Kafka out: every output record goes through an :class:`Output`, which retries what can be
retried and turns what cannot into an :class:`OutputError` that stops the batch.

Faust has no production exception handler (Kafka Streams' ``ProductionExceptionHandler``):
a failed send raises from ``topic.send()`` or from the delivery future it returns, and an
exception that escapes an agent makes Faust restart the agent past the in-flight events.
So the pipeline delivers through this module and treats an :class:`OutputError` as
*fail-stop*: the batch and everything after it stay unacknowledged, the worker exits, and a
restart redelivers them (streams/pipeline.py).

Which errors are which (:func:`classify`, the ``reason`` label of
``streamlearner_stream_output_failures_total``):

============== =========== ==========================================================
reason         retried     errors
============== =========== ==========================================================
timeout        yes         KafkaTimeoutError, RequestTimedOutError (broker slow or gone)
unavailable    yes         connection errors, no leader / not leader, not enough replicas
unknown_topic  yes         UnknownTopicOrPartitionError (a topic being created), then fails
too_large      no          MessageSizeTooLargeError, RecordTooLargeError, batch too large
authorization  no          topic / cluster / group authorization, SASL authentication
refused        no          the broker rejected the record (InvalidRecord, corrupt record,
                           an unknown error code, e.g. a broker-side schema check)
broker_error   as flagged  any other Kafka error: retried when the error says it is retriable
serialization  no          our record could not be serialised (a bug)
error          no          anything else (a bug)
============== =========== ==========================================================

Retries wait ``backoff_s`` doubling up to ``backoff_max_s``; after ``retries`` of them the
last error is final (its reason, counted once).

>>> classify(TimeoutError())
('timeout', True)
>>> policy = DeliveryPolicy(retries=3, backoff_s=0.5, backoff_max_s=1.0)
>>> [policy.delay(n) for n in (1, 2, 3)]
[0.5, 1.0, 1.0]
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from monitoring.metrics import OUTPUT_REASONS as REASONS  # one list: the metric's label values

__all__ = ["REASONS", "DeliveryPolicy", "Output", "OutputError", "classify", "deliver_all"]

log = logging.getLogger(__name__)

Send = Callable[[Any, Any], Awaitable[Awaitable[Any]]]  # (key, record) -> delivery future


_BY_NAME = {
    # Retried: the broker may come back or the topic may appear.
    "KafkaTimeoutError": ("timeout", True),
    "RequestTimedOutError": ("timeout", True),
    "KafkaConnectionError": ("unavailable", True),
    "NodeNotReadyError": ("unavailable", True),
    "NotLeaderForPartitionError": ("unavailable", True),
    "LeaderNotAvailableError": ("unavailable", True),
    "NotEnoughReplicasError": ("unavailable", True),
    "NotEnoughReplicasAfterAppendError": ("unavailable", True),
    "BrokerNotAvailableError": ("unavailable", True),
    "NotControllerError": ("unavailable", True),
    "UnknownTopicOrPartitionError": ("unknown_topic", True),
    # Final: sending the same bytes again cannot succeed.
    "MessageSizeTooLargeError": ("too_large", False),
    "RecordTooLargeError": ("too_large", False),
    "RecordListTooLargeError": ("too_large", False),
    "RecordBatchTooLargeError": ("too_large", False),
    "TopicAuthorizationFailedError": ("authorization", False),
    "ClusterAuthorizationFailedError": ("authorization", False),
    "GroupAuthorizationFailedError": ("authorization", False),
    "TransactionalIdAuthorizationFailed": ("authorization", False),
    "SaslAuthenticationFailedError": ("authorization", False),
    "InvalidRecordError": ("refused", False),
    "CorruptRecordException": ("refused", False),
    "CorruptRecordError": ("refused", False),
    "InvalidTopicError": ("refused", False),
    "UnknownError": ("refused", False),   # aiokafka's name for an error code it does not know
}


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> tuple[str, bool]:
    """``(reason, retriable)`` of a failed send. Faust wraps Kafka errors in
    ``ProducerSendError``; the Kafka error is found on the cause chain."""
    for cause in _causes(exc):
        for cls in type(cause).__mro__:
            hit = _BY_NAME.get(cls.__name__)
            if hit is not None:
                return hit
        if isinstance(cause, (asyncio.TimeoutError, TimeoutError)):
            return "timeout", True
        if isinstance(cause, (ConnectionError, OSError)):
            return "unavailable", True
        if any(c.__name__ == "KafkaError" for c in type(cause).__mro__):
            return "broker_error", bool(getattr(cause, "retriable", False))
    for cause in _causes(exc):
        if isinstance(cause, (TypeError, ValueError, UnicodeError)):
            return "serialization", False
    return "error", False


class OutputError(RuntimeError):
    """An output record could not be delivered: stop the batch, acknowledge nothing more."""

    def __init__(self, topic: str, reason: str, cause: BaseException, attempts: int) -> None:
        super().__init__(f"cannot deliver to {topic!r}: {reason} after {attempts} "
                         f"attempt{'s' if attempts != 1 else ''} "
                         f"({type(cause).__name__}: {cause})")
        self.topic = topic
        self.reason = reason
        self.cause = cause
        self.attempts = attempts


@dataclass(frozen=True)
class DeliveryPolicy:
    """Bounded retries with exponential backoff (settings ``STREAM_OUTPUT_*``)."""

    retries: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))


async def _delivered() -> None:
    return None


class Output:
    """One output topic. :meth:`publish` hands a record to the producer and returns what to
    await for its delivery; either raises :class:`OutputError` when it gives up.

    A failure raised by the send itself (no metadata for the topic, record too large) is
    retried right there, so a batch does not queue a hundred records behind a topic that is
    missing; a failure of the delivery future is retried when it is awaited.

    ``metrics`` needs ``output_retries`` and ``output_failures`` counters labelled by topic and
    reason (monitoring/metrics.py); ``None`` counts nothing.
    """

    def __init__(self, topic: str, send: Send, *, metrics=None,
                 policy: DeliveryPolicy | None = None, sleep=asyncio.sleep) -> None:
        self.topic = topic
        self._send = send
        self._metrics = metrics
        self.policy = policy if policy is not None else DeliveryPolicy()
        self._sleep = sleep

    async def publish(self, key: Any, record: Any) -> Awaitable[None]:
        try:
            future = await self._send(key, record)
        except Exception as exc:
            await self._retry(key, record, exc)
            return _delivered()
        return self._confirm(future, key, record)

    async def send_and_wait(self, key: Any, record: Any) -> None:
        await (await self.publish(key, record))

    async def _confirm(self, future: Awaitable[Any], key: Any, record: Any) -> None:
        try:
            await future
        except Exception as exc:
            await self._retry(key, record, exc)

    async def _retry(self, key: Any, record: Any, exc: Exception) -> None:
        attempt = 1
        while True:
            reason, retriable = classify(exc)
            if not retriable or attempt > self.policy.retries:
                if self._metrics is not None:
                    self._metrics.output_failures.labels(topic=self.topic, reason=reason).inc()
                raise OutputError(self.topic, reason, exc, attempt) from exc
            if self._metrics is not None:
                self._metrics.output_retries.labels(topic=self.topic, reason=reason).inc()
            wait = self.policy.delay(attempt)
            log.warning("delivery to %r failed (%s: %s: %s); retry %d of %d in %.1f s",
                        self.topic, reason, type(exc).__name__, exc, attempt,
                        self.policy.retries, wait)
            await self._sleep(wait)
            attempt += 1
            try:
                await (await self._send(key, record))
                return
            except Exception as again:
                exc = again


async def deliver_all(deliveries: list[Awaitable[Any]]) -> None:
    """Await every delivery; on the first failure cancel the others and raise it."""
    if not deliveries:
        return
    if len(deliveries) == 1:
        await deliveries[0]
        return
    tasks = [asyncio.ensure_future(d) for d in deliveries]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    for task in pending:
        task.cancel()
    for task in tasks:   # in submission order: the first failure is the one reported
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()
