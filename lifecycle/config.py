"""Configuration of the training lifecycle: checkpoints, the stability guard, drift
adaptation and model publishing."""

from __future__ import annotations

from dataclasses import dataclass, field


def _help(text: str) -> dict:
    return {"help": text}


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


@dataclass(frozen=True)
class ModelsConfig:
    """Model versions published by the trainer and loaded by serving replicas."""

    store: str = field(default="var/models", metadata=_help(
        "Where artifacts go: a directory or any fsspec URL (s3://bucket/prefix, gs://...; "
        "credentials as that filesystem reads them). Every replica must be able to read it."))
    publish_every_s: float = field(default=1.0, metadata=_help(
        "Publish a new version when the model changed and this many seconds passed since the "
        "last publication (head mode: about 1 s of staleness)."))
    publish_every_updates: int = field(default=0, metadata=_help(
        "... or after this many updates (0: by time only)."))
    inline_max_bytes: int = field(default=256 * 1024, metadata=_help(
        "Artifacts up to this size travel inside the model-versions record (head mode) instead "
        "of the store."))
    keep: int = field(default=20, metadata=_help("Artifacts kept in the store (newest)."))

    def __post_init__(self) -> None:
        if not self.store.strip():
            raise ValueError("store must not be empty")
        if not self.publish_every_s > 0:
            raise ValueError(f"publish_every_s must be > 0, got {self.publish_every_s}")
        if self.publish_every_updates < 0:
            raise ValueError(f"publish_every_updates must be >= 0, got {self.publish_every_updates}")
        if not 0 <= self.inline_max_bytes <= 768 * 1024:
            raise ValueError("inline_max_bytes must be in 0..786432 (a record must fit in 1 MB "
                             f"with its base64), got {self.inline_max_bytes}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")
