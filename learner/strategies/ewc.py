"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018), diagonal Fisher.

A stream has no task ends, so a *consolidation* happens whenever a batch opens a new task
or label, and on drift: the Fisher estimated since the last consolidation (the running
mean of squared gradients, normalised to mean 1 so ``lambda`` does not depend on the
model size) is folded into the total with decay ``gamma``, and the current weights become
the anchor. The penalty ``lambda / 2 * sum F (theta - anchor)^2`` then holds every weight
that mattered near where it was. Heads are seen merged (``head.<task>.weight``), so a
head that grew is penalised on its old rows only.
"""

from __future__ import annotations

import torch

from .base import Batch, Outputs, Strategy

__all__ = ["OnlineEWC"]


class OnlineEWC(Strategy):
    name = "ewc"
    replays = False

    def __init__(self, lam: float = 0.01, gamma: float = 0.9) -> None:
        self.lam = lam
        self.gamma = gamma
        super().__init__()

    def _reset(self) -> None:
        self._fisher: dict[str, torch.Tensor] = {}
        self._anchor: dict[str, torch.Tensor] = {}
        self._running: dict[str, torch.Tensor] = {}
        self._count = 0

    def before_update(self, learner, batch: Batch) -> None:
        if batch.new_classes:
            self._consolidate(learner)

    def on_drift(self, learner, task: str) -> None:
        self._consolidate(learner)

    def _consolidate(self, learner) -> None:
        if not self._count:
            return
        total = sum(float(v.sum()) for v in self._running.values())
        numel = sum(v.numel() for v in self._running.values())
        scale = numel / total if total > 0 else 0.0  # mean importance 1
        for name, run in self._running.items():
            new = run * scale
            old = self._fisher.get(name)
            if old is not None:
                new = new.clone()
                n = min(old.shape[0], new.shape[0])
                new[:n] += self.gamma * old[:n]
            self._fisher[name] = new
        self._anchor = {k: v.detach().float().cpu().clone() for k, v in learner.named_trainable().items()}
        self._running, self._count = {}, 0

    def loss(self, learner, batch: Batch, outputs: Outputs) -> torch.Tensor | None:
        if not self._fisher or self.lam == 0:
            return None
        current = learner.named_trainable()
        penalty = None
        for name, fisher in self._fisher.items():
            value, anchor = current.get(name), self._anchor.get(name)
            if value is None or anchor is None:
                continue
            n = min(fisher.shape[0], anchor.shape[0], value.shape[0])
            diff = value[:n].float() - anchor[:n].to(value.device)
            term = (fisher[:n].to(value.device) * diff.pow(2)).sum()
            penalty = term if penalty is None else penalty + term
        return None if penalty is None else 0.5 * self.lam * penalty

    def after_backward(self, learner, batch: Batch) -> None:
        for name, grad in learner.named_grads().items():
            sq = grad.detach().float().pow(2).cpu()
            run = self._running.get(name)
            if run is None or run.shape != sq.shape:  # a grown head: restart its estimate
                self._running[name] = sq
            else:
                run.add_(sq)
        self._count += 1

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        for prefix, table in (("fisher", self._fisher), ("anchor", self._anchor), ("running", self._running)):
            tensors.update({f"{prefix}/{k}": v.contiguous() for k, v in table.items()})
        return tensors, {"count": self._count, "lambda": self.lam, "gamma": self.gamma}

    def load_state_dict(self, learner, tensors: dict[str, torch.Tensor], state: dict) -> None:
        tables: dict[str, dict[str, torch.Tensor]] = {"fisher": {}, "anchor": {}, "running": {}}
        for key, value in tensors.items():
            prefix, _, name = key.partition("/")
            if prefix not in tables:
                raise ValueError(f"ewc state has unexpected tensor {key!r}")
            tables[prefix][name] = value.float().clone()
        self._fisher, self._anchor, self._running = tables["fisher"], tables["anchor"], tables["running"]
        self._count = int(state.get("count", 0))
