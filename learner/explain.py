"""Token attributions for one prediction, merged from word pieces to words.

Two methods over the same forward function (text ids -> class probability):

- ``"ig"``: Captum's ``LayerIntegratedGradients`` on the word-embedding layer, from a
  baseline where every word piece is ``[PAD]`` (``[CLS]``/``[SEP]`` kept). Satisfies
  completeness: attributions sum to p(x) - p(baseline), up to the reported delta.
- ``"gxi"``: gradient × (input − baseline) on the word embeddings, one backward pass:
  fast, rougher.

Word-piece scores are summed per word (the tokenizer's ``word_ids``), and words are
the original text's spans (offsets), so a caller highlights exactly what the user wrote.
Run it where the model lives (the worker's model thread): it is not thread-safe.

>>> ex = Explainer(learner).explain("feedback", "my card never arrived")   # doctest: +SKIP
>>> ex.words, ex.label                                                      # doctest: +SKIP
(['my', 'card', 'never', 'arrived'], 'card_arrival')
"""

from __future__ import annotations

import contextlib
import html
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from learner.learner import Learner

METHODS = ("ig", "gxi")


@dataclass(frozen=True)
class Explanation:
    task: str
    text: str
    label: str                     # the explained label (predicted unless one was chosen)
    probability: float             # p(label | text)
    predicted: str                 # the model's top label
    method: str
    words: list[str]
    spans: list[tuple[int, int]]   # character span of each word in ``text``
    scores: list[float]            # attribution per word, same order
    model_version: int
    seconds: float
    delta: float | None = None     # IG completeness gap (None for gxi)
    extra: dict = field(default_factory=dict)

    def top(self, k: int = 3) -> list[str]:
        order = sorted(range(len(self.scores)), key=lambda i: self.scores[i], reverse=True)
        return [self.words[i] for i in order[:k]]

    def to_dict(self) -> dict:
        return {"task": self.task, "label": self.label, "probability": self.probability,
                "predicted": self.predicted, "method": self.method, "model_version": self.model_version,
                "words": [{"word": w, "start": s, "end": e, "score": sc}
                          for w, (s, e), sc in zip(self.words, self.spans, self.scores)],
                "delta": self.delta, "seconds": self.seconds}

    def to_html(self) -> str:
        """The text with each word's background by attribution (green for, red against)."""
        peak = max((abs(s) for s in self.scores), default=0.0) or 1.0
        parts, cursor = [], 0
        for (start, end), score in zip(self.spans, self.scores):
            parts.append(html.escape(self.text[cursor:start]))
            alpha = min(1.0, abs(score) / peak)
            rgb = "34,139,34" if score >= 0 else "200,30,30"
            parts.append(f'<span title="{score:+.4f}" style="background: rgba({rgb},{alpha:.2f}); '
                         f'padding: 1px 2px; border-radius: 3px">{html.escape(self.text[start:end])}</span>')
            cursor = end
        parts.append(html.escape(self.text[cursor:]))
        return (f'<div style="font: 16px sans-serif; line-height: 1.8">'
                f'<div><b>{html.escape(self.task)}</b> → <b>{html.escape(self.label)}</b> '
                f'(p = {self.probability:.2f}, {self.method}, model v{self.model_version})</div>'
                f'<div>{"".join(parts)}</div></div>')


