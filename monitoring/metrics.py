"""Prometheus metrics of the worker, in one object over an injected registry.

Names follow ``streamlearner_<subsystem>_<what>_<unit>`` with base units and
``_total`` counters; label values are bounded (topic, task, outcome, reason) and
pre-initialised so dashboards show zeros rather than gaps. This module is handed
numbers; it never imports the learner.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = Metrics(registry=reg, topics=["customer-feedback"], tasks=["feedback"], reasons=["invalid_json"])
>>> m.events.labels(topic="customer-feedback", outcome="accepted").inc()
>>> reg.get_sample_value("streamlearner_stream_events_total",
...                      {"topic": "customer-feedback", "outcome": "accepted"})
1.0
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("accepted", "invalid", "duplicate")
# Why an output record was not delivered (streams/outputs.py classify; kept here because
# monitoring is handed numbers and must not import the stream room).
OUTPUT_REASONS = ("timeout", "unavailable", "unknown_topic", "too_large", "authorization",
                  "refused", "broker_error", "serialization", "error")
# Where a batch failed when it stopped the worker (streams/acks.py).
FAILURE_STAGES = ("decode", "predict", "publish", "learn", "checkpoint", "ack", "internal")
# Why a replica refused a published model version (serving/follower.py).
REFUSALS = ("format", "base_model", "mode", "checksum", "unreadable", "stale")
_STALENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
DRIFT_DETECTORS = (("concept", "adwin"), ("data", "mmd"), ("label", "chi2"))
# Final outcomes of a label from the labels topic (lifecycle/join_types.py Outcome), and why
# an unlabeled event left the pending store before its label came.
LABEL_OUTCOMES = ("joined", "duplicate", "correction", "expired_event", "unmatched_label",
                  "ambiguous", "not_allowed", "invalid")
EVICTION_CAUSES = ("age", "late", "count", "bytes")
NO_TASK = "none"   # the task label of a label whose task is unknown
_DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class MetricsConfig:
    """Where the worker serves ``/metrics`` (Faust's web server)."""

    port: int = 6066
    host: str = "127.0.0.1"
    prequential_window: int = 200
    probe_size: int = 50
    probe_every: int = 10
    probe_every_updates: int = 10
    lag_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not isinstance(self.prequential_window, int) or self.prequential_window < 1:
            raise ValueError(f"prequential_window must be >= 1, got {self.prequential_window!r}")
        if self.probe_size < 0:
            raise ValueError(f"probe_size must be >= 0, got {self.probe_size!r}")
        for name in ("probe_every", "probe_every_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lag_interval_s <= 0:
            raise ValueError(f"lag_interval_s must be > 0, got {self.lag_interval_s!r}")


class SlidingAccuracy:
    """Accuracy over the last ``window`` predictions (prequential: predicted before learning).

    >>> acc = SlidingAccuracy(window=2)
    >>> for ok in (False, True, True):
    ...     _ = acc.update(ok)
    >>> acc.value, acc.count
    (1.0, 3)
    """

    def __init__(self, window: int = 200):
        self.window = window
        self._hits: deque[bool] = deque(maxlen=window)
        self.count = 0

    def update(self, correct: bool) -> "SlidingAccuracy":
        self._hits.append(bool(correct))
        self.count += 1
        return self

    @property
    def value(self) -> float:
        return sum(self._hits) / len(self._hits) if self._hits else 0.0


class Metrics:
    """All worker metrics. Build one per process (or per test) with its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, topics: Iterable[str] = (),
                 tasks: Iterable[str] = (), reasons: Iterable[str] = (),
                 prequential_window: int = 200,
                 drift_detectors: Iterable[tuple[str, str]] = DRIFT_DETECTORS,
                 outputs: Iterable[str] = ()):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("streamlearner_stream_events_total",
                              "Events consumed from source topics, by outcome.",
                              ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("streamlearner_stream_dead_letters_total",
                                    "Events sent to the dead-letter topic, by reason.",
                                    ["topic", "reason"], registry=r)
        self.repeat_texts = Counter("streamlearner_stream_repeat_texts_total",
                                    "Accepted events predicted but not trained on: same cleaned "
                                    "text seen recently under another id.", ["task"], registry=r)
        self.predictions = Counter("streamlearner_stream_predictions_total",
                                   "Predictions published.", ["task"], registry=r)
        self.updates = Counter("streamlearner_learner_updates_total",
                               "Model updates applied.", ["task"], registry=r)
        self.update_failures = Counter("streamlearner_learner_update_failures_total",
                                       "Micro-batches whose update was skipped (all reasons).",
                                       ["task"], registry=r)
        self.skipped_updates = Counter("streamlearner_learner_skipped_updates_total",
                                       "Skipped updates by reason: nonfinite_loss, nonfinite_grad, "
                                       "grad_norm (above LEARNER_MAX_GRAD_NORM).",
                                       ["task", "reason"], registry=r)
        self.rollbacks = Counter("streamlearner_learner_rollbacks_total",
                                 "Rollbacks of the live model: regression (stability guard) or "
                                 "manual (CLI / API).", ["reason"], registry=r)
        self.champion_version = Gauge("streamlearner_learner_champion_version",
                                      "Model version the stability guard last found good.",
                                      registry=r)
        self.pending_events = Gauge("streamlearner_stream_pending_ack_events",
                                    "Consumed events waiting for a checkpoint before their "
                                    "offsets are committed.", registry=r)
        self.checkpoint_failures = Counter("streamlearner_learner_checkpoint_failures_total",
                                           "Checkpoints that could not be written (events stay "
                                           "unacknowledged and are retried).", registry=r)
        self.trained_samples = Counter("streamlearner_learner_samples_total",
                                       "Samples used in updates: new from the stream or replayed.",
                                       ["task", "kind"], registry=r)
        self.update_duration = Histogram("streamlearner_learner_update_duration_seconds",
                                         "Wall time of one model update.", ["task"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("streamlearner_learner_batch_samples",
                                    "New labeled samples per micro-batch update.", ["task"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.loss = Gauge("streamlearner_learner_loss", "Training loss of the last update.",
                          ["task"], registry=r)
        self.prequential_accuracy = Gauge(
            "streamlearner_learner_prequential_accuracy_ratio",
            "Accuracy of predictions made before learning, over a sliding window.",
            ["task"], registry=r)
        self.memory_samples = Gauge("streamlearner_learner_memory_samples",
                                    "Samples held in the replay memory.", ["task"], registry=r)
        self.labels = Gauge("streamlearner_learner_labels", "Size of the label vocabulary.",
                            ["task"], registry=r)
        self.model_version = Gauge("streamlearner_learner_model_version",
                                   "Version of the live model (number of applied updates).",
                                   registry=r)
        self.freshness = Histogram("streamlearner_learner_freshness_seconds",
                                   "Time from publish (Kafka record timestamp) to the model "
                                   "update that includes the event.", ["task"],
                                   buckets=_FRESHNESS_BUCKETS, registry=r)
        self.predict_duration = Histogram("streamlearner_learner_predict_duration_seconds",
                                          "Wall time of one batched predict call.", ["task"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.checkpoints = Counter("streamlearner_learner_checkpoints_total",
                                   "Checkpoints written.", registry=r)
        self.last_update = Gauge("streamlearner_learner_last_update_timestamp_seconds",
                                 "Unix time of the last applied update.", registry=r)
        self.drift_detections = Counter(
            "streamlearner_learner_drift_detections_total",
            "Drift detections, by kind (concept / data / label) and detector.",
            ["task", "kind", "detector"], registry=r)
        self.drift_statistic = Gauge(
            "streamlearner_learner_drift_statistic",
            "Latest drift statistic: recent error rate (concept), MMD² of embeddings (data), "
            "chi-square of labels (label).", ["task", "kind"], registry=r)
        self.drift_p_value = Gauge(
            "streamlearner_learner_drift_p_value",
            "Permutation p-value of the latest two-sample test (data, label); 1 before the first.",
            ["task", "kind"], registry=r)
        self.drift_last = Gauge("streamlearner_learner_drift_last_detection_timestamp_seconds",
                                "Unix time of the task's last drift detection (0: none yet).",
                                ["task"], registry=r)
        self.drift_adapting = Gauge("streamlearner_learner_drift_adaptation_updates",
                                    "Updates left in the drift adaptation window (boosted "
                                    "learning rate and replay).", registry=r)
        self.probe_accuracy = Gauge("streamlearner_learner_probe_accuracy_ratio",
                                    "Accuracy on the task's held-out probe set (never trained on).",
                                    ["task"], registry=r)
        self.forgetting = Gauge("streamlearner_learner_forgetting_ratio",
                                "Best probe accuracy of the task so far minus the current one.",
                                ["task"], registry=r)
        self.consumer_lag = Gauge("streamlearner_stream_consumer_lag_messages",
                                  "Messages in the partition not yet committed by this worker "
                                  "(high-water mark minus committed offset).",
                                  ["topic", "partition"], registry=r)
        self.output_failures = Counter(
            "streamlearner_stream_output_failures_total",
            "Output records that could not be delivered after their retries, by topic and "
            "reason; each one stops its batch unacknowledged (the worker exits with code 3).",
            ["topic", "reason"], registry=r)
        self.output_retries = Counter(
            "streamlearner_stream_output_retries_total",
            "Retried deliveries of output records, by topic and reason.",
            ["topic", "reason"], registry=r)
        self.batch_failures = Counter(
            "streamlearner_stream_batch_failures_total",
            "Micro-batches that stopped the worker unacknowledged, by the stage that failed.",
            ["stage"], registry=r)
        # Serving replicas and the trainer (the split roles; the worker has both).
        self.serve_model_version = Gauge("streamlearner_serve_model_version",
                                         "Model version this process serves.", registry=r)
        self.serve_staleness = Histogram(
            "streamlearner_serve_model_staleness_seconds",
            "Time from the trainer publishing a version (or, for a version published before "
            "this replica began following, from then) to this process serving it.",
            buckets=_STALENESS_BUCKETS, registry=r)
        self.serve_swaps = Counter("streamlearner_serve_swaps_total",
                                   "Model versions swapped in.", registry=r)
        self.serve_refused = Counter(
            "streamlearner_serve_refused_artifacts_total",
            "Published model versions refused (the previous one keeps serving), by reason.",
            ["reason"], registry=r)
        self.request_duration = Histogram(
            "streamlearner_serve_request_duration_seconds",
            "Wall time of an HTTP prediction or explanation request.", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.publish_duration = Histogram(
            "streamlearner_train_publish_duration_seconds",
            "Wall time of publishing one model version (artifact, store, record).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.artifact_bytes = Gauge("streamlearner_train_artifact_bytes",
                                    "Size of the last published model artifact.", registry=r)
        self.published_version = Gauge("streamlearner_train_published_version",
                                       "Model version last published.", registry=r)
        self.publish_failures = Counter(
            "streamlearner_train_publish_failures_total",
            "Model versions that could not be published (the next one supersedes them).",
            registry=r)
        self.duplicate_samples = Counter(
            "streamlearner_train_duplicate_samples_total",
            "Samples dropped by the trainer because the model already holds their id "
            "(a replica's redelivery).", ["task"], registry=r)
        self.label_outcomes = Counter(
            "streamlearner_labels_outcomes_total",
            "Records of the labels topic by final outcome: joined (trained once), duplicate, "
            "correction, expired_event, unmatched_label, ambiguous, not_allowed, invalid "
            f"(undecodable). task={NO_TASK!r}: not known.", ["task", "outcome"], registry=r)
        self.labels_waiting = Gauge("streamlearner_labels_waiting",
                                    "Labels that came before their event, waiting for it.",
                                    registry=r)
        self.labels_pending_events = Gauge(
            "streamlearner_labels_pending_events",
            "Unlabeled events held in the pending store for a later label.", registry=r)
        self.labels_pending_bytes = Gauge(
            "streamlearner_labels_pending_bytes",
            "Bytes of the pending store's events (what LABELS_MAX_BYTES bounds).", registry=r)
        self.labels_evicted = Counter(
            "streamlearner_labels_evicted_total",
            "Unlabeled events that left the pending store without a label: age "
            "(LABELS_MAX_AGE_S of event time), late (already out of the window), count or bytes "
            "(the caps).", ["cause"], registry=r)
        self.label_delay = Histogram(
            "streamlearner_labels_delay_seconds",
            "Event-time delay of joined labels (label ts - event ts; early labels count as 0).",
            ["task"], buckets=_DELAY_BUCKETS, registry=r)
        self.delayed_prequential = Gauge(
            "streamlearner_learner_delayed_prequential_accuracy_ratio",
            "Sliding accuracy of the predictions served when events arrived, scored by the "
            "labels that came later (delayed-prequential).", ["task"], registry=r)
        self._drift_detectors = tuple(drift_detectors)
        self._lag_labels: set[tuple[str, str]] = set()
        self._window = prequential_window
        self._accuracy: dict[str, SlidingAccuracy] = {}
        for topic in topics:
            for outcome in OUTCOMES:
                self.events.labels(topic=topic, outcome=outcome)
            for reason in reasons:
                self.dead_letters.labels(topic=topic, reason=reason)
        for reason in ("regression", "manual"):
            self.rollbacks.labels(reason=reason)
        for topic in outputs:
            for reason in OUTPUT_REASONS:
                self.output_failures.labels(topic=topic, reason=reason)
                self.output_retries.labels(topic=topic, reason=reason)
        for stage in FAILURE_STAGES:
            self.batch_failures.labels(stage=stage)
        for reason in REFUSALS:
            self.serve_refused.labels(reason=reason)
        for endpoint in ("predict", "explain"):
            self.request_duration.labels(endpoint=endpoint)
        for cause in EVICTION_CAUSES:
            self.labels_evicted.labels(cause=cause)
        for outcome in LABEL_OUTCOMES:
            self.label_outcomes.labels(task=NO_TASK, outcome=outcome)
        for task in tasks:
            self.init_task(task)

    def init_task(self, task: str) -> None:
        self.duplicate_samples.labels(task=task)
        self.label_delay.labels(task=task)
        self.delayed_prequential.labels(task=task)
        for outcome in LABEL_OUTCOMES:
            self.label_outcomes.labels(task=task, outcome=outcome)
        for child in (self.repeat_texts, self.predictions, self.updates, self.update_failures,
                      self.loss, self.prequential_accuracy, self.memory_samples, self.labels):
            child.labels(task=task)
        for kind in ("new", "replay"):
            self.trained_samples.labels(task=task, kind=kind)
        for reason in ("nonfinite_loss", "nonfinite_grad", "grad_norm"):
            self.skipped_updates.labels(task=task, reason=reason)
        for kind, detector in self._drift_detectors:
            self.drift_detections.labels(task=task, kind=kind, detector=detector)
            self.drift_statistic.labels(task=task, kind=kind)
        for kind in ("data", "label"):
            self.drift_p_value.labels(task=task, kind=kind).set(1.0)
        for child in (self.drift_last, self.probe_accuracy, self.forgetting):
            child.labels(task=task)
        self._accuracy.setdefault(task, SlidingAccuracy(self._window))

    def observe_prequential(self, task: str, correct: Iterable[bool]) -> float:
        """Feed predict-before-learn outcomes; returns the task's sliding accuracy."""
        acc = self._accuracy.setdefault(task, SlidingAccuracy(self._window))
        for ok in correct:
            acc.update(ok)
        self.prequential_accuracy.labels(task=task).set(acc.value)
        return acc.value

    def observe_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Set lag per (topic, partition) now assigned; drop partitions no longer assigned."""
        current = {(topic, str(partition)) for topic, partition in lags}
        for labels in list(self._lag_labels - current):
            self.consumer_lag.remove(*labels)
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, lag))
        self._lag_labels = current

    def prequential(self, task: str) -> float:
        acc = self._accuracy.get(task)
        return acc.value if acc else 0.0
