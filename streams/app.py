"""The Faust app every role runs on: Kafka clients, the web server with ``/metrics`` and
``/healthz``, output topics behind :class:`~streams.outputs.Output`, the consumer-lag timer.

No module-level app: :func:`create_app` is called by the role builders
(``streamlearner/roles.py``) and by tests; they add their agents, timers and pages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.outputs import DeliveryPolicy, Output

if TYPE_CHECKING:
    from streams.acks import FailStop

log = logging.getLogger(__name__)


def disable_topic_auto_creation() -> bool:
    """Make this process's aiokafka clients ask for metadata with
    ``allow_auto_topic_creation=False`` (aiokafka always asks for True).

    A broker with ``auto.create.topics.enable`` would otherwise create a missing output topic
    with its default partition count the moment the worker produces to it; with this, a
    missing topic is an ``UnknownTopicOrPartitionError`` (retried, then fail-stop: see
    streams/outputs.py). Returns False when this aiokafka has no such hook (then topics may
    be auto-created, as before)."""
    try:
        import aiokafka.client as client
        from aiokafka.protocol.metadata import MetadataRequest
    except ImportError:  # pragma: no cover - aiokafka is a faust-streaming dependency
        return False
    if getattr(client.MetadataRequest, "_streamlearner_no_create", False):
        return True
    try:
        MetadataRequest([], allow_auto_topic_creation=False)
    except TypeError:
        log.warning("this aiokafka cannot turn off topic auto-creation; a missing output "
                    "topic may be created by the broker")
        return False

    class NoAutoCreateMetadataRequest(MetadataRequest):
        _streamlearner_no_create = True

        def __init__(self, topics=None, allow_auto_topic_creation=False):
            super().__init__(topics, allow_auto_topic_creation)

    client.MetadataRequest = NoAutoCreateMetadataRequest
    return True


# Longest wait of the patched fetcher while a paused partition may resume (seconds).
FETCH_RECHECK_S = 0.05


def wake_fetcher_on_buffer_drop() -> bool:
    """Make Faust's fetcher resume a paused partition as soon as its buffer drains.

    Faust's flow control (faust-streaming 0.15, ``faust/transport/consumer.py``) pauses a
    partition whose stream buffer reaches 80% of ``stream_buffer_maxsize`` and resumes it at
    40%, but the fetcher does not hear of the resume: with every partition paused it sleeps a
    whole second, and with some still active it sits in ``getmany(timeout=1.0)`` on those.
    A consumer that drains the resumed partitions' buffers in under a second then waits with
    nothing to do: measured on a serving replica catching up a backlog (3 partitions, 256
    buffered events each), stalls of 0.4–0.6 s twice in six seconds. Patched: with no active
    partition the fetcher waits for the first buffer to drain (at most the same second), and
    while any partition is paused a fetch waits at most ``FETCH_RECHECK_S``.

    Process-wide and idempotent; returns False if this Faust lacks the hooks it relies on
    (then Faust's own behaviour stays)."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_streamlearner_wakes", False):
        return True
    needed = ("_wait_next_records", "on_buffer_drop", "_get_active_partitions",
              "_buffered_partitions", "not_waiting_next_records", "flow_active")
    if not all(hasattr(Consumer, n) or n in getattr(Consumer, "__annotations__", {})
               for n in needed):
        log.warning("this faust-streaming has no flow-control hooks to patch; a paused "
                    "partition may wait up to 1 s after its buffer drains")
        return False
    original_wait = Consumer._wait_next_records
    original_drop = Consumer.on_buffer_drop

    def _drained(consumer) -> asyncio.Event:
        event = consumer.__dict__.get("_streamlearner_drained")
        if event is None:
            event = consumer.__dict__["_streamlearner_drained"] = asyncio.Event()
        return event

    def on_buffer_drop(self, tp) -> None:
        original_drop(self, tp)
        _drained(self).set()

    async def _wait_next_records(self, timeout: float):
        if self.flow_active and not self.app.client_only:
            active = self._get_active_partitions()
            if not active and self._buffered_partitions:
                drained = _drained(self)
                drained.clear()
                self.not_waiting_next_records.set()
                # Faust's sleep(1) ends early when the consumer stops; so does this wait.
                stopped = getattr(self, "_stopped", None)
                waits = [asyncio.ensure_future(e.wait()) for e in (drained, stopped)
                         if e is not None]
                try:
                    await asyncio.wait(waits, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                active = self._get_active_partitions()
                if not active:
                    return {}, active
            if self._buffered_partitions:
                timeout = min(timeout, FETCH_RECHECK_S)
        return await original_wait(self, timeout)

    Consumer.on_buffer_drop = on_buffer_drop
    Consumer._wait_next_records = _wait_next_records
    Consumer._streamlearner_wakes = True
    return True


def _credentials(kafka):
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism,
                                     ssl_context=_ssl_context(kafka)
                                     if kafka.security_protocol == "SASL_SSL" else None)
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(kafka))
    return None


def _ssl_context(kafka):
    import ssl

    return ssl.create_default_context(cafile=kafka.ssl_cafile)


def read_lag(consumer, topics: set[str]) -> dict[tuple[str, int], int]:
    """High-water mark minus committed offset per assigned source partition (never raises:
    before the first fetch a partition has no high-water mark and is left out)."""
    committed = getattr(consumer, "_committed_offset", {})
    lags = {}
    try:
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            lags[(tp.topic, tp.partition)] = int(highwater) - int(committed.get(tp) or 0)
    except Exception:   # a metric must not take the worker down
        log.debug("consumer lag unavailable", exc_info=True)
    return lags


