"""Configuration of ingestion: Kafka clients and topics, micro-batching and the input limits.

One frozen dataclass per component (composed by ``streamlearner.settings.Settings``); a bad
value raises ``ValueError`` whose message starts with the field's name.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str | None = field(default=None, metadata=_help(
        "Kafka bootstrap servers host:port[,host:port]. Unset: `demo` starts the embedded broker; "
        "`worker` uses 127.0.0.1:9092."))
    app_id: str = field(default="streamlearner", metadata=_help(
        "Faust app id = consumer group id and prefix of internal topics."))
    feedback_topic: str = field(default="customer-feedback", metadata=_help(
        "Source topic of the default task `feedback` (when KAFKA_TASKS is unset)."))
    market_topic: str = field(default="market-events", metadata=_help(
        "Source topic of the default task `market` (when KAFKA_TASKS is unset)."))
    tasks: str | None = field(default=None, metadata=_help(
        "Tasks and their source topics: `name=topic[,topic];name=topic`, or a TOML file "
        "(`tasks.toml`: topics, an optional fixed label set and batching per task; "
        "docs/tasks.md). Unset: `feedback` and `market` on the two topics above."))
    labels_topic: str = field(default="labels", metadata=_help(
        "Labels that come after their events: {id, label, task?, ts?} records, joined to "
        "the predictions they score (LABELS_*)."))
    predictions_topic: str = field(default="predictions", metadata=_help("Output topic."))
    dead_letter_topic: str = field(default="dead-letters", metadata=_help(
        "Where rejected events go, with coordinates and reason."))
    drift_topic: str = field(default="drift-alerts", metadata=_help(
        "Where drift detections go (task, kind, detector, statistic, p-value, windows, ts)."))
    explanations_topic: str = field(default="explanations", metadata=_help(
        "Where sampled stream explanations go (SERVE_EXPLAIN_FRACTION > 0)."))
    model_events_topic: str = field(default="model-events", metadata=_help(
        "Where rollbacks (stability guard, manual) are announced."))
    samples_topic: str = field(default="samples", metadata=_help(
        "Serving replicas publish every accepted event (cleaned, with its prediction and source "
        "coordinates) here; the trainer learns from it (roles serve/train)."))
    model_versions_topic: str = field(default="model-versions", metadata=_help(
        "Compacted topic of published model versions (pointers to artifacts, or small ones "
        "inline); replicas follow it."))
    partitions: int = field(default=1, metadata=_help(
        "Partitions when `topics create` makes the topics."))
    replication_factor: int = field(default=1, metadata=_help(
        "Replication factor when topics are created."))
    session_timeout_s: float = field(default=30.0, metadata=_help(
        "Consumer group session timeout (a dead member is noticed after this)."))
    security_protocol: str = field(default="PLAINTEXT", metadata=_help(
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."))
    sasl_mechanism: str | None = field(default=None, metadata=_help(
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with SASL_*."))
    sasl_username: str | None = field(default=None, metadata=_help("SASL user."))
    sasl_password: str | None = field(default=None, metadata=_help(
        "SASL password (never logged)."))
    ssl_cafile: str | None = field(default=None, metadata=_help("CA bundle for SSL."))
    max_request_bytes: int = field(default=1_048_576, metadata=_help(
        "Largest produce request the worker sends (the producer's max_request_size; Apache "
        "Kafka's default message.max.bytes is about 1 MB). Every output record is bounded "
        "below it (STREAM_DEAD_LETTER_MAX_BYTES)."))
    producer_request_timeout_s: float = field(default=30.0, metadata=_help(
        "How long one produce attempt may wait for the broker (metadata, acks) before it "
        "counts as failed and is retried (STREAM_OUTPUT_RETRIES)."))
    producer_linger_ms: float = field(default=5.0, metadata=_help(
        "How long the producer waits for more records before it sends a produce request "
        "(linger.ms; 5 is Apache Kafka 4's default). A micro-batch's outcomes go in one "
        "request, and every role awaits a batch's deliveries behind the next batch, so the "
        "wait costs no throughput: on the embedded broker the broker's CPU fell from 0.07 to "
        "0.02 cores (docs/performance.md). 0 sends each record at once."))
    auto_create_topics: bool = field(default=False, metadata=_help(
        "Let the worker's clients auto-create missing topics. Off: a missing output topic is "
        "an error (retried, then the worker stops unacknowledged) instead of a topic "
        "created with the broker's default partition count; create topics with "
        "`streamlearner topics create`."))

    def __post_init__(self) -> None:
        if self.bootstrap is not None and not re.fullmatch(
                r"[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*", self.bootstrap):
            raise ValueError(f"bootstrap must be host:port[,host:port...], got {self.bootstrap!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.app_id):
            raise ValueError(f"app_id must be letters, digits, '.', '_' or '-', got {self.app_id!r}")
        from streams.tasks import default_tasks, parse_tasks

        specs = (parse_tasks(self.tasks) if self.tasks is not None
                 else default_tasks(self.feedback_topic, self.market_topic))
        object.__setattr__(self, "_task_specs", specs)
        topics = {}
        names = ["predictions_topic", "dead_letter_topic", "drift_topic", "explanations_topic",
                 "model_events_topic", "samples_topic", "model_versions_topic", "labels_topic"]
        if self.tasks is None:
            names = ["feedback_topic", "market_topic"] + names
        else:
            for name in ("feedback_topic", "market_topic"):
                if not _TOPIC_RE.match(getattr(self, name)):
                    raise ValueError(f"{name} is not a valid Kafka topic name: "
                                     f"{getattr(self, name)!r}")
            for spec in specs:
                for topic in spec.topics:
                    topics[topic] = f"tasks ({spec.name}'s topic)"
        for name in names:
            value = getattr(self, name)
            if not _TOPIC_RE.match(value):
                raise ValueError(f"{name} is not a valid Kafka topic name: {value!r}")
            if value in topics:
                raise ValueError(f"{name} must differ from {topics[value]} ({value!r})")
            topics[value] = name
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {self.replication_factor}")
        if self.session_timeout_s <= 0:
            raise ValueError(f"session_timeout_s must be > 0, got {self.session_timeout_s}")
        if self.max_request_bytes < 64 * 1024:
            raise ValueError(f"max_request_bytes must be >= 65536, got {self.max_request_bytes}")
        if not 0 <= self.producer_linger_ms <= 1000:
            raise ValueError(f"producer_linger_ms must be in [0, 1000], got "
                             f"{self.producer_linger_ms}")
        if self.producer_request_timeout_s <= 0:
            raise ValueError("producer_request_timeout_s must be > 0, got "
                             f"{self.producer_request_timeout_s}")
        protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
        if self.security_protocol not in protocols:
            raise ValueError(f"security_protocol must be one of {protocols}, "
                             f"got {self.security_protocol!r}")
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError("sasl_mechanism, sasl_username and sasl_password are required "
                             f"with security_protocol={self.security_protocol}")

    @property
    def servers(self) -> str:
        return self.bootstrap or "127.0.0.1:9092"

    def task_specs(self) -> tuple:
        """The configured tasks (:class:`streams.tasks.TaskSpec`), in configuration order."""
        return self._task_specs

    def task_names(self) -> list[str]:
        return [spec.name for spec in self._task_specs]

    def task_spec(self, name: str):
        return next((spec for spec in self._task_specs if spec.name == name), None)

    def source_topics(self) -> dict[str, str]:
        """Source topic -> task."""
        return {topic: spec.name for spec in self._task_specs for topic in spec.topics}

    def output_topics(self) -> list[str]:
        """Topics the roles write (every one must exist: clients do not auto-create)."""
        return [self.predictions_topic, self.dead_letter_topic, self.drift_topic,
                self.explanations_topic, self.model_events_topic, self.samples_topic,
                self.model_versions_topic]

    def all_topics(self) -> list[str]:
        return list(self.source_topics()) + [self.labels_topic] + self.output_topics()

    def client_kwargs(self) -> dict[str, Any]:
        """Security settings for kafka-python clients."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.ssl_cafile:
            kw["ssl_cafile"] = self.ssl_cafile
        return kw

    def __repr__(self) -> str:  # never print the password
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["sasl_password"]:
            shown["sasl_password"] = "***"
        return "KafkaConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


