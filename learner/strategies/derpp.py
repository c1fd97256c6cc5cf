"""DER++ (Buzzega et al., "Dark Experience for General Continual Learning", NeurIPS 2020).

New samples enter the memory with the logits the model gave them when it learned them;
replayed samples are trained on their labels (the cross-entropy the learner already adds,
i.e. DER++'s beta = 1) and on matching those stored logits (weight ``alpha``). A head that
grew since is compared on the classes it had then (the first columns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Outputs, Strategy

__all__ = ["DerPP"]


class DerPP(Strategy):
    name = "derpp"
    replays = True

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha
        super().__init__()

    def loss(self, learner, batch: Batch, outputs: Outputs) -> torch.Tensor | None:
        if batch.store_logits is None:  # first step: the logits to remember, pre-update
            own = outputs.logits.get(batch.task)  # a rank's shard may hold none of the task's rows
            batch.store_logits = (own[: batch.n_new].detach().float().cpu() if own is not None else
                                  torch.zeros(0, learner.model.head(batch.task).num_labels))
        terms = []
        for t, rows in batch.rows.items():
            logits = outputs.logits[t]  # (B_t, N_t)
            for pos, row in enumerate(rows.tolist()):
                if row < batch.n_new:
                    continue
                stored = batch.replayed[row - batch.n_new].logits
                if stored is None:
                    continue
                n = min(len(stored), logits.shape[1])
                target = torch.tensor(stored[:n], device=logits.device)  # (n,)
                terms.append(F.mse_loss(logits[pos, :n].float(), target, reduction="mean"))
        if not terms:
            return None
        return self.alpha * torch.stack(terms).sum() / batch.loss_divisor
