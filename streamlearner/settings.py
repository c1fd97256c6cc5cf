"""Settings of every role: one frozen dataclass per component, composed by :class:`Settings`.

The components live in their rooms (``streams.config``, ``learner.config``,
``lifecycle.config``, ``serving.config``, ``monitoring.metrics``); this composition root is the
only module that knows them all. Every field is settable from the environment as
``<SECTION>_<FIELD>`` (e.g. ``KAFKA_BOOTSTRAP``, ``STREAM_BATCH_SIZE``, ``LEARNER_MODEL``), from
an env file (``--env-file``) and from the command flags (``--stream-batch-size``). Bad values
fail at start with a :class:`SettingsError` naming the setting.

>>> s = Settings.from_env({"STREAM_BATCH_SIZE": "16"})
>>> s.stream.batch_size
16
>>> Settings.from_env({"STREAM_BATCH_SIZE": "zero"})
Traceback (most recent call last):
...
streamlearner.settings.SettingsError: STREAM_BATCH_SIZE: expected an integer, got 'zero'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from learner.config import LearnerConfig, MemoryConfig
from lifecycle.config import CheckpointConfig, DriftConfig, GuardConfig, ModelsConfig
from lifecycle.join_types import JoinConfig
from monitoring.metrics import MetricsConfig
from serving.config import ServeConfig
from streams.config import KafkaConfig, StreamConfig
from tracking.config import TrackingConfig

__all__ = ["ENV_FILE_VAR", "SECTIONS", "Settings", "SettingsError", "SettingSpec",
           "read_env_file", "setting_specs", "settings_markdown"]


class SettingsError(ValueError):
    """A setting has a bad value; the message starts with the setting's name."""


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
    "models": (ModelsConfig, None),
    "labels": (JoinConfig, None),
    "tracking": (TrackingConfig, None),
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
    models: ModelsConfig = field(default_factory=ModelsConfig)
    labels: JoinConfig = field(default_factory=JoinConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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
    """The README's configuration table (``python -m streamlearner.settings`` prints it)."""
    rows = ["| Setting (env) | Flag | Default | Meaning |", "|---|---|---|---|"]
    for s in setting_specs():
        rows.append(f"| `{s.env}` | `{s.flag}` | `{s.default!r}` | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