@dataclass(frozen=True)
class StreamConfig:
    batch_size: int = field(default=32, metadata=_help(
        "Max events per micro-batch (`stream.take_events(batch_size, within=max_wait_s)`)."))
    max_wait_s: float = field(default=1.0, metadata=_help(
        "Max seconds to wait for a micro-batch to fill."))
    max_text_chars: int = field(default=2000, metadata=_help(
        "Longer `text` is dead-lettered as text_too_long."))
    max_payload_bytes: int = field(default=65536, metadata=_help(
        "Larger raw events are dead-lettered as payload_too_large."))
    dedup_ids: int = field(default=100_000, metadata=_help(
        "How many recent event ids are remembered to drop redeliveries/re-publishes."))
    dedup_text_window: int = field(default=10_000, metadata=_help(
        "How many recent cleaned texts per task are remembered: a repeat under a new id is "
        "predicted but not trained on again (0 disables)."))
    handoff_queue: int = field(default=2, metadata=_help(
        "Micro-batches that may wait for the model thread; agents wait when it is full."))
    max_id_chars: int = field(default=512, metadata=_help(
        "Longer `id` is dead-lettered as field_too_long (it is the key of every output)."))
    max_label_chars: int = field(default=256, metadata=_help(
        "Longer `label` is dead-lettered as field_too_long."))
    dead_letter_max_bytes: int = field(default=256 * 1024, metadata=_help(
        "Largest dead letter (and explanation record): a larger payload is cut and the record "
        "says so (payload_truncated, payload_bytes, payload_sha256); the original stays at its "
        "source coordinates for `dlq replay`. Must stay below KAFKA_MAX_REQUEST_BYTES."))
    output_retries: int = field(default=8, metadata=_help(
        "Retries of an output record after a retriable produce error (timeout, broker "
        "unavailable, unknown topic); then the batch stops unacknowledged and the worker "
        "exits with code 3 (restart it: the batch is redelivered)."))
    output_backoff_s: float = field(default=0.5, metadata=_help(
        "Wait before the first retry; doubles each retry."))
    output_backoff_max_s: float = field(default=30.0, metadata=_help(
        "Longest wait between two retries."))
    buffer_events: int = field(default=256, metadata=_help(
        "Fetched events buffered per source partition ahead of the agent (Faust "
        "`stream_buffer_maxsize`): fetching pauses at 80% and resumes at 40%, so a backlog "
        "waits in Kafka and worker memory stays bounded (about this × the payload size)."))

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_text_chars", "max_payload_bytes", "dedup_ids",
                     "handoff_queue", "max_id_chars", "max_label_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dead_letter_max_bytes < 4096:
            raise ValueError(f"dead_letter_max_bytes must be >= 4096, got "
                             f"{self.dead_letter_max_bytes}")
        if self.output_retries < 0:
            raise ValueError(f"output_retries must be >= 0, got {self.output_retries}")
        if self.output_backoff_s < 0 or self.output_backoff_max_s < self.output_backoff_s:
            raise ValueError("output_backoff_s must be >= 0 and output_backoff_max_s >= it, got "
                             f"{self.output_backoff_s} and {self.output_backoff_max_s}")
        if self.buffer_events < self.batch_size:
            raise ValueError(f"buffer_events must be >= batch_size ({self.batch_size}), "
                             f"got {self.buffer_events}")
        if self.max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {self.max_wait_s}")
        if self.dedup_text_window < 0:
            raise ValueError(f"dedup_text_window must be >= 0, got {self.dedup_text_window}")
