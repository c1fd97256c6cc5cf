"""Worker settings: one frozen dataclass per component, composed by :class:`Settings`.

Every field is settable from the environment as ``<SECTION>_<FIELD>`` (e.g.
``KAFKA_BOOTSTRAP``, ``STREAM_BATCH_SIZE``, ``LEARNER_MODEL``) and from the
``streamlearner worker`` flags (``--stream-batch-size``). Bad values fail at start
with a :class:`SettingsError` naming the setting.

>>> s = Settings.from_env({"STREAM_BATCH_SIZE": "16"})
>>> s.stream.batch_size
16
>>> Settings.from_env({"STREAM_BATCH_SIZE": "zero"})
Traceback (most recent call last):
...
streams.settings.SettingsError: STREAM_BATCH_SIZE: expected an integer, got 'zero'
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from learner.config import LearnerConfig, MemoryConfig
from monitoring.metrics import MetricsConfig

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class SettingsError(ValueError):
    """A setting has a bad value; the message starts with the setting's name."""


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
        "Source topic of task `feedback`."))
    market_topic: str = field(default="market-events", metadata=_help(
        "Source topic of task `market`."))
    predictions_topic: str = field(default="predictions", metadata=_help("Output topic."))
    dead_letter_topic: str = field(default="dead-letters", metadata=_help(
        "Where rejected events go, with coordinates and reason."))
    drift_topic: str = field(default="drift-alerts", metadata=_help(
        "Where drift detections go (task, kind, detector, statistic, p-value, windows, ts)."))
    explanations_topic: str = field(default="explanations", metadata=_help(
        "Where sampled stream explanations go (SERVE_EXPLAIN_FRACTION > 0)."))
    model_events_topic: str = field(default="model-events", metadata=_help(
        "Where rollbacks (stability guard, manual) are announced."))
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
        topics = {}
        for name in ("feedback_topic", "market_topic", "predictions_topic", "dead_letter_topic",
                     "drift_topic", "explanations_topic", "model_events_topic"):
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

    def source_topics(self) -> dict[str, str]:
        """Source topic -> task."""
        return {self.feedback_topic: "feedback", self.market_topic: "market"}

    def all_topics(self) -> list[str]:
        return [self.feedback_topic, self.market_topic, self.predictions_topic,
                self.dead_letter_topic, self.drift_topic, self.explanations_topic,
                self.model_events_topic]

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


@dataclass(frozen=True)
class CheckpointConfig:
    """When the learner's state is made durable; offsets are committed only after that."""

    dir: str = field(default="var/checkpoints", metadata=_help(
        "Directory of checkpoints (safetensors + JSON + replay memory)."))
    every_updates: int = field(default=20, metadata=_help(
        "Checkpoint after this many updates. Events are acknowledged to Kafka (offsets "
        "committed) only once a checkpoint holds them: this bounds the work a crash redoes."))
    every_s: float = field(default=60.0, metadata=_help(
        "... or when this many seconds passed since the last one (and something changed)."))
    idle_s: float = field(default=5.0, metadata=_help(
        "... or when events wait for a checkpoint and no batch came for this many seconds."))
    max_pending_events: int = field(default=5000, metadata=_help(
        "... or when this many consumed events wait for one (bounds memory and redelivery)."))
    keep_last: int = field(default=3, metadata=_help("Checkpoints kept on disk."))
    max_failures: int = field(default=5, metadata=_help(
        "Consecutive failed checkpoints (disk full, permissions) after which the worker stops "
        "with code 3 instead of piling up unacknowledged events."))
    journal: bool = field(default=True, metadata=_help(
        "Keep CHECKPOINT_DIR/journal.jsonl: the event ids of every update in the model's "
        "history (one line per update, about 40 bytes per trained event)."))

    def __post_init__(self) -> None:
        if not self.dir:
            raise ValueError("dir must not be empty")
        for name in ("every_updates", "keep_last", "max_pending_events", "max_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("every_s", "idle_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class GuardConfig:
    """Stability guard (champion/challenger): judged at every probe evaluation
    (METRICS_PROBE_EVERY_UPDATES) on the per-task probe sets (METRICS_PROBE_SIZE)."""

    enabled: bool = field(default=True, metadata=_help(
        "Roll back to the last good model when probe accuracy falls by more than the margin."))
    margin: float = field(default=0.10, metadata=_help(
        "Roll back when a task's probe accuracy is this much below the last good version."))
    min_probe: int = field(default=20, metadata=_help(
        "A task is judged only once its probe set holds this many events."))

    def __post_init__(self) -> None:
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"margin must be in (0, 1), got {self.margin}")
        if self.min_probe < 1:
            raise ValueError(f"min_probe must be >= 1, got {self.min_probe}")


