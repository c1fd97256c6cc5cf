"""The online learner: predict, then learn from each labeled micro-batch with replay.

>>> learner = Learner(LearnerConfig(device="cpu"))                        # doctest: +SKIP
>>> learner.predict_many("intents", ["where is my card?"])[0].label        # doctest: +SKIP
None
>>> stats = learner.learn_many("intents", ["where is my card?"], ["card_arrival"])  # doctest: +SKIP
>>> stats.model_version, learner.labels("intents")                        # doctest: +SKIP
(1, ['card_arrival'])

The learner is not thread-safe: run every call on one dedicated thread (the stream
agents hand work to it through an executor).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import LearnerConfig, MemoryConfig
from . import state
from .features import FeatureCache
from .losses import cross_entropy, fgm_backward
from .memory import MemoryItem, ReplayMemory
from .model import TextClassifier, default_model_path, param_groups, resolve_device
from .strategies import Batch, Outputs, build_strategies

__all__ = ["Learner", "Prediction", "UpdateStats", "trainable_encoder_state"]

_PREDICT_CHUNK = 256  # texts per forward pass in predict_many; bounds activation memory
_PRUNE_SLACK = 512    # memory-kind features kept beyond the replay memory before a prune


@dataclass(frozen=True)
class Prediction:
    """``label`` is None (and ``confidence`` 0.0) while the task has no label yet."""

    label: str | None
    confidence: float
    model_version: int


@dataclass(frozen=True)
class UpdateStats:
    """What one ``learn_many`` call did.

    ``loss`` is the mean over the applied optimizer steps of the mean cross-entropy of the
    batch (new + replayed). When no step was applied (empty batch, or a non-finite loss or
    gradient norm), ``model_version`` is unchanged and ``loss`` is nan or the offending value.
    """

    loss: float
    n_new: int
    n_replay: int
    model_version: int
    seconds: float
    grad_norm: float
    skipped: str | None = None  # why no step was applied: nonfinite_loss, nonfinite_grad, grad_norm


def _check_texts(name: str, values: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; iterating it would learn one label per character.
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str, got a single {type(values).__name__}")
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{name} must contain only str, got {type(v).__name__}")
    return values


def trainable_encoder_state(encoder: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the encoder: everything in ``full`` mode, the adapters
    (``lora_*``) in ``lora`` mode, nothing with a frozen encoder (it is the bundled one)."""
    if mode == "head":
        return {}
    state = encoder.state_dict()
    if mode == "lora":
        state = {k: v for k, v in state.items() if "lora_" in k}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run the block with ``n`` intra-op threads (the learner's thread is torch's only user)."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_task(task: str) -> None:
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a non-empty str, got {task!r}")


