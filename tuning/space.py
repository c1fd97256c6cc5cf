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

``fixed`` keeps settings out of the search at a given value (``--fixed MEMORY_CAPACITY=5000``:
memory is a storage budget, the way Renate's spaces fix ``memory_size``).

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
    fixed: tuple[tuple[str, str], ...] = ()   # (setting, value) kept out of the search

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
        fixed = dict(self.fixed)
        p: dict[str, Any] = {}

        def pick(name: str, how: str, *args, **kwargs) -> Any:
            p[name] = fixed[name] if name in fixed else getattr(trial, how)(name, *args, **kwargs)
            return p[name]

        pick("STREAM_BATCH_SIZE", "suggest_categorical", list(self.batch_sizes))
        pick("LEARNER_HEAD_LR", "suggest_float", 1e-3, 1e-1, log=True)
        pick("LEARNER_WEIGHT_DECAY", "suggest_float", 1e-6, 1e-1, log=True)
        pick("LEARNER_STEPS_PER_BATCH", "suggest_int", 1, 2)
        pick("MEMORY_CAPACITY", "suggest_int", 256, 16384, log=True)
        pick("MEMORY_REPLAY_RATIO", "suggest_float", 0.25, 4.0, step=0.25)
        parts = str(pick("LEARNER_STRATEGY", "suggest_categorical", list(self.strategies))).split("+")
        pick("LEARNER_BIAS_CORRECTION", "suggest_categorical", ["ace", "none"])
        if "derpp" in parts:
            pick("LEARNER_DERPP_ALPHA", "suggest_float", 0.0, 1.0)
        if "ewc" in parts:
            pick("LEARNER_EWC_LAMBDA", "suggest_float", 1e-4, 1.0, log=True)
        if "lwf" in parts:
            pick("LEARNER_LWF_ALPHA", "suggest_float", 0.1, 10.0, log=True)
        if len(self.modes) > 1:
            mode = pick("LEARNER_MODE", "suggest_categorical", list(self.modes))
        else:
            mode = p["LEARNER_MODE"] = fixed.get("LEARNER_MODE", self.modes[0])
        if mode != "head":
            pick("LEARNER_LR", "suggest_float", 1e-5, 5e-3, log=True)
        if mode == "lora":
            pick("LEARNER_LORA_RANK", "suggest_categorical", [4, 8, 16])
            pick("LEARNER_LORA_LAYERS", "suggest_categorical", [0, 2, 4])
        return {k: _text(v) for k, v in p.items()}

    def defaults(self, settings) -> dict[str, Any]:
        """``settings``' values of this space's parameters (the first trial of a new study:
        the tuned settings are never worse than these on the tuning segment)."""
        return {k: v for k, v in default_params(settings).items() if self._contains(k, v)}

    def _contains(self, key: str, value: Any) -> bool:
        if key in dict(self.fixed):
            return False
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
