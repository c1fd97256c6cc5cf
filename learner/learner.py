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
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LearnerConfig, MemoryConfig
from .memory import MemoryItem, ReplayMemory
from .model import GrowingHead, TextClassifier, default_model_path, param_groups, resolve_device

__all__ = ["Learner", "Prediction", "UpdateStats"]

_PREDICT_CHUNK = 256  # texts per forward pass in predict_many; bounds activation memory


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


def _check_texts(name: str, values: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; iterating it would learn one label per character.
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str, got a single {type(values).__name__}")
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{name} must contain only str, got {type(v).__name__}")
    return values


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
        if cfg.freeze_encoder:
            self.model.encoder.requires_grad_(False)
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
                feats = self.model.encode(texts[i : i + _PREDICT_CHUNK])  # (B, H)
                probs = head(feats).float().softmax(dim=-1)               # (B, N)
                conf, idx = probs.max(dim=-1)                             # (B,), (B,)
                out.extend(
                    Prediction(labels[j], c, version) for j, c in zip(idx.tolist(), conf.tolist())
                )
        return out

    def learn_many(self, task: str, texts: Sequence[str], labels: Sequence[str]) -> UpdateStats:
        """One update on ``texts``/``labels`` of ``task`` plus replayed items of any task.

        Unseen labels grow the task's head first. Then ``steps_per_batch`` AdamW steps on
        the mean cross-entropy of new + replayed samples (each scored by its own task's
        head), after which the new samples enter the replay memory and the version is
        bumped. A non-finite loss or gradient norm aborts the remaining steps without
        stepping; if no step was applied at all, the samples are not memorised and the
        version stays (the new labels, if any, keep their freshly grown, zero rows).
        Inputs are not mutated.
        """
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
        self._grow(task, labels)

        # Batch: the new samples, then replayed ones of any task, each with its own head.
        boost = self._boost if self._boost["left"] > 0 else None
        replay_ratio = self.memory.replay_ratio * (boost["replay_scale"] if boost else 1.0)
        replayed = self.replay.sample(round(replay_ratio * n_new))
        batch_texts = texts + [m.text for m in replayed]
        batch_tasks = [task] * n_new + [m.task for m in replayed]
        batch_labels = labels + [m.label for m in replayed]
        B = len(batch_texts)
        rows_by_task: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in dict.fromkeys(batch_tasks):
            rows = [i for i, bt in enumerate(batch_tasks) if bt == t]
            targets = [self._label_index[t][batch_labels[i]] for i in rows]
            rows_by_task[t] = (
                torch.tensor(rows, device=self.device),     # (B_t,)
                torch.tensor(targets, device=self.device),  # (B_t,)
            )
        tokens = self.model.tokenize(batch_texts)  # input_ids: (B, T)

        frozen = cfg.freeze_encoder
        feats_frozen = None
        if frozen:
            # The encoder never changes: encode once, train the heads on fixed features.
            self.model.eval()
            with torch.no_grad(), self._autocast():
                feats_frozen = self.model.features(tokens)  # (B, H)
        else:
            self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf

        losses: list[float] = []
        if boost and self.optimizer is not None:
            base_lrs = [g["lr"] for g in self.optimizer.param_groups]
            for g in self.optimizer.param_groups:
                g["lr"] *= boost["lr_scale"]
        loss_value = grad_norm = math.nan
        for _ in range(cfg.steps_per_batch):
            with self._autocast():
                feats = feats_frozen if frozen else self.model.features(tokens)  # (B, H)
                loss = feats.new_zeros((), dtype=torch.float32)
                for t, (rows, targets) in rows_by_task.items():
                    logits = self.model.head(t)(feats[rows])  # (B_t, N_t)
                    loss = loss + F.cross_entropy(logits.float(), targets, reduction="sum")
                loss = loss / B  # mean over all B samples, whatever their task
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                break
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm):
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
                               time.perf_counter() - started, grad_norm)
        self.replay.add(MemoryItem(task, x, y) for x, y in zip(texts, labels))
        counters["updates"] += 1
        counters["samples_replayed"] += len(replayed)
        self._version += 1
        if boost:
            boost["left"] -= 1
        return UpdateStats(sum(losses) / len(losses), n_new, len(replayed), self._version,
                           time.perf_counter() - started, grad_norm)

    # ----------------------------------------------------------------- heads / optimizer

    def _grow(self, task: str, labels: Sequence[str]) -> None:
        if not self.model.has_head(task):
            self.model.add_head(task)
            self._labels[task] = []
            self._label_index[task] = {}
        index = self._label_index[task]
        new = [y for y in dict.fromkeys(labels) if y not in index]  # first-appearance order
        if not new:
            return
        weight, bias = self.model.head(task).grow(len(new))
        for y in new:
            index[y] = len(self._labels[task])
            self._labels[task].append(y)
        self._add_head_params(weight, bias)

    def _head_groups(self, weight: nn.Parameter, bias: nn.Parameter) -> list[dict]:
        cfg = self.config
        return [
            {"params": [weight], "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
            {"params": [bias], "lr": cfg.head_lr, "weight_decay": 0.0},
        ]

    def _add_head_params(self, weight: nn.Parameter, bias: nn.Parameter) -> None:
        groups = self._head_groups(weight, bias)
        if self.optimizer is None:  # frozen encoder and no head yet: nothing was trainable
            self.optimizer = torch.optim.AdamW(groups, lr=self.config.head_lr)
            return
        for group in groups:
            self.optimizer.add_param_group(group)

    def _build_optimizer(self) -> None:
        """A fresh AdamW over the encoder (unless frozen) and every head chunk."""
        cfg = self.config
        groups = [] if cfg.freeze_encoder else param_groups(self.model.encoder, cfg.lr, cfg.weight_decay)
        for task in self._labels:
            head = self.model.head(task)
            for weight, bias in zip(head.weights, head.biases):
                groups += self._head_groups(weight, bias)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr) if groups else None

    # ----------------------------------------------------------------- checkpoint state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights (``encoder.*``) and merged head tensors (``head.<task>.weight``,
        ``head.<task>.bias``), as contiguous CPU copies ready for ``safetensors``."""
        out = {
            f"encoder.{k}": v.detach().to("cpu", copy=True).contiguous()
            for k, v in self.model.encoder.state_dict().items()
        }
        for task in self._labels:
            head = self.model.head(task)
            out[f"head.{task}.weight"] = head.weight.to("cpu", copy=True).contiguous()  # (N, H)
            out[f"head.{task}.bias"] = head.bias.to("cpu", copy=True).contiguous()      # (N,)
        return out

    def metadata(self) -> dict:
        """JSON-serialisable description that, with :meth:`state_dict`, rebuilds the learner."""
        return {
            "model_version": self._version,
            "labels": {task: list(labels) for task, labels in self._labels.items()},
            "config": asdict(self.config),
            "memory_config": asdict(self.memory),
            "counters": self.counters(),
            "hidden_size": self.model.hidden_size,
        }

    def load(self, state: dict[str, torch.Tensor], metadata: dict, memory_state: dict) -> None:
        """Replace this learner's model, labels, memory, counters and version.

        Everything is checked before anything changes, so a ``ValueError`` leaves the
        learner as it was. The optimizer is rebuilt fresh (its Adam moments are not
        checkpointed: they would double the checkpoint size and re-warm within a few
        updates), and heads come back as single chunks. The torch RNG (dropout) is not
        restored. Hyper-parameters keep this learner's config, not the checkpoint's.
        """
        labels = metadata.get("labels")
        if not isinstance(labels, dict) or not all(
            isinstance(t, str) and t and isinstance(ls, list) and all(isinstance(y, str) for y in ls)
            for t, ls in labels.items()
        ):
            raise ValueError("metadata labels must map task names to lists of str")
        for task, task_labels in labels.items():
            if len(set(task_labels)) != len(task_labels):
                raise ValueError(f"metadata labels of task {task!r} hold duplicates")
        version = metadata.get("model_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"metadata model_version must be an int >= 0, got {version!r}")

        encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        current = self.model.encoder.state_dict()
        if encoder_state.keys() != current.keys():
            missing = sorted(current.keys() - encoder_state.keys())[:5]
            unexpected = sorted(encoder_state.keys() - current.keys())[:5]
            raise ValueError(f"checkpoint encoder does not match {self.model.path}: "
                             f"missing {missing}, unexpected {unexpected}")
        for k, v in encoder_state.items():
            if v.shape != current[k].shape:
                raise ValueError(f"checkpoint encoder tensor {k} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(current[k].shape)}")

        heads: dict[str, GrowingHead] = {}
        for task, task_labels in labels.items():
            try:
                weight, bias = state[f"head.{task}.weight"], state[f"head.{task}.bias"]
            except KeyError as e:
                raise ValueError(f"checkpoint lacks head tensor {e}") from None
            if tuple(weight.shape) != (len(task_labels), self.model.hidden_size) or tuple(bias.shape) != (len(task_labels),):
                raise ValueError(f"checkpoint head {task!r} has shape {tuple(weight.shape)}, "
                                 f"expected ({len(task_labels)}, {self.model.hidden_size})")
            heads[task] = GrowingHead.from_merged(weight.float(), bias.float())

        replay = ReplayMemory(capacity=self.memory.capacity, seed=self.memory.seed)
        replay.load_state_dict(memory_state)
        for task, label in replay.class_sizes():
            if label not in labels.get(task, ()):
                raise ValueError(f"memory holds ({task!r}, {label!r}) which no head knows")

        counters = self._counters_from(metadata.get("counters", {}))

        # Everything checked: commit.
        self.model.encoder.load_state_dict(encoder_state, strict=True)
        self.model.heads = nn.ModuleDict()
        for task, head in heads.items():
            self.model.add_head(task, head)
        self._labels = {task: list(ls) for task, ls in labels.items()}
        self._label_index = {task: {y: i for i, y in enumerate(ls)} for task, ls in labels.items()}
        self.replay = replay
        self._counters = counters
        self._version = version
        self._build_optimizer()

    def _counters_from(self, raw: dict) -> dict:
        try:
            counters = {
                key: int(raw.get(key, 0))
                for key in ("updates", "optimizer_steps", "skipped_updates", "samples_replayed")
            }
            counters["samples_seen"] = {str(t): int(n) for t, n in dict(raw.get("samples_seen", {})).items()}
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"metadata counters are malformed: {e}") from None
        return counters

    def __repr__(self) -> str:
        return (f"Learner(model={self.model.path!r}, device={str(self.device)!r}, "
                f"version={self._version}, tasks={self.tasks()}, memory={len(self.replay)})")