class StreamApp(faust.App):
    """A Faust app whose agent crashes stop the batch path first.

    Faust answers an exception that escapes an agent by committing the offsets acked so far
    and restarting the agent, which then continues *after* the batch it was processing; the
    next acks would let the consumer commit past those events. Failing the latch first means
    no ack happens any more: the role stops and the events are redelivered."""

    latch: "FailStop | None" = None

    async def _on_agent_error(self, agent, exc: BaseException) -> None:
        if self.latch is not None:
            self.latch.fail("internal", exc)
        await super()._on_agent_error(agent, exc)


def create_app(settings, *, app_id: str, data_dir: str, registry, latch: "FailStop",
               health: Callable[[], dict] | None = None) -> StreamApp:
    """The Faust app of one role (``app_id`` is its consumer group)."""
    k = settings.kafka
    app = StreamApp(
        app_id,
        broker=[f"kafka://{s}" for s in k.servers.split(",")],
        broker_credentials=_credentials(k),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=min(3.0, k.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        # Offsets are acked only once their effect is durable (streams/acks.py); a stop or
        # rebalance must not wait for acks that come with the next checkpoint.
        stream_wait_empty=False,
        producer_acks=-1,
        # Backpressure: at most this many fetched events wait per source partition; beyond
        # it the partition is paused and the backlog stays in Kafka (memory stays bounded).
        stream_buffer_maxsize=settings.stream.buffer_events,
        # Outputs: bounded records (STREAM_DEAD_LETTER_MAX_BYTES) under this request size;
        # one attempt waits at most this long (Faust's default is 20 minutes), then
        # streams/outputs.py retries with backoff or stops the batch.
        producer_max_request_size=k.max_request_bytes,
        producer_linger=k.producer_linger_ms / 1000.0,
        producer_request_timeout=k.producer_request_timeout_s,
        # Our Settings are the only configuration: Faust would otherwise read its own names
        # from the environment (WEB_PORT, BROKER_..., STREAM_BUFFER_MAXSIZE) over these
        # kwargs, e.g. Kubernetes' service-link variable WEB_PORT=tcp://... for a service "web".
        env={},
        web_enabled=True,
        web_port=settings.metrics.port,
        web_bind=settings.metrics.host,
        web_host=settings.metrics.host,
        datadir=data_dir,
    )
    app.latch = latch
    if not k.auto_create_topics:
        disable_topic_auto_creation()
    wake_fetcher_on_buffer_drop()

    @app.page("/metrics")
    async def metrics(web, request):
        # aiohttp refuses a charset inside content_type; Prometheus reads 0.0.4 text as is.
        return web.bytes(generate_latest(registry),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web, request):
        body = {"status": "failed" if latch.failed else "ok"}
        body.update(health() if health is not None else {})
        return web.json(body, status=503 if latch.failed else 200)

    return app


def delivery_policy(stream) -> DeliveryPolicy:
    return DeliveryPolicy(retries=stream.output_retries, backoff_s=stream.output_backoff_s,
                          backoff_max_s=stream.output_backoff_max_s)


def output(app: faust.App, name: str, *, metrics, policy: DeliveryPolicy,
           value_type: Any = None) -> Output:
    """An :class:`Output` for topic ``name``: JSON records of ``value_type``, or raw bytes.

    Records go straight to the aiokafka producer that Faust runs (the same connection,
    settings and flush on stop), serialised as Faust's topic would (a record's own JSON, a
    str key as UTF-8): Faust's ``Topic.send`` builds a pending message, a future message, a
    sensor state and a callback per record, and a replica's event loop spent 2.5x the CPU on
    its outputs that way (121 vs 49 us per event, a prediction and a sample delivered;
    ``python -m bench.outputs``, bench/results/outputs). Anything else (a value of another
    type, a transaction, a Faust without the hooks) takes ``Topic.send``."""
    if value_type is None:
        topic = app.topic(name, key_type=str, key_serializer="raw", value_serializer="raw")
    else:
        topic = app.topic(name, value_type=value_type, key_type=str, key_serializer="raw",
                          value_serializer="json")

    async def send(key: Any, record: Any) -> Any:
        producer = await _kafka_producer(app)
        if producer is not None:
            value = _value_bytes(record, value_type)
            if value is not None and (key is None or isinstance(key, (str, bytes))):
                return await producer.send(name, value, key=key.encode()
                                           if isinstance(key, str) else key)
        return await topic.send(key=key, value=record)

    return Output(name, send, metrics=metrics, policy=policy)


async def _kafka_producer(app: faust.App):
    """The aiokafka producer under Faust's, started; None where Faust offers none here (a
    transaction, another transport driver): then Faust's own path."""
    if getattr(app, "in_transaction", False):
        return None
    producer = app.producer
    if not producer.started:   # the role starts it with the app; a test may not
        await app.maybe_start_producer()
    return getattr(producer, "_producer", None)


def _value_bytes(record: Any, value_type: Any) -> bytes | None:
    """The bytes Faust's topic would send for ``record``; None for what only it knows."""
    if value_type is None:
        return record if isinstance(record, bytes) else None
    if isinstance(record, faust.Record):
        return record.dumps()   # its own serializer (json), as Faust's dumps_value does
    return None


def add_lag_timer(app: faust.App, metrics, topics: set[str], interval: float) -> None:
    @app.timer(interval=interval)
    async def consumer_lag():
        metrics.observe_lag(read_lag(app.consumer, topics))


def kafka_consumer(kafka, *, client_id: str):
    """An aiokafka consumer without a group (every replica reads every record), with the
    worker's security settings: how replicas follow model versions."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(_credentials(kafka), None)
    return AIOKafkaConsumer(bootstrap_servers=kafka.servers.split(","), group_id=None,
                            enable_auto_commit=False, client_id=client_id,
                            max_partition_fetch_bytes=4 * 1024 * 1024, **auth)
