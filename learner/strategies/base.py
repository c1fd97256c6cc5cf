"""What a strategy sees of one update, and the hooks it may implement.

The learner drives a flat loop (see :meth:`learner.learner.Learner.learn_many`)::

    before_update(batch)                       once, before the first step
    for step in steps_per_batch:
        outputs = forward(batch)
        loss = cross_entropy + sum(s.loss(batch, outputs))
        backward; after_backward(batch)        gradients are in .grad here
        clip; step; zero_grad
    after_update(batch)                        once, if a step was applied
    on_drift(task)                             when the drift detector fires

Every hook receives the learner; strategies keep their learned state in ``_reset()``
and hand it out as ``(tensors, json)`` for the checkpoint's safetensors and meta.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..memory import MemoryItem

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["Batch", "Outputs", "Strategy"]


@dataclass
class Batch:
    """One update: ``n_new`` new samples of ``task`` first, then the replayed ones.

    ``rows[t]`` are the batch rows scored by task ``t``'s head and ``targets[t]`` their label
    indices, both (B_t,) tensors; ``new_classes`` says whether this batch opened a task or
    a label (a task boundary, as far as a stream has any).
    """

    task: str
    texts: list[str]
    tasks: list[str]
    labels: list[str]
    n_new: int
    replayed: list[MemoryItem]
    rows: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    new_classes: bool
    # Set by a strategy that wants the new samples remembered with their logits (DER++).
    store_logits: torch.Tensor | None = None  # (n_new, N_task)
    extra: dict = field(default_factory=dict)
    # A rank's share of a batch (learner/distributed.py): the batch it is cut from, and what
    # its per-sample terms are divided by instead of len(texts) (see :meth:`shard`).
    whole: Batch | None = None
    divisor: float | None = None

    @property
    def loss_divisor(self) -> float:
        """Per-sample loss terms are summed, then divided by this: the batch's size, so the
        loss is a mean (or what :meth:`shard` set)."""
        return self.divisor if self.divisor is not None else len(self.texts)

    def shard(self, lo: int, hi: int, divisor: float) -> Batch:
        """Rows ``lo:hi`` of this batch, as a batch of their own (new ones still first).

        With ``W`` ranks each holding a shard with ``divisor = B / W``, DDP's mean of their
        gradients is the gradient of the whole batch's loss (sum of the per-sample terms / B).

        >>> b = Batch.build("t", ["a", "b"], ["x", "y"], [MemoryItem("u", "c", "z")], False,
        ...                 {"t": {"x": 0, "y": 1}, "u": {"z": 0}}, torch.device("cpu"))
        >>> s = b.shard(1, 3, divisor=1.5)
        >>> s.texts, s.n_new, [m.text for m in s.replayed], {t: r.tolist() for t, r in s.rows.items()}
        (['b', 'c'], 1, ['c'], {'t': [0], 'u': [1]})
        """
        rows, targets = {}, {}
        for t, r in self.rows.items():
            keep = (r >= lo) & (r < hi)
            if bool(keep.any()):
                rows[t], targets[t] = r[keep] - lo, self.targets[t][keep]
        n = self.n_new
        return Batch(self.task, self.texts[lo:hi], self.tasks[lo:hi], self.labels[lo:hi],
                     max(0, min(hi, n) - lo), self.replayed[max(0, lo - n):max(0, hi - n)],
                     rows, targets, self.new_classes, whole=self, divisor=divisor)

    @classmethod
    def build(cls, task: str, texts: list[str], labels: list[str], replayed: list[MemoryItem],
              new_classes: bool, label_index: dict[str, dict[str, int]], device: torch.device) -> Batch:
        """The new samples of ``task`` then the replayed ones, grouped by the head scoring them."""
        batch_texts = texts + [m.text for m in replayed]
        batch_tasks = [task] * len(texts) + [m.task for m in replayed]
        batch_labels = labels + [m.label for m in replayed]
        rows, targets = {}, {}
        for t in dict.fromkeys(batch_tasks):
            idx = [i for i, bt in enumerate(batch_tasks) if bt == t]
            rows[t] = torch.tensor(idx, device=device)                                      # (B_t,)
            targets[t] = torch.tensor([label_index[t][batch_labels[i]] for i in idx], device=device)  # (B_t,)
        return cls(task, batch_texts, batch_tasks, batch_labels, len(texts), replayed, rows, targets, new_classes)


@dataclass
class Outputs:
    """Forward pass of one step: pooled features (B, H) and logits per task (B_t, N_t)."""

    features: torch.Tensor
    logits: dict[str, torch.Tensor]


class Strategy:
    """No-op base; subclasses override the hooks they need."""

    name = "base"
    replays = False  # does the learner mix replayed samples into each batch?

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        pass

    def before_update(self, learner: Learner, batch: Batch) -> None:
        pass

    def loss(self, learner: Learner, batch: Batch, outputs: Outputs) -> torch.Tensor | None:
        """Extra loss term (a scalar tensor), or None."""
        return None

    def after_backward(self, learner: Learner, batch: Batch) -> None:
        pass

    def after_update(self, learner: Learner, batch: Batch) -> None:
        pass

    def on_drift(self, learner: Learner, task: str) -> None:
        pass

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json_state)``; tensors are contiguous CPU copies."""
        return {}, {}

    def load_state_dict(self, learner: Learner, tensors: dict[str, torch.Tensor], state: dict) -> None:
        pass