class Explainer:
    """Explains ``learner``'s predictions; ``steps`` is the IG path resolution."""

    def __init__(self, learner: "Learner", *, steps: int = 32):
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        self.learner = learner
        self.steps = steps

    def _probs_fn(self, task: str, attention_mask: torch.Tensor):
        """(B, T) ids -> (B, N) probabilities of ``task``, the mask of the explained text."""
        model = self.learner.model
        head = model.head(task)

        def forward(input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None):
            mask = attention_mask.expand(input_ids.shape[0], -1)
            feats = model.features({"input_ids": input_ids, "attention_mask": mask},
                                   inputs_embeds=inputs_embeds)                  # (B, H)
            return head(feats).float().softmax(dim=-1)                           # (B, N)
        return forward

    def explain(self, task: str, text: str, *, label: str | None = None,
                method: str = "ig") -> Explanation:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        labels = self.learner.labels(task)
        if not labels:
            raise ValueError(f"task {task!r} has no labels yet: nothing to explain")
        if label is not None and label not in labels:
            raise ValueError(f"label {label!r} is not a label of task {task!r}")
        if not text or not text.strip():
            raise ValueError("text must not be empty")
        started = time.perf_counter()
        exclusive = getattr(self.learner, "exclusive", contextlib.nullcontext)
        with exclusive():   # a serving snapshot: no concurrent eager scoring through the hooks
            return self._explain(task, text, label, method, labels, started)

    def _explain(self, task: str, text: str, label: str | None, method: str,
                 labels: list[str], started: float) -> Explanation:
        model = self.learner.model
        was_training = model.training
        model.eval()
        try:
            enc = model.tokenizer([text], truncation=True, max_length=model.max_length,
                                  return_offsets_mapping=True, return_tensors="pt")
            word_ids = enc.word_ids(0)
            offsets = enc.pop("offset_mapping")[0].tolist()
            ids = enc["input_ids"].to(model.device)                       # (1, T)
            mask = enc["attention_mask"].to(model.device)                 # (1, T)
            forward = self._probs_fn(task, mask)
            with torch.no_grad():
                probs = forward(ids)[0]                                   # (N,)
            predicted = labels[int(probs.argmax())]
            target_label = label or predicted
            target = labels.index(target_label)
            if method == "ig":
                piece_scores, delta = self._integrated_gradients(forward, ids, target)
            else:
                piece_scores, delta = self._grad_x_input(forward, ids, target), None
        finally:
            model.train(was_training)
        words, spans, scores = merge_word_pieces(text, word_ids, offsets, piece_scores)
        return Explanation(task=task, text=text, label=target_label,
                           probability=float(probs[target]), predicted=predicted, method=method,
                           words=words, spans=spans, scores=scores,
                           model_version=self.learner.model_version,
                           seconds=time.perf_counter() - started, delta=delta)

    def _baseline(self, ids: torch.Tensor) -> torch.Tensor:
        tok = self.learner.model.tokenizer
        special = set(tok.all_special_ids) - {tok.pad_token_id}
        base = torch.full_like(ids, tok.pad_token_id)
        keep = torch.tensor([[int(i) in special for i in row] for row in ids.tolist()],
                            device=ids.device)
        return torch.where(keep, ids, base)

    def _integrated_gradients(self, forward, ids: torch.Tensor, target: int):
        from captum.attr import LayerIntegratedGradients

        layer = self.learner.model.encoder.get_input_embeddings()
        lig = LayerIntegratedGradients(forward, layer)
        attributions, delta = lig.attribute(ids, baselines=self._baseline(ids), target=target,
                                            n_steps=self.steps, return_convergence_delta=True,
                                            internal_batch_size=self.steps)
        return attributions.sum(dim=-1)[0].tolist(), float(delta.abs().max())  # (T,)

    def _grad_x_input(self, forward, ids: torch.Tensor, target: int) -> list[float]:
        # Gradient x (input - baseline): IG's integrand taken once, at the input, against the
        # same [PAD] baseline. Plain gradient x input measures against the zero vector, which
        # is no word at all, and ranks words worse than chance here.
        model = self.learner.model
        embeds = model.word_embeddings(ids).detach().requires_grad_(True)     # (1, T, H)
        base = model.word_embeddings(self._baseline(ids)).detach()            # (1, T, H)
        # log p, not p: a confident softmax is flat, and its gradient there points anywhere.
        logp = forward(ids, inputs_embeds=embeds)[0, target].clamp_min(1e-12).log()
        (grad,) = torch.autograd.grad(logp, embeds)
        return (grad * (embeds - base)).sum(dim=-1)[0].tolist()               # (T,)


def merge_word_pieces(text: str, word_ids: Sequence[int | None], offsets: Sequence[Sequence[int]],
                      piece_scores: Sequence[float]):
    """Sum word-piece scores per word; words are spans of ``text`` (special tokens dropped).

    >>> merge_word_pieces("unbelievable card", [None, 0, 0, 1, None],
    ...                   [(0, 0), (0, 2), (2, 12), (13, 17), (0, 0)], [9, 1, 2, 3, 9])
    (['unbelievable', 'card'], [(0, 12), (13, 17)], [3.0, 3.0])
    """
    order: list[int] = []
    span: dict[int, list[int]] = {}
    score: dict[int, float] = {}
    for wid, (start, end), s in zip(word_ids, offsets, piece_scores):
        if wid is None:
            continue
        if wid not in span:
            order.append(wid)
            span[wid] = [start, end]
            score[wid] = 0.0
        span[wid][0] = min(span[wid][0], start)
        span[wid][1] = max(span[wid][1], end)
        score[wid] += float(s)
    spans = [(span[w][0], span[w][1]) for w in order]
    return [text[a:b] for a, b in spans], spans, [score[w] for w in order]