@dataclass(frozen=True)
class DriftConfig:
    """Drift detection per task (monitoring/drift.py) and what the worker does on a detection."""

    enabled: bool = field(default=True, metadata=_help(
        "Detect drift (costs one extra encoder pass per micro-batch, for the embeddings)."))
    concept_detector: str = field(default="adwin", metadata=_help(
        "Detector on the prequential error stream: adwin or page_hinkley (River)."))
    adwin_delta: float = field(default=0.002, metadata=_help(
        "ADWIN confidence: smaller = fewer false alarms, later detections."))
    ph_threshold: float = field(default=50.0, metadata=_help(
        "Page-Hinkley threshold (lambda) on the cumulative error-rate rise."))
    grace: int = field(default=100, metadata=_help(
        "Labeled events of a task before its concept detector may fire (and after a reset)."))
    reference: int = field(default=500, metadata=_help(
        "Events in the reference window of the embedding and label tests."))
    window: int = field(default=200, metadata=_help(
        "Events in the recent window compared with the reference."))
    every: int = field(default=50, metadata=_help(
        "Run the embedding and label tests every this many events of a task."))
    p_value: float = field(default=0.001, metadata=_help(
        "Significance of the permutation tests (MMD on embeddings, chi-square on labels)."))
    permutations: int = field(default=1000, metadata=_help(
        "Permutations per test (the smallest p-value is 1/(permutations+1))."))
    adapt_updates: int = field(default=20, metadata=_help(
        "After a detection: updates with a raised learning rate and replay ratio."))
    adapt_lr_scale: float = field(default=2.0, metadata=_help(
        "Learning-rate multiplier during the adaptation window."))
    adapt_replay_scale: float = field(default=2.0, metadata=_help(
        "Replay-ratio multiplier during the adaptation window."))
    reencode_updates: int = field(default=200, metadata=_help(
        "Re-encode the embedding reference with the live (fine-tuned) encoder after this many "
        "model updates, so that training is not mistaken for data drift."))

    def __post_init__(self) -> None:
        if self.concept_detector not in ("adwin", "page_hinkley"):
            raise ValueError("concept_detector must be adwin or page_hinkley, "
                             f"got {self.concept_detector!r}")
        for name in ("reference", "window", "every", "permutations", "reencode_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("grace", "adapt_updates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.p_value < 1.0:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value}")
        if not 0.0 < self.adwin_delta < 1.0:
            raise ValueError(f"adwin_delta must be in (0, 1), got {self.adwin_delta}")
        if self.ph_threshold <= 0:
            raise ValueError(f"ph_threshold must be > 0, got {self.ph_threshold}")
        if self.adapt_lr_scale <= 0 or self.adapt_replay_scale < 0:
            raise ValueError("adapt_lr_scale must be > 0 and adapt_replay_scale >= 0, got "
                             f"{self.adapt_lr_scale} and {self.adapt_replay_scale}")
        if self.p_value * (self.permutations + 1) < 1.0:
            raise ValueError(f"permutations must be >= {int(1 / self.p_value)} for p_value "
                             f"{self.p_value} (a smaller p-value is impossible), "
                             f"got {self.permutations}")


