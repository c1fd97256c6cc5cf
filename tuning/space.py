"""The search space of ``streamlearner tune``: worker settings, named by their env variables.

Every parameter is a setting (``LEARNER_HEAD_LR``, ``MEMORY_REPLAY_RATIO``, ...), so a trial's
parameters are the env file the worker reads, with nothing to translate. The ranges follow
Renate's default spaces (``renate/tuning/config_spaces.py``: log-uniform learning rates and
weight decay, DER's loss weights uniform in [0, 1]), widened where this learner differs
(the heads learn at 1e-2 by default; memory size and replay ratio are searched, not fixed):

=============================  ==========================================================
``STREAM_BATCH_SIZE``          8, 16, 32, 64 (the micro-batch the worker trains on)
``LEARNER_HEAD_LR``            log-uniform [1e-3, 1e-1]
``LEARNER_WEIGHT_DECAY``       log-uniform [1e-6, 1e-1]
``LEARNER_STEPS_PER_BATCH``    1 or 2
``MEMORY_CAPACITY``            log-uniform integer [256, 16384]
``MEMORY_REPLAY_RATIO``        [0.25, 4] in steps of 0.25
``LEARNER_STRATEGY``           er, derpp, er+ewc, er+lwf (``strategies``)
``LEARNER_BIAS_CORRECTION``    ace or none
``LEARNER_DERPP_ALPHA``        uniform [0, 1] (derpp)
``LEARNER_EWC_LAMBDA``         log-uniform [1e-4, 1] (ewc)
``LEARNER_LWF_ALPHA``          log-uniform [0.1, 10] (lwf)
``LEARNER_MODE``               ``modes`` (head only by default: the others need a GPU to
                               tune in reasonable time)
``LEARNER_LR``                 log-uniform [1e-5, 5e-3] (lora, full)
``LEARNER_LORA_RANK``          4, 8, 16 (lora)
``LEARNER_LORA_LAYERS``        0 (all), 2, 4 (lora)
=============================  ==========================================================

>>> import optuna
>>> trial = optuna.trial.FixedTrial({"STREAM_BATCH_SIZE": 16, "LEARNER_HEAD_LR": 0.02,
...     "LEARNER_WEIGHT_DECAY": 0.01, "LEARNER_STEPS_PER_BATCH": 1, "MEMORY_CAPACITY": 1000,
...     "MEMORY_REPLAY_RATIO": 1.5, "LEARNER_STRATEGY": "derpp",
...     "LEARNER_BIAS_CORRECTION": "ace", "LEARNER_DERPP_ALPHA": 0.3})
>>> SearchSpace().suggest(trial)["LEARNER_DERPP_ALPHA"]
'0.3'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SearchSpace", "default_params"]

STRATEGIES = ("er", "derpp", "er+ewc", "er+lwf")


@dataclass(frozen=True)
class SearchSpace:
    modes: tuple[str, ...] = ("head",)
    strategies: tuple[str, ...] = STRATEGIES
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)

    def __post_init__(self) -> None:
        from learner.config import MODES, parse_strategy

        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if not self.strategies:
            raise ValueError("strategies must not be empty")
        for spec in self.strategies:
            parse_strategy(spec)
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be >= 1, got {self.batch_sizes!r}")

    def suggest(self, trial) -> dict[str, str]:
        """One configuration as env settings (strings, as an env file holds them)."""
        p: dict[str, Any] = {
            "STREAM_BATCH_SIZE": trial.suggest_categorical("STREAM_BATCH_SIZE", list(self.batch_sizes)),
            "LEARNER_HEAD_LR": trial.suggest_float("LEARNER_HEAD_LR", 1e-3, 1e-1, log=True),
            "LEARNER_WEIGHT_DECAY": trial.suggest_float("LEARNER_WEIGHT_DECAY", 1e-6, 1e-1, log=True),
            "LEARNER_STEPS_PER_BATCH": trial.suggest_int("LEARNER_STEPS_PER_BATCH", 1, 2),
            "MEMORY_CAPACITY": trial.suggest_int("MEMORY_CAPACITY", 256, 16384, log=True),
            "MEMORY_REPLAY_RATIO": trial.suggest_float("MEMORY_REPLAY_RATIO", 0.25, 4.0, step=0.25),
        }
        strategy = trial.suggest_categorical("LEARNER_STRATEGY", list(self.strategies))
        p["LEARNER_STRATEGY"] = strategy
        p["LEARNER_BIAS_CORRECTION"] = trial.suggest_categorical("LEARNER_BIAS_CORRECTION", ["ace", "none"])
        parts = strategy.split("+")
        if "derpp" in parts:
            p["LEARNER_DERPP_ALPHA"] = trial.suggest_float("LEARNER_DERPP_ALPHA", 0.0, 1.0)
        if "ewc" in parts:
            p["LEARNER_EWC_LAMBDA"] = trial.suggest_float("LEARNER_EWC_LAMBDA", 1e-4, 1.0, log=True)
        if "lwf" in parts:
            p["LEARNER_LWF_ALPHA"] = trial.suggest_float("LEARNER_LWF_ALPHA", 0.1, 10.0, log=True)
        mode = (trial.suggest_categorical("LEARNER_MODE", list(self.modes))
                if len(self.modes) > 1 else self.modes[0])
        p["LEARNER_MODE"] = mode
        if mode != "head":
            p["LEARNER_LR"] = trial.suggest_float("LEARNER_LR", 1e-5, 5e-3, log=True)
        if mode == "lora":
            p["LEARNER_LORA_RANK"] = trial.suggest_categorical("LEARNER_LORA_RANK", [4, 8, 16])
            p["LEARNER_LORA_LAYERS"] = trial.suggest_categorical("LEARNER_LORA_LAYERS", [0, 2, 4])
        return {k: _text(v) for k, v in p.items()}

    def defaults(self, settings) -> dict[str, Any]:
        """``settings``' values of this space's parameters (the first trial of a new study:
        the tuned settings are never worse than these on the tuning segment)."""
        return {k: v for k, v in default_params(settings).items() if self._contains(k, v)}

    def _contains(self, key: str, value: Any) -> bool:
        if key == "STREAM_BATCH_SIZE":
            return value in self.batch_sizes
        if key == "LEARNER_STRATEGY":
            return value in self.strategies
        if key == "LEARNER_MODE":
            return value in self.modes and len(self.modes) > 1
        return True


def default_params(settings) -> dict[str, Any]:
    """The searched settings' values in ``settings`` (what the worker runs without a file)."""
    lc, mc = settings.learner, settings.memory
    mode = "head" if lc.frozen else lc.mode
    p: dict[str, Any] = {
        "STREAM_BATCH_SIZE": settings.stream.batch_size, "LEARNER_HEAD_LR": lc.head_lr,
        "LEARNER_WEIGHT_DECAY": lc.weight_decay, "LEARNER_STEPS_PER_BATCH": lc.steps_per_batch,
        "MEMORY_CAPACITY": mc.capacity, "MEMORY_REPLAY_RATIO": mc.replay_ratio,
        "LEARNER_STRATEGY": lc.strategy, "LEARNER_BIAS_CORRECTION": lc.bias_correction,
    }
    parts = lc.strategy.split("+")
    if "derpp" in parts:
        p["LEARNER_DERPP_ALPHA"] = lc.derpp_alpha
    if "ewc" in parts:
        p["LEARNER_EWC_LAMBDA"] = lc.ewc_lambda
    if "lwf" in parts:
        p["LEARNER_LWF_ALPHA"] = lc.lwf_alpha
    p["LEARNER_MODE"] = mode
    if mode != "head":
        p["LEARNER_LR"] = lc.lr
    if mode == "lora":
        p["LEARNER_LORA_RANK"] = lc.lora_rank
        p["LEARNER_LORA_LAYERS"] = lc.lora_layers
    return p


def _text(value: Any) -> str:
    """An env file's spelling of a value (floats in full precision, no trailing '.0' loss)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)
