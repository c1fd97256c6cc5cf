"""Hyper-parameters of the learner, one frozen dataclass per component.

Every check raises ``ValueError`` whose message starts with the field name
(``"capacity must be > 0, got 0"``): the settings layer maps that first word to
the environment variable that set it.

>>> MemoryConfig(capacity=100).replay_ratio
1.0
>>> MemoryConfig(capacity=0)
Traceback (most recent call last):
...
ValueError: capacity must be an int > 0, got 0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["BIAS_CORRECTIONS", "DIST_BACKENDS", "LearnerConfig", "MODES", "MemoryConfig", "STRATEGIES", "parse_strategy"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MODES = ("head", "lora", "full")
STRATEGIES = ("naive", "er", "derpp", "ewc", "lwf")
BIAS_CORRECTIONS = ("none", "ace")
DIST_BACKENDS = ("auto", "nccl", "gloo")


def parse_strategy(spec: str) -> tuple[str, ...]:
    """``"er+ewc"`` -> ``("er", "ewc")``; ``naive`` composes with nothing.

    >>> parse_strategy("er+ewc")
    ('er', 'ewc')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"strategy must be a non-empty string like 'er' or 'er+ewc', got {spec!r}")
    names = tuple(part.strip() for part in spec.split("+"))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(f"strategy has unknown part(s) {unknown}; choose from {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"strategy repeats a part: {spec!r}")
    if "naive" in names and len(names) > 1:
        raise ValueError(f"strategy 'naive' means no anti-forgetting term and composes with nothing, got {spec!r}")
    if "er" in names and "derpp" in names:
        raise ValueError("strategy: 'derpp' already replays; use it without 'er'")
    return names


def _check_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; `capacity=True` is a typo, not a capacity of 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


def _check_float(name: str, value: object, *, minimum: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {minimum}, got {value!r}")


@dataclass(frozen=True)
class MemoryConfig:
    """Replay memory hyper-parameters.

    capacity: items kept in memory across all tasks and classes.
    replay_ratio: replayed items drawn per new item in each update (0 disables replay).
    seed: seed of the memory's own RNG (sampling and eviction).
    """

    capacity: int = 5000
    replay_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("capacity", self.capacity, minimum=1)
        _check_float("replay_ratio", self.replay_ratio, minimum=0.0, strict=False)
        _check_int("seed", self.seed, minimum=0)


@dataclass(frozen=True)
class LearnerConfig:
    """Model and optimisation hyper-parameters.

    model: ``None`` for the bundled all-MiniLM-L6-v2, else a local directory or hub
        name handed to ``from_pretrained`` (set ``HF_HUB_OFFLINE=1`` to forbid downloads).
    device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    lr: AdamW learning rate of the encoder.
    head_lr: AdamW learning rate of the classification heads. High on purpose: a new
        label must become predictable after a handful of examples. On BANKING77 micro-
        batches (16 new + 16 replayed) 1e-2 reached ~0.9 prequential accuracy after 60
        examples per intent where 5e-3 needed about twice as many; 2e-2 starts faster but
        ends slightly lower on longer streams.
    weight_decay: decoupled weight decay of matrices (biases and LayerNorms get none).
    steps_per_batch: optimizer steps per ``learn_many`` call on the same batch.
    max_length: tokens kept per text (longer texts are truncated).
    grad_clip: max global gradient norm; ``0`` disables clipping (nanoGPT's convention).
    max_grad_norm: an update whose gradient norm before clipping exceeds this is skipped
        (an exploding, likely poisoned batch); non-finite losses and norms are always skipped.
    seed: torch seed (head init, dropout).
    freeze_encoder: train the heads only; the encoder stays in eval mode (same as ``mode="head"``).
    mode: ``"head"`` (frozen encoder, features of remembered texts cached), ``"lora"``
        (peft LoRA adapters on the attention projections, rank ``lora_rank``) or ``"full"``.
    strategy: anti-forgetting strategies joined by ``+`` (``learner/strategies/``):
        ``naive`` (no replay), ``er``, ``derpp``, ``ewc``, ``lwf``; e.g. ``"er+ewc"``.
    bias_correction: ``"ace"`` (ER-ACE, Caccia et al. 2022: new samples compete only among
        the labels of their own batch, replayed ones among all) or ``"none"``.
    lora_rank: rank of the LoRA adapters (``mode="lora"``); alpha is twice the rank.
    lora_layers: adapt only the top this-many encoder layers (``0``: all of them).
    ewc_lambda: weight of the online-EWC penalty.
    derpp_alpha: weight of DER++'s logit-matching term on replayed samples.
    lwf_alpha: weight of LwF's distillation term (temperature 2).
    adv_epsilon: FGM perturbation norm on the word embeddings; ``0`` disables it (needs
        ``mode`` ``lora`` or ``full``: a frozen encoder has no embedding gradient to follow).
    gradient_checkpointing: recompute the encoder's activations in the backward pass instead
        of keeping them (modes ``lora``/``full``): less memory per sample, ~30% more compute.
    compile: ``torch.compile`` the encoder (in place: checkpoint names do not change).
    dist_backend: collective backend of a trainer made of several ranks (docs/distributed.md):
        ``auto`` (NCCL on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
    dist_timeout_s: a collective that waits longer than this fails the trainer (a dead or
        stuck rank stops it instead of hanging it); rank 0 sends a heartbeat every quarter.
    """

    model: str | None = None
    device: str = "auto"
    lr: float = 5e-5
    head_lr: float = 1e-2
    weight_decay: float = 0.01
    steps_per_batch: int = 1
    max_length: int = 64
    grad_clip: float = 1.0
    max_grad_norm: float = 1000.0
    seed: int = 0
    freeze_encoder: bool = False
    mode: str = "head"
    strategy: str = "er"
    bias_correction: str = "ace"
    lora_rank: int = 8
    lora_layers: int = 0
    ewc_lambda: float = 0.01
    derpp_alpha: float = 0.5
    lwf_alpha: float = 3.0
    adv_epsilon: float = 0.0
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute encoder activations in backward (modes lora/full): less memory per "
                "sample, more compute."})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the encoder (worth it on CUDA; the first updates compile)."})
    dist_backend: str = field(default="auto", metadata={
        "help": "Collectives of a multi-rank trainer (train --nproc-per-node N): auto (NCCL on "
                "CUDA, gloo on CPU), nccl or gloo."})
    dist_timeout_s: float = field(default=120.0, metadata={
        "help": "A collective waiting longer than this stops a multi-rank trainer (dead or stuck "
                "rank); rank 0 heartbeats every quarter of it."})

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ValueError(f"model must be None or a non-empty path or hub name, got {self.model!r}")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _check_float("lr", self.lr, minimum=0.0, strict=True)
        _check_float("head_lr", self.head_lr, minimum=0.0, strict=True)
        _check_float("weight_decay", self.weight_decay, minimum=0.0, strict=False)
        _check_int("steps_per_batch", self.steps_per_batch, minimum=1)
        # [CLS] and [SEP] alone take two tokens.
        _check_int("max_length", self.max_length, minimum=3)
        _check_float("grad_clip", self.grad_clip, minimum=0.0, strict=False)
        _check_float("max_grad_norm", self.max_grad_norm, minimum=0.0, strict=True)
        _check_int("seed", self.seed, minimum=0)
        if not isinstance(self.freeze_encoder, bool):
            raise ValueError(f"freeze_encoder must be a bool, got {self.freeze_encoder!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        parse_strategy(self.strategy)
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {', '.join(BIAS_CORRECTIONS)}, "
                             f"got {self.bias_correction!r}")
        _check_int("lora_rank", self.lora_rank, minimum=1)
        _check_int("lora_layers", self.lora_layers, minimum=0)
        _check_float("ewc_lambda", self.ewc_lambda, minimum=0.0, strict=False)
        _check_float("derpp_alpha", self.derpp_alpha, minimum=0.0, strict=False)
        _check_float("lwf_alpha", self.lwf_alpha, minimum=0.0, strict=False)
        _check_float("adv_epsilon", self.adv_epsilon, minimum=0.0, strict=False)
        for name in ("gradient_checkpointing", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.dist_backend not in DIST_BACKENDS:
            raise ValueError(f"dist_backend must be one of {', '.join(DIST_BACKENDS)}, "
                             f"got {self.dist_backend!r}")
        _check_float("dist_timeout_s", self.dist_timeout_s, minimum=0.0, strict=True)
        if self.adv_epsilon > 0 and self.frozen:
            raise ValueError("adv_epsilon must be 0 with a frozen encoder (mode head / freeze_encoder): "
                             "FGM needs gradients through the word embeddings")

    @property
    def frozen(self) -> bool:
        """The encoder is never trained (``mode="head"`` or ``freeze_encoder``)."""
        return self.mode == "head" or self.freeze_encoder

    @property
    def strategies(self) -> tuple[str, ...]:
        return parse_strategy(self.strategy)