_LEARNER_HELP = {
    "model": "Encoder: local directory or hub name. Unset: bundled all-MiniLM-L6-v2.",
    "device": "auto (CUDA when present, bf16 autocast there), cpu, cuda or cuda:N.",
    "lr": "Encoder learning rate.",
    "head_lr": "Classification heads' learning rate.",
    "weight_decay": "AdamW weight decay.",
    "steps_per_batch": "Optimiser steps per micro-batch.",
    "max_length": "Max tokens per text (dynamic padding up to this).",
    "grad_clip": "Gradient-norm clip.",
    "max_grad_norm": "Skip (and count) an update whose gradient norm before clipping exceeds "
                     "this (exploding batch); non-finite losses/gradients are always skipped.",
    "seed": "Random seed.",
    "freeze_encoder": "Train the heads only (same as LEARNER_MODE=head).",
    "mode": "head (frozen encoder, cached features), lora (adapters on attention q/k/v) or full.",
    "strategy": "Anti-forgetting strategy: naive, er, derpp, ewc, lwf, or a '+' composition (er+ewc).",
    "bias_correction": "ace (new samples compete only among their own labels; counters new-class bias) or none.",
    "lora_rank": "Rank of the LoRA adapters (mode lora); alpha = 2 x rank.",
    "lora_layers": "LoRA on the top N encoder layers only (0 = all); fewer layers train faster.",
    "ewc_lambda": "Online-EWC penalty weight (strategy ewc).",
    "derpp_alpha": "DER++ logit-matching weight (strategy derpp).",
    "lwf_alpha": "LwF distillation weight (strategy lwf).",
    "adv_epsilon": "FGM adversarial-training epsilon on word embeddings (0 = off; modes lora/full).",
}
_MEMORY_HELP = {
    "capacity": "Replay memory size (samples, all tasks; class-balanced reservoir).",
    "replay_ratio": "Replayed samples drawn per new sample in each update.",
    "seed": "Replay sampling seed.",
}
_METRICS_HELP = {
    "port": "Port of the worker's HTTP server (`/metrics`).",
    "host": "Bind address of the HTTP server (0.0.0.0 inside containers).",
    "prequential_window": "Predictions in the sliding prequential-accuracy window.",
    "probe_size": "Labeled events per task held out of training as a probe set (forgetting).",
    "probe_every": "One labeled event in this many (by id hash) goes to the probe until it is full.",
    "probe_every_updates": "Evaluate the probe sets (forgetting, stability guard) every this many model updates.",
    "lag_interval_s": "Seconds between consumer-lag readings.",
}

@dataclass(frozen=True)
class ServeConfig:
    """Which model answers predictions and the HTTP API, and stream explanations."""

    model: str = field(default="teacher", metadata=_help(
        "teacher (the live learner) or student (newest distilled student, hot-swapped; the "
        "teacher answers until one exists)."))
    student_dir: str | None = field(default=None, metadata=_help(
        "Where `streamlearner distill` writes students. Unset: CHECKPOINT_DIR/student."))
    reload_interval_s: float = field(default=5.0, metadata=_help(
        "How often the worker looks for a newer student."))
    explain_fraction: float = field(default=0.0, metadata=_help(
        "Fraction of stream predictions explained (IG) and published to the explanations "
        "topic; each costs model-thread time."))
    explain_method: str = field(default="ig", metadata=_help(
        "ig (Integrated Gradients) or gxi (gradient x input, faster)."))
    admin_token: str | None = field(default=None, metadata=_help(
        "Bearer token of the state-changing endpoints (POST /admin/*); unset: they answer "
        "403. Set it from a secret store, never on the command line (never logged)."))

    def __post_init__(self) -> None:
        if self.model not in ("teacher", "student"):
            raise ValueError(f"model must be 'teacher' or 'student', got {self.model!r}")
        if self.student_dir is not None and not self.student_dir.strip():
            raise ValueError("student_dir must not be blank")
        if not self.reload_interval_s > 0:
            raise ValueError(f"reload_interval_s must be > 0, got {self.reload_interval_s}")
        if not 0.0 <= self.explain_fraction <= 1.0:
            raise ValueError(f"explain_fraction must be in [0, 1], got {self.explain_fraction}")
        if self.explain_method not in ("ig", "gxi"):
            raise ValueError(f"explain_method must be 'ig' or 'gxi', got {self.explain_method!r}")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("admin_token must be at least 16 characters (got a shorter one)")

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["admin_token"]:
            shown["admin_token"] = "***"
        return "ServeConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


SECTIONS: dict[str, tuple[type, dict[str, str] | None]] = {
    "kafka": (KafkaConfig, None),
    "stream": (StreamConfig, None),
    "learner": (LearnerConfig, _LEARNER_HELP),
    "memory": (MemoryConfig, _MEMORY_HELP),
    "checkpoint": (CheckpointConfig, None),
    "metrics": (MetricsConfig, _METRICS_HELP),
    "drift": (DriftConfig, None),
    "guard": (GuardConfig, None),
    "serve": (ServeConfig, None),
}