class Learner:
    """Transformer text classifier that keeps learning from labeled micro-batches.

    Each task gets its own head whose labels grow as they appear; a class-balanced
    replay memory mixes old examples (of every task) into each update so that learning
    new intents does not erase old ones. Not thread-safe: call it from one thread.
    Checkpoints (:meth:`state_dict`, :meth:`metadata`, :meth:`load`) leave out the
    optimizer's Adam moments; a restored learner starts with a fresh optimizer.
    """

    def __init__(self, config: LearnerConfig | None = None, memory: MemoryConfig | None = None) -> None:
        self.config = config if config is not None else LearnerConfig()
        self.memory = memory if memory is not None else MemoryConfig()
        self._reset()

    def _reset(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)  # head init is deterministic anyway; this seeds dropout
        self.device = resolve_device(cfg.device)
        self.model = TextClassifier(cfg.model or default_model_path(), max_length=cfg.max_length).to(self.device)
        if cfg.frozen:
            self.model.encoder.requires_grad_(False)
        elif cfg.mode == "lora":
            self.model.add_lora(cfg.lora_rank, cfg.lora_layers)
        if cfg.gradient_checkpointing and not cfg.frozen:
            self.model.enable_gradient_checkpointing()
        if cfg.compile:
            self.model.compile_encoder()
        self.features = FeatureCache(self._encode)  # used with a frozen encoder only
        self.strategies = build_strategies(cfg)
        self.replay = ReplayMemory(capacity=self.memory.capacity, seed=self.memory.seed)
        self._labels: dict[str, list[str]] = {}             # task -> labels in head index order
        self._label_index: dict[str, dict[str, int]] = {}   # task -> label -> head index
        self._version = 0
        self._counters = {
            "updates": 0,
            "optimizer_steps": 0,
            "skipped_updates": 0,
            "samples_replayed": 0,
            "samples_seen": {},  # task -> labeled samples offered to learn_many
        }
        self.optimizer: torch.optim.AdamW | None = None
        self._params: list[nn.Parameter] | None = None
        self._build_optimizer()
        self._boost = {"left": 0, "lr_scale": 1.0, "replay_scale": 1.0}

    # ----------------------------------------------------------------- read-only views

    @property
    def model_version(self) -> int:
        """0 for a fresh learner, +1 per ``learn_many`` call that applied an update."""
        return self._version

    def tasks(self) -> list[str]:
        return list(self._labels)

    def labels(self, task: str) -> list[str]:
        """Labels of ``task`` in head index order ([] for an unknown task)."""
        return list(self._labels.get(task, []))

    def on_drift(self, task: str, *, updates: int = 20, lr_scale: float = 2.0,
                 replay_scale: float = 2.0) -> None:
        """Adapt to a detected drift in ``task``: for the next ``updates`` applied updates the
        learning rates are multiplied by ``lr_scale`` and the replay ratio by ``replay_scale``
        (more new-data plasticity, more old-data rehearsal against forgetting), then both
        return to their configured values. A new drift restarts the window."""
        if updates < 0 or lr_scale <= 0 or replay_scale < 0:
            raise ValueError("updates must be >= 0, lr_scale > 0 and replay_scale >= 0")
        self._boost = {"left": int(updates), "lr_scale": float(lr_scale),
                       "replay_scale": float(replay_scale), "task": task}
        for strategy in self.strategies:
            strategy.on_drift(self, task)

    @property
    def adapting(self) -> int:
        """Updates left in the current drift-adaptation window (0 when none)."""
        return self._boost["left"]

    def counters(self) -> dict:
        """Monotonic counters, JSON-serialisable (a copy)."""
        return copy.deepcopy(self._counters)

    # ----------------------------------------------------------------- predict / learn

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, H) pooled features on the CPU, float32, in eval mode, no grad."""
        self.model.eval()
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(texts), _PREDICT_CHUNK):
                out.append(self.model.encode(texts[i : i + _PREDICT_CHUNK]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.hidden_size)

    def pin_features(self, texts: Sequence[str], features: torch.Tensor | None = None) -> None:
        """Frozen encoder only: keep the features of ``texts`` (given, or encoded now) so that
        learning and predicting them never encodes them again (the benchmark's shared cache)."""
        if not self.config.frozen:
            raise ValueError("pin_features needs a frozen encoder (mode 'head')")
        self.features.pin(_check_texts("texts", texts), features)

    def predict_many(self, task: str, texts: Sequence[str]) -> list[Prediction]:
        """Most probable label and its softmax probability for each text."""
        _check_task(task)
        texts = _check_texts("texts", texts)
        version = self._version
        if not texts:
            return []
        labels = self._labels.get(task)
        if not labels:
            return [Prediction(None, 0.0, version) for _ in texts]
        head = self.model.head(task)
        self.model.eval()
        out: list[Prediction] = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(texts), _PREDICT_CHUNK):
                chunk = texts[i : i + _PREDICT_CHUNK]
                if self.config.frozen:
                    feats = self.features.get(chunk, store=False).to(self.device)  # (B, H)
                else:
                    feats = self.model.encode(chunk)                              # (B, H)
                probs = head(feats).float().softmax(dim=-1)                       # (B, N)
                conf, idx = probs.max(dim=-1)                                     # (B,), (B,)
                out.extend(
                    Prediction(labels[j], c, version) for j, c in zip(idx.tolist(), conf.tolist())
                )
        return out

    def learn_many(self, task: str, texts: Sequence[str], labels: Sequence[str]) -> UpdateStats:
        """One update on ``texts``/``labels`` of ``task`` plus replayed items of any task.

        Unseen labels grow the task's head first. Then ``steps_per_batch`` AdamW steps on
        the mean cross-entropy of new + replayed samples (each scored by its own task's
        head; replay only when a strategy replays) plus the strategies' terms, after which
        the new samples enter the replay memory and the version is bumped. A non-finite
        loss or gradient norm aborts the remaining steps without stepping; if no step was
        applied at all, the samples are not memorised and the version stays (the new
        labels, if any, keep their freshly grown, zero rows). Inputs are not mutated.
        """
        if self.config.frozen and self.device.type == "cpu":
            # Head-mode updates are a few tiny matmuls: OpenMP wake-ups across threads cost
            # more than the work (bench/NOTES.md: 4-6 ms -> 1.6 ms per update with
            # OMP_WAIT_POLICY=PASSIVE, equal otherwise). Prediction keeps every thread.
            with _torch_threads(1):
                return self._learn_many(task, texts, labels)
        return self._learn_many(task, texts, labels)

    def _learn_many(self, task: str, texts: Sequence[str], labels: Sequence[str]) -> UpdateStats:
        started = time.perf_counter()
        _check_task(task)
        texts = _check_texts("texts", texts)
        labels = _check_texts("labels", labels)
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} != {len(labels)}")
        n_new = len(texts)
        if n_new == 0:
            return UpdateStats(math.nan, 0, 0, self._version, time.perf_counter() - started, math.nan)
        cfg = self.config
        seen = self._counters["samples_seen"]
        seen[task] = seen.get(task, 0) + n_new
        sizes_before = {t: len(ls) for t, ls in self._labels.items()}
        new_classes = self._grow(task, labels)

        boost = self._boost if self._boost["left"] > 0 else None
        replay_ratio = self.memory.replay_ratio * (boost["replay_scale"] if boost else 1.0)
        replays = any(s.replays for s in self.strategies)
        replayed = self._sample_replay(round(replay_ratio * n_new)) if replays else []
        batch = Batch.build(task, texts, labels, replayed, new_classes, self._label_index, self.device)
        batch.extra["sizes_before"] = sizes_before
        for strategy in self.strategies:
            strategy.before_update(self, batch)

        work = self._local_batch(batch)  # the rows this process computes (all of them here)
        feats_frozen = None
        if cfg.frozen:
            # The encoder never changes: cached features, train the heads on them.
            if self.model.training:
                self.model.eval()
            feats_frozen = self.features.get(work.texts).to(self.device)  # (B, H)
        else:
            self.model.train()
            work.extra["tokens"] = self.model.tokenize(work.texts)  # input_ids: (B, T)
        params = self._trainable_params()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf

        losses: list[float] = []
        if boost and self.optimizer is not None:
            base_lrs = [g["lr"] for g in self.optimizer.param_groups]
            for g in self.optimizer.param_groups:
                g["lr"] *= boost["lr_scale"]
        loss_value = grad_norm = math.nan
        skipped = None
        for _ in range(cfg.steps_per_batch):
            loss = self._step_loss(work, feats_frozen, adversarial=cfg.adv_epsilon > 0)
            loss_value = self._loss_value(loss)
            if not math.isfinite(loss_value):
                skipped = "nonfinite_loss"
                self._abandon_step(loss)
                break
            loss.backward()
            if cfg.adv_epsilon > 0:
                fgm_backward(self, work, cfg.adv_epsilon)
            for strategy in self.strategies:
                strategy.after_backward(self, batch)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm) or grad_norm > cfg.max_grad_norm:
                skipped = "nonfinite_grad" if not math.isfinite(grad_norm) else "grad_norm"
                self.optimizer.zero_grad(set_to_none=True)
                break
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss_value)

        if boost and self.optimizer is not None:
            for g, lr in zip(self.optimizer.param_groups, base_lrs):
                g["lr"] = lr
        counters = self._counters
        counters["optimizer_steps"] += len(losses)
        if not losses:
            counters["skipped_updates"] += 1
            return UpdateStats(loss_value, n_new, len(replayed), self._version,
                               time.perf_counter() - started, grad_norm, skipped)
        self._merge_local(batch, work)
        stored = batch.store_logits.tolist() if batch.store_logits is not None else [None] * n_new
        self.replay.add(MemoryItem(task, x, y, None if z is None else tuple(z))
                        for x, y, z in zip(texts, labels, stored))
        if cfg.frozen and len(self.features) > len(self.replay) + _PRUNE_SLACK:
            # Amortised: rebuilding the keep-set costs O(memory) per call (0.45 ms at 4k items).
            self.features.prune(item.text for item in self.replay.items())
        for strategy in self.strategies:
            strategy.after_update(self, batch)
        counters["updates"] += 1
        counters["samples_replayed"] += len(replayed)
        self._version += 1
        if boost:
            boost["left"] -= 1
        return UpdateStats(sum(losses) / len(losses), n_new, len(replayed), self._version,
                           time.perf_counter() - started, grad_norm)

    # ----------------------------------------------------------------- update hooks
    # One process computes the whole batch; learner/distributed.py overrides these five so that
    # each rank computes its share of it (docs/distributed.md).

    def _sample_replay(self, n: int) -> list[MemoryItem]:
        return self.replay.sample(n)

    def _local_batch(self, batch: Batch) -> Batch:
        return batch

    def _step_loss(self, batch: Batch, feats_frozen: torch.Tensor | None, *,
                   adversarial: bool) -> torch.Tensor:
        """One step's loss: forward under autocast, cross-entropy, the strategies' terms."""
        with self._autocast():
            outputs = self._forward(batch, feats_frozen, adversarial=adversarial)
            loss = cross_entropy(batch, outputs, ace=self.config.bias_correction == "ace")
            for strategy in self.strategies:
                extra = strategy.loss(self, batch, outputs)
                if extra is not None:
                    loss = loss + extra
        return loss

    def _loss_value(self, loss: torch.Tensor) -> float:
        return loss.item()

    def _abandon_step(self, loss: torch.Tensor) -> None:
        """A step that is not applied (non-finite loss): nothing to undo in one process."""

    def _merge_local(self, batch: Batch, work: Batch) -> None:
        """What the strategies recorded on ``work`` is needed on ``batch`` (the same here)."""

    def _forward(self, batch: Batch, feats_frozen: torch.Tensor | None, *, adversarial: bool) -> Outputs:
        if feats_frozen is not None:
            feats = feats_frozen                                                # (B, H)
        elif adversarial:
            tokens = batch.extra["tokens"]
            embeds = self.model.word_embeddings(tokens["input_ids"])            # (B, T, H)
            if embeds.requires_grad:  # FGM follows the loss gradient w.r.t. the embeddings
                embeds.retain_grad()
            else:  # frozen embedding table (lora): make the looked-up rows a leaf that gets .grad
                embeds.requires_grad_(True)
            batch.extra["embeds"] = embeds
            feats = self.model.features(tokens, inputs_embeds=embeds)
        else:
            feats = self.model.features(batch.extra["tokens"])
        logits = {t: self.model.head(t)(feats[rows]) for t, rows in batch.rows.items()}  # (B_t, N_t)
        return Outputs(feats, logits)

    # ----------------------------------------------------------------- strategy helpers

    def named_trainable(self) -> dict[str, torch.Tensor]:
        """Trainable weights by stable name: ``encoder.*`` (unless frozen) and each head merged
        (``head.<task>.weight`` (N, H), ``head.<task>.bias`` (N,)), differentiable."""
        return state.named_tensors(self, grads=False)

    def named_grads(self) -> dict[str, torch.Tensor]:
        """Current ``.grad`` under the names of :meth:`named_trainable` (zeros where None)."""
        return state.named_tensors(self, grads=True)

    def frozen_encoder_copy(self) -> nn.Module:
        """A detached, eval-mode copy of the encoder (LwF's teacher)."""
        return copy.deepcopy(self.model.encoder).eval().requires_grad_(False)

    # ----------------------------------------------------------------- heads / optimizer

    def _grow(self, task: str, labels: Sequence[str]) -> bool:
        """Grow ``task``'s head by its unseen labels; True when a task or label was new."""
        opened = not self.model.has_head(task)
        if opened:
            self.model.add_head(task)
            self._labels[task] = []
            self._label_index[task] = {}
        index = self._label_index[task]
        new = [y for y in dict.fromkeys(labels) if y not in index]  # first-appearance order
        if not new:
            return opened
        weight, bias = self.model.head(task).grow(len(new))
        for y in new:
            index[y] = len(self._labels[task])
            self._labels[task].append(y)
        self._add_head_params(weight, bias)
        return True

    def _head_groups(self, weight: nn.Parameter, bias: nn.Parameter) -> list[dict]:
        cfg = self.config
        return [
            {"params": [weight], "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
            {"params": [bias], "lr": cfg.head_lr, "weight_decay": 0.0},
        ]

    def _trainable_params(self) -> list[nn.Parameter]:
        """What the optimizer steps (cached: rebuilt with the optimizer or a grown head)."""
        if self._params is None:
            self._params = [p for g in (self.optimizer.param_groups if self.optimizer else [])
                            for p in g["params"] if p.requires_grad]
        return self._params

    def _add_head_params(self, weight: nn.Parameter, bias: nn.Parameter) -> None:
        groups = self._head_groups(weight, bias)
        self._params = None
        if self.optimizer is None:  # frozen encoder and no head yet: nothing was trainable
            self.optimizer = torch.optim.AdamW(groups, lr=self.config.head_lr)
            return
        for group in groups:
            self.optimizer.add_param_group(group)

    def _build_optimizer(self) -> None:
        """A fresh AdamW over the encoder (unless frozen) and every head chunk."""
        cfg = self.config
        groups = [] if cfg.frozen else param_groups(self.model.encoder, cfg.lr, cfg.weight_decay)
        for task in self._labels:
            head = self.model.head(task)
            for weight, bias in zip(head.weights, head.biases):
                groups += self._head_groups(weight, bias)
        self._params = None
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr) if groups else None

    # ----------------------------------------------------------------- checkpoint state

    def _mode(self) -> str:
        return "head" if self.config.frozen else self.config.mode

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable encoder tensors (``encoder.*``: all in ``full`` mode, the LoRA adapters in
        ``lora`` mode, none with a frozen encoder), merged head tensors (``head.<task>.weight``,
        ``head.<task>.bias``) and strategy tensors (``strategy.<name>.<key>``: Fisher, anchors,
        teacher), as contiguous CPU copies ready for ``safetensors``."""
        return state.learner_tensors(self)

    def metadata(self) -> dict:
        """JSON-serialisable description that, with :meth:`state_dict`, rebuilds the learner."""
        return state.learner_metadata(self)

    def load(self, tensors: dict[str, torch.Tensor], metadata: dict, memory_state: dict) -> None:
        """Replace this learner's model, labels, memory, strategy state, counters and version.

        Everything is checked before anything changes, so a ``ValueError`` leaves the
        learner as it was. The optimizer is rebuilt fresh (its Adam moments are not
        checkpointed: they would double the checkpoint size and re-warm within a few
        updates), and heads come back as single chunks. The torch RNG (dropout) is not
        restored. Hyper-parameters keep this learner's config, not the checkpoint's; a
        strategy the checkpoint has no state for starts fresh.
        """
        state.load_learner(self, tensors, metadata, memory_state)

    def __repr__(self) -> str:
        return (f"Learner(model={self.model.path!r}, device={str(self.device)!r}, "
                f"version={self._version}, tasks={self.tasks()}, memory={len(self.replay)})")
