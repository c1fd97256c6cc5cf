"""Learning without Forgetting (Li & Hoiem, TPAMI 2017), streaming form.

At each consolidation (a batch opening a new task or label, or a drift) a frozen copy of
the model is taken; afterwards every update also distils, on all rows of the batch, the
teacher's softened outputs of each head it knew into the student's same head (its old
columns), KL at temperature ``T`` scaled by ``T^2``. With a frozen encoder only the heads
are copied and the cached features are reused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Outputs, Strategy

__all__ = ["LwF"]


class LwF(Strategy):
    name = "lwf"
    replays = False

    def __init__(self, alpha: float = 3.0, temperature: float = 2.0) -> None:
        self.alpha = alpha
        self.temperature = temperature
        super().__init__()

    def _reset(self) -> None:
        self._heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # task -> (N, H), (N,)
        self._encoder = None  # frozen copy of the encoder, or None with a frozen encoder

    def before_update(self, learner, batch: Batch) -> None:
        if batch.new_classes:
            self._snapshot(learner, batch.extra.get("sizes_before"))

    def on_drift(self, learner, task: str) -> None:
        self._snapshot(learner)

    def _snapshot(self, learner, sizes: dict[str, int] | None = None) -> None:
        # The labels this very batch opened have untrained zero rows: not worth distilling.
        sizes = sizes if sizes is not None else {t: len(learner.labels(t)) for t in learner.tasks()}
        self._heads = {t: (learner.model.head(t).weight[:n].clone(), learner.model.head(t).bias[:n].clone())
                       for t, n in sizes.items() if n > 0}
        self._encoder = None if learner.config.frozen else learner.frozen_encoder_copy()

    def loss(self, learner, batch: Batch, outputs: Outputs) -> torch.Tensor | None:
        if not self._heads or self.alpha == 0:
            return None
        if self._encoder is None:
            teacher_feats = outputs.features.detach()  # (B, H)
        else:
            teacher_feats = batch.extra.get("lwf_feats")
            if teacher_feats is None:
                with torch.no_grad():
                    teacher_feats = learner.model.features(batch.extra["tokens"], encoder=self._encoder)
                batch.extra["lwf_feats"] = teacher_feats
        T = self.temperature
        total = None
        for t, (weight, bias) in self._heads.items():
            if t not in outputs.logits and not learner.model.has_head(t):
                continue
            student = learner.model.head(t)(outputs.features)[:, : weight.shape[0]]  # (B, N_old)
            teacher = F.linear(teacher_feats.float(), weight.to(student.device), bias.to(student.device))
            kl = F.kl_div(F.log_softmax(student.float() / T, dim=-1), F.softmax(teacher / T, dim=-1),
                          reduction="sum") / batch.loss_divisor * T * T  # batchmean
            total = kl if total is None else total + kl
        return None if total is None else self.alpha * total

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        for t, (w, b) in self._heads.items():
            tensors[f"head/{t}/weight"] = w.cpu().contiguous()
            tensors[f"head/{t}/bias"] = b.cpu().contiguous()
        if self._encoder is not None:
            from ..learner import trainable_encoder_state

            tensors.update({f"encoder/{k}": v for k, v in
                            trainable_encoder_state(self._encoder, self._mode_of(self._encoder)).items()})
        return tensors, {"tasks": list(self._heads), "temperature": self.temperature}

    @staticmethod
    def _mode_of(encoder) -> str:
        return "lora" if any("lora_" in n for n, _ in encoder.named_parameters()) else "full"

    def load_state_dict(self, learner, tensors: dict[str, torch.Tensor], state: dict) -> None:
        heads = {}
        for t in state.get("tasks", []):
            try:
                heads[t] = (tensors[f"head/{t}/weight"].float().clone(), tensors[f"head/{t}/bias"].float().clone())
            except KeyError as e:
                raise ValueError(f"lwf state lacks tensor {e}") from None
        encoder = None
        enc_state = {k.removeprefix("encoder/"): v for k, v in tensors.items() if k.startswith("encoder/")}
        if heads and not learner.config.frozen:
            encoder = learner.frozen_encoder_copy()
            if enc_state:
                encoder.load_state_dict(enc_state, strict=False)
        self._heads, self._encoder = heads, encoder
