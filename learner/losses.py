"""The learner's base loss (cross-entropy, with ER-ACE bias correction) and FGM."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .strategies import Batch, Outputs

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["cross_entropy", "fgm_backward"]


def cross_entropy(batch: Batch, outputs: Outputs, *, ace: bool) -> torch.Tensor:
    """Mean cross-entropy over all B rows, each row scored by its own task's head.

    With ``ace`` (ER-ACE, Caccia et al., "New Insights on Reducing Abrupt Representation
    Change in Online Continual Learning", ICLR 2022) the *new* rows compete only among the
    labels present in the new samples, so learning a new class does not push the logits of
    absent old classes down (the bias toward the newest classes); replayed rows use all
    labels. Without replay there is nothing to balance and plain cross-entropy is used. A
    rank's shard (``batch.whole``) is balanced on the labels of the whole batch.
    """
    whole = batch.whole if batch.whole is not None else batch
    ace = ace and len(whole.replayed) > 0
    loss = outputs.features.new_zeros((), dtype=torch.float32)
    for t, logits in outputs.logits.items():
        logits, targets = logits.float(), batch.targets[t]  # (B_t, N_t), (B_t,)
        if ace and t == batch.task:
            n = batch.n_new  # the new rows come first among the task's rows
            present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            present[whole.targets[t][:whole.n_new]] = True
            masked = logits[:n].masked_fill(~present, float("-inf"))
            loss = loss + F.cross_entropy(masked, targets[:n], reduction="sum")
            if logits.shape[0] > n:
                loss = loss + F.cross_entropy(logits[n:], targets[n:], reduction="sum")
        else:
            loss = loss + F.cross_entropy(logits, targets, reduction="sum")
    return loss / batch.loss_divisor


def fgm_backward(learner: Learner, batch: Batch, epsilon: float) -> None:
    """FGM (Miyato et al., "Adversarial Training Methods for Semi-Supervised Text
    Classification", ICLR 2017): add ``epsilon`` times the loss gradient w.r.t. the word
    embeddings, L2-normalised per text, and backpropagate the cross-entropy of that
    perturbed batch too (gradients accumulate with the clean ones)."""
    embeds = batch.extra.pop("embeds", None)
    if embeds is None or embeds.grad is None:
        return
    grad = embeds.grad                                                       # (B, T, H)
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]       # (B, 1, 1)
    delta = (epsilon * grad / norm).detach()
    model, tokens = learner.model, batch.extra["tokens"]
    with learner._autocast():
        feats = model.features(tokens, inputs_embeds=model.word_embeddings(tokens["input_ids"]) + delta)
        logits = {t: model.head(t)(feats[rows]) for t, rows in batch.rows.items()}
        adv_loss = cross_entropy(batch, Outputs(feats, logits), ace=learner.config.bias_correction == "ace")
    if math.isfinite(adv_loss.item()):
        adv_loss.backward()