@dataclass(frozen=True)
class SettingSpec:
    section: str
    name: str
    env: str
    flag: str
    type: Any
    default: Any
    help: str


def setting_specs() -> list[SettingSpec]:
    """Every setting, in table order (the README's configuration table is built from this)."""
    specs = []
    for section, (cls, helps) in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            env = f"{section}_{f.name}".upper()
            text = (helps or {}).get(f.name) or f.metadata.get("help", "")
            specs.append(SettingSpec(section, f.name, env, "--" + env.lower().replace("_", "-"),
                                     hints[f.name], f.default, text))
    return specs


def _parse(spec: SettingSpec, raw: str) -> Any:
    kind = spec.type
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    text = raw.strip()
    if optional and text == "":
        return None
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{spec.env}: expected true/false, got {raw!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{spec.env}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{spec.env}: expected a number, got {raw!r}") from None
    return text


@dataclass(frozen=True)
class Settings:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        # An output record must fit in a produce request, with room for the key and headers.
        limit = self.kafka.max_request_bytes - 16 * 1024
        if self.stream.dead_letter_max_bytes > limit:
            raise SettingsError(
                f"STREAM_DEAD_LETTER_MAX_BYTES: dead_letter_max_bytes must be <= "
                f"KAFKA_MAX_REQUEST_BYTES - 16384 = {limit}, got {self.stream.dead_letter_max_bytes}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 overrides: Mapping[str, str] | None = None,
                 env_file: str | None = None) -> "Settings":
        """Build from ``env`` (default ``os.environ``) with ``overrides`` (keyed by env name) on
        top. ``env_file`` (``KEY=value`` lines, e.g. what ``streamlearner tune`` writes) comes
        below both: file < environment < flags. ``STREAMLEARNER_ENV_FILE`` in ``env`` names
        the file when ``env_file`` is not given."""
        import os

        environ = dict(os.environ if env is None else env)
        source: dict[str, str] = {}
        path = env_file or environ.get(ENV_FILE_VAR) or None
        if path:
            source.update(read_env_file(path))
        source.update(environ)
        source.update(overrides or {})
        values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for spec in setting_specs():
            if spec.env in source:
                values[spec.section][spec.name] = _parse(spec, source[spec.env])
        parts = {}
        for section, (cls_, _) in SECTIONS.items():
            try:
                parts[section] = cls_(**values[section])
            except (ValueError, TypeError) as exc:
                raise SettingsError(_name_setting(section, str(exc))) from None
        return cls(**parts)


ENV_FILE_VAR = "STREAMLEARNER_ENV_FILE"


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, blank lines and an ``export`` prefix allowed; values
    may be quoted). Every key must be a setting's env name: a typo fails here, naming the
    file, line and key, instead of being silently ignored.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as f:
    ...     _ = f.write("# tuned\\nLEARNER_LR=0.002\\nexport MEMORY_REPLAY_RATIO='2'\\n")
    >>> read_env_file(f.name)
    {'LEARNER_LR': '0.002', 'MEMORY_REPLAY_RATIO': '2'}
    >>> os.unlink(f.name)
    """
    known = {spec.env for spec in setting_specs()}
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SettingsError(f"{ENV_FILE_VAR}: cannot read env file {path!r}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SettingsError(f"{ENV_FILE_VAR}: {path}:{number}: expected KEY=value, got {line!r}")
        if key not in known:
            raise SettingsError(f"{key}: {path}:{number}: not a streamlearner setting")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def _name_setting(section: str, message: str) -> str:
    """'batch_size must be >= 1' in section 'stream' -> 'STREAM_BATCH_SIZE: batch_size must ...'."""
    first = message.split(" ", 1)[0].strip(":,")
    cls = SECTIONS[section][0]
    names = {f.name for f in dataclasses.fields(cls)}
    if first in names:
        return f"{section.upper()}_{first.upper()}: {message}"
    return f"{section.upper()}_*: {message}"


def settings_markdown() -> str:
    """The README's configuration table (``python -m streams.settings`` prints it)."""
    rows = ["| Setting (env) | Flag | Default | Meaning |", "|---|---|---|---|"]
    for s in setting_specs():
        rows.append(f"| `{s.env}` | `{s.flag}` | `{s.default!r}` | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
