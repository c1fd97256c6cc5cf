"""Checkpoint state of a :class:`~learner.learner.Learner`: tensors, metadata, and loading.

Kept apart from the training loop; :class:`~learner.checkpoints.CheckpointManager` writes
the tensors to safetensors and the metadata to JSON.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from torch import nn

from .memory import ReplayMemory
from .model import GrowingHead
from .strategies import build_strategies

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["learner_metadata", "learner_tensors", "load_learner", "named_tensors"]


def named_tensors(learner: Learner, *, grads: bool) -> dict[str, torch.Tensor]:
    """Trainable weights (or their ``.grad``, zeros where None) under names that survive a
    checkpoint: ``encoder.<name>`` and each head's chunks merged into ``head.<task>.weight``
    (N, H) / ``head.<task>.bias`` (N,). EWC keys its Fisher and anchors by them."""
    def pick(p: torch.Tensor) -> torch.Tensor:
        if not grads:
            return p
        return p.grad if p.grad is not None else torch.zeros_like(p)

    out = {}
    if not learner.config.frozen:
        out = {f"encoder.{n}": pick(p) for n, p in learner.model.encoder.named_parameters() if p.requires_grad}
    for task in learner.tasks():
        head = learner.model.head(task)
        out[f"head.{task}.weight"] = torch.cat([pick(w) for w in head.weights])
        out[f"head.{task}.bias"] = torch.cat([pick(b) for b in head.biases])
    return out


def learner_tensors(learner: Learner) -> dict[str, torch.Tensor]:
    from .learner import trainable_encoder_state

    out = {f"encoder.{k}": v for k, v in trainable_encoder_state(learner.model.encoder, learner._mode()).items()}
    for task in learner.tasks():
        head = learner.model.head(task)
        out[f"head.{task}.weight"] = head.weight.to("cpu", copy=True).contiguous()  # (N, H)
        out[f"head.{task}.bias"] = head.bias.to("cpu", copy=True).contiguous()      # (N,)
    for strategy in learner.strategies:
        tensors, _ = strategy.state_dict()
        out.update({f"strategy.{strategy.name}.{k}": v.to("cpu").contiguous() for k, v in tensors.items()})
    return out


def learner_metadata(learner: Learner) -> dict:
    return {
        "model_version": learner.model_version,
        "labels": {task: learner.labels(task) for task in learner.tasks()},
        "config": asdict(learner.config),
        "memory_config": asdict(learner.memory),
        "counters": learner.counters(),
        "hidden_size": learner.model.hidden_size,
        "mode": learner._mode(),
        "strategies": {s.name: s.state_dict()[1] for s in learner.strategies},
    }


def load_learner(learner: Learner, state: dict[str, torch.Tensor], metadata: dict, memory_state: dict) -> None:
    from .learner import trainable_encoder_state

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
    mode = learner._mode()
    if metadata.get("mode", mode) != mode:
        raise ValueError(f"checkpoint was written in mode {metadata.get('mode')!r}, this learner runs {mode!r}")

    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    current = trainable_encoder_state(learner.model.encoder, mode)
    if encoder_state.keys() != current.keys():
        missing = sorted(current.keys() - encoder_state.keys())[:5]
        unexpected = sorted(encoder_state.keys() - current.keys())[:5]
        raise ValueError(f"checkpoint encoder does not match {learner.model.path}: "
                         f"missing {missing}, unexpected {unexpected}")
    for k, v in encoder_state.items():
        if v.shape != current[k].shape:
            raise ValueError(f"checkpoint encoder tensor {k} has shape {tuple(v.shape)}, "
                             f"expected {tuple(current[k].shape)}")

    hidden = learner.model.hidden_size
    heads: dict[str, GrowingHead] = {}
    for task, task_labels in labels.items():
        try:
            weight, bias = state[f"head.{task}.weight"], state[f"head.{task}.bias"]
        except KeyError as e:
            raise ValueError(f"checkpoint lacks head tensor {e}") from None
        if tuple(weight.shape) != (len(task_labels), hidden) or tuple(bias.shape) != (len(task_labels),):
            raise ValueError(f"checkpoint head {task!r} has shape {tuple(weight.shape)}, "
                             f"expected ({len(task_labels)}, {hidden})")
        heads[task] = GrowingHead.from_merged(weight.float(), bias.float())

    replay = ReplayMemory(capacity=learner.memory.capacity, seed=learner.memory.seed)
    replay.load_state_dict(memory_state)
    for task, label in replay.class_sizes():
        if label not in labels.get(task, ()):
            raise ValueError(f"memory holds ({task!r}, {label!r}) which no head knows")

    counters = _counters_from(metadata.get("counters", {}))

    strategies = build_strategies(learner.config)
    saved = metadata.get("strategies") or {}
    for strategy in strategies:
        if strategy.name not in saved:
            continue
        prefix = f"strategy.{strategy.name}."
        tensors = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        strategy.load_state_dict(learner, tensors, saved[strategy.name])

    # Everything checked: commit.
    learner.model.encoder.load_state_dict(encoder_state, strict=False)
    learner.model.heads = nn.ModuleDict()
    for task, head in heads.items():
        learner.model.add_head(task, head)
    learner._labels = {task: list(ls) for task, ls in labels.items()}
    learner._label_index = {task: {y: i for i, y in enumerate(ls)} for task, ls in labels.items()}
    learner.replay = replay
    learner.strategies = strategies
    learner.features.clear()
    learner._counters = counters
    learner._version = version
    learner._build_optimizer()


def _counters_from(raw: dict) -> dict:
    try:
        counters = {
            key: int(raw.get(key, 0))
            for key in ("updates", "optimizer_steps", "skipped_updates", "samples_replayed")
        }
        counters["samples_seen"] = {str(t): int(n) for t, n in dict(raw.get("samples_seen", {})).items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"metadata counters are malformed: {e}") from None
    return counters
