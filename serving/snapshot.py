"""The serving copy of a model: one version, for inference only.

A :class:`ModelSnapshot` is built from an :class:`~lifecycle.publishing.Artifact` (what the
trainer published) over the replica's own copy of the base encoder, and never changes after:
a new version is a new snapshot, swapped in by reference between two batches, so an
in-flight request finishes on the version it started with. Stream predictions, ``/predict``
and ``/explain`` all go through :meth:`ModelSnapshot.score` — one code path.

In ``head`` mode a snapshot shares the (frozen, never trained) base encoder and owns only its
heads, so a swap costs a copy of the heads; in ``lora`` and ``full`` modes it owns a copy of
the encoder with the version's weights loaded.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from learner.model import GrowingHead, TextClassifier

if TYPE_CHECKING:
    from lifecycle.publishing import Artifact

__all__ = ["ModelSnapshot", "Scores", "base_classifier"]

_CHUNK = 256   # texts per forward pass: bounds activation memory


@dataclass(frozen=True)
class Scores:
    """What a snapshot says about a batch of texts of one task."""

    labels: list[str]                 # the task's labels, in column order
    probs: torch.Tensor               # (B, N) softmax probabilities, CPU float32
    features: torch.Tensor | None     # (B, H) pooled features (head mode), else None
    model_version: int

    def top(self) -> list[tuple[str | None, float]]:
        """(label, confidence) per text; (None, 0.0) while the task has no label."""
        if not self.labels:
            return [(None, 0.0)] * self.probs.shape[0]
        conf, idx = self.probs.max(dim=-1)                                    # (B,), (B,)
        return [(self.labels[i], c) for i, c in zip(idx.tolist(), conf.tolist())]

    def distributions(self) -> list[dict[str, float]]:
        return [dict(zip(self.labels, row)) for row in self.probs.tolist()]


def base_classifier(path: str, *, max_length: int, device: torch.device) -> TextClassifier:
    """The pristine base encoder a replica builds its snapshots on (no heads, frozen)."""
    model = TextClassifier(path, max_length=max_length).to(device)
    model.encoder.requires_grad_(False)
    return model.eval()


def _shell(base: TextClassifier) -> TextClassifier:
    """A TextClassifier sharing ``base``'s tokenizer and encoder, with no heads of its own."""
    shell = TextClassifier.__new__(TextClassifier)
    nn.Module.__init__(shell)
    for key, value in vars(base).items():   # plain attributes (path, tokenizer, max_length...)
        if not key.startswith("_") and key != "training":
            shell.__dict__[key] = value
    shell.encoder = base.encoder
    shell.heads = nn.ModuleDict()
    return shell


class ModelSnapshot:
    """One version of a model, ready to answer. Not thread-safe: use it on one thread."""

    def __init__(self, model: TextClassifier, labels: dict[str, list[str]], version: int, *,
                 mode: str, name: str = "teacher", published_ts: float | None = None) -> None:
        self.model = model.eval()
        self._labels = {t: list(v) for t, v in labels.items()}
        self.model_version = version
        self.mode = mode
        self.name = name
        self.published_ts = published_ts
        self.device = model.device

    @classmethod
    def empty(cls, base: TextClassifier, *, mode: str) -> "ModelSnapshot":
        """Version 0: no task has a label yet (what a replica serves before any version)."""
        return cls(_shell(base), {}, 0, mode=mode)

    @classmethod
    def from_artifact(cls, artifact: "Artifact", base: TextClassifier, *,
                      published_ts: float | None = None) -> "ModelSnapshot":
        """Build the version of ``artifact`` over ``base`` (left untouched)."""
        from lifecycle.publishing import ArtifactError

        if artifact.mode == "head":
            model = _shell(base)
        else:
            model = copy.deepcopy(base)
            if artifact.mode == "lora":
                model.add_lora(int(artifact.lora.get("rank", 8)),
                               int(artifact.lora.get("layers", 0)))
            state = {k[len("encoder."):]: v for k, v in artifact.tensors.items()
                     if k.startswith("encoder.")}
            own = model.encoder.state_dict()
            unknown = [k for k in state if k not in own]
            if unknown:
                raise ArtifactError("format", f"artifact has {len(unknown)} encoder tensors this "
                                              f"encoder does not (e.g. {unknown[0]!r})")
            own.update({k: v.to(own[k].dtype) for k, v in state.items()})
            model.encoder.load_state_dict(own)
            model.encoder.requires_grad_(False)
        for task in artifact.labels:
            weight = artifact.tensors[f"head.{task}.weight"]
            bias = artifact.tensors[f"head.{task}.bias"]
            if weight.shape[1] != model.hidden_size:
                raise ArtifactError("format", f"head of {task!r} is {weight.shape[1]} wide, the "
                                              f"encoder {model.hidden_size}")
            head = GrowingHead.from_merged(weight, bias).requires_grad_(False)
            model.add_head(task, head)
        return cls(model, artifact.labels, artifact.version, mode=artifact.mode,
                   published_ts=published_ts)

    # -- read-only views ----------------------------------------------------------------
    def tasks(self) -> list[str]:
        return list(self._labels)

    def labels(self, task: str) -> list[str]:
        return list(self._labels.get(task, []))

    # -- inference ------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def score(self, task: str, texts: Sequence[str], *,
              features: torch.Tensor | None = None) -> Scores:
        """Probabilities of ``task``'s labels for ``texts`` (``features``: precomputed (B, H)).
        Head-mode scores carry the features, so a co-located trainer reuses the encoder pass."""
        texts = list(texts)
        labels = self._labels.get(task, [])
        keep = self.mode == "head"
        with torch.inference_mode(), self._autocast():
            if features is None and (labels or keep) and texts:
                features = torch.cat([self.model.encode(texts[i:i + _CHUNK]).float().cpu()
                                      for i in range(0, len(texts), _CHUNK)])      # (B, H)
            if labels and texts:
                head = self.model.head(task)
                probs = head(features.to(self.device)).float().softmax(dim=-1).cpu()  # (B, N)
            else:
                probs = torch.zeros(len(texts), len(labels))
        return Scores(labels=list(labels), probs=probs, features=features if keep else None,
                      model_version=self.model_version)

    def predict_many(self, task: str, texts: Sequence[str]):
        """``learner.Prediction`` per text, like :meth:`learner.Learner.predict_many`."""
        from learner.learner import Prediction

        scores = self.score(task, texts)
        return [Prediction(label, conf, self.model_version) for label, conf in scores.top()]

    def predict_proba(self, task: str, texts: Sequence[str]) -> list[dict[str, float]]:
        return self.score(task, texts).distributions()

    def __repr__(self) -> str:
        return (f"ModelSnapshot(version={self.model_version}, mode={self.mode!r}, "
                f"tasks={self.tasks()})")
