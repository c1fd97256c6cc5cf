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
import logging
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Sequence

import torch
from torch import nn

from learner.lanes import lanes_for
from learner.model import GrowingHead, TextClassifier, mean_pool
from serving.config import PRECISIONS

if TYPE_CHECKING:
    from lifecycle.publishing import Artifact

__all__ = ["ModelSnapshot", "Scores", "TracedEncoder", "base_classifier", "serving_dtype",
           "trace_encoder", "traced"]

log = logging.getLogger(__name__)

_CHUNK = 256   # texts per forward pass: bounds activation memory


class PerThreadTokenizer:
    """A tokenizer that several threads may call at once: each thread calls its own copy.

    An HF fast tokenizer keeps its truncation and padding settings in the Rust object, and a
    call that changes them borrows it mutably, so two threads tokenizing at once can fail
    ("Already borrowed"). A copy costs ~30 ms and a few MB, once per thread."""

    def __init__(self, tokenizer) -> None:
        self._original = tokenizer
        self._local = threading.local()

    def _mine(self):
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            tok = self._local.tokenizer = copy.deepcopy(self._original)
        return tok

    def __call__(self, *args, **kwargs):
        return self._mine()(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_original", "_local"):
            raise AttributeError(name)
        return getattr(self._mine(), name)

    def __deepcopy__(self, memo) -> "PerThreadTokenizer":
        return PerThreadTokenizer(copy.deepcopy(self._original, memo))

    def __reduce__(self):
        return PerThreadTokenizer, (self._original,)


class SharedLock:
    """Many shared holders or one exclusive holder; a waiting exclusive holder goes first.

    Scoring takes it shared and explaining exclusive: Captum's layer attributions hook the
    eager encoder's embedding layer, which a concurrent eager forward pass would go through."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_EAGER = SharedLock()   # one per process: head-mode snapshots share their base's encoder


@dataclass(frozen=True)
class Scores:
    """What a snapshot says about a batch of texts of one task."""

    labels: list[str]                 # the task's labels, in column order
    probs: torch.Tensor               # (B, N) softmax probabilities, CPU float32
    features: torch.Tensor | None     # (B, H) pooled features (head mode), else None
    model_version: int
    best: list[tuple[str | None, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The top label of each text, computed where the scores are made (the serving
        # thread): the event loop that publishes them then runs no torch op, whose GIL
        # hand-off cost ~3 ms per batch on a loaded 2-core machine.
        if not self.labels:
            best = [(None, 0.0)] * self.probs.shape[0]
        else:
            conf, idx = self.probs.max(dim=-1)                                # (B,), (B,)
            best = [(self.labels[i], c) for i, c in zip(idx.tolist(), conf.tolist())]
        object.__setattr__(self, "best", best)

    def top(self) -> list[tuple[str | None, float]]:
        """(label, confidence) per text; (None, 0.0) while the task has no label."""
        return list(self.best)

    def distributions(self) -> list[dict[str, float]]:
        return [dict(zip(self.labels, row)) for row in self.probs.tolist()]


def native_bf16() -> bool:
    """True when this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), so a
    bf16 encoder is faster than fp32 rather than emulated and slower."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a torch build without the probe
        return False


def serving_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a serving encoder's weights for SERVE_PRECISION ``precision``.

    On an accelerator the weights stay fp32 and inference runs under bf16 autocast; on a
    CPU, ``bf16`` (or ``auto`` on a CPU with native bf16) stores the weights in bf16, which
    halves the memory traffic of every matrix product: measured 1.5x lower single-text
    latency and 2x batch throughput for MiniLM on AVX512-BF16 (docs/serving.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cpu" or precision == "fp32":
        return torch.float32
    if precision == "bf16" or native_bf16():
        return torch.bfloat16
    return torch.float32


def base_classifier(path: str, *, max_length: int, device: torch.device,
                    precision: str = "fp32", trace: bool = False) -> TextClassifier:
    """The pristine base encoder a replica builds its snapshots on (no heads, frozen), its
    weights in the dtype :func:`serving_dtype` picks for ``precision``; with ``trace`` (a
    CPU), head-mode snapshots over it run the encoder as a checked trace (:func:`traced`)."""
    model = TextClassifier(path, max_length=max_length).to(device)
    model.tokenizer = PerThreadTokenizer(model.tokenizer)   # serving may run on several threads
    dtype = serving_dtype(precision, device)
    model.encoder.to(dtype)
    model.encoder.requires_grad_(False)
    model.eval()
    if trace and device.type == "cpu":
        fast = trace_encoder(model)
        if fast is not None:
            _TRACED[model] = fast
    if dtype != torch.float32 and device.type == "cpu":
        warm_up(model)
    return model


class _Pooled(nn.Module):
    """What is traced: (input_ids, attention_mask) -> mean-pooled features (B, H) float32,
    the encoder and the pooling of :meth:`TextClassifier.features` in one graph."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class _InOrder(nn.Module):
    """What is scripted around the trace: every sub-batch of a batch, then the rows put back
    in the texts' order, in one call."""

    def __init__(self, pooled: nn.Module) -> None:
        super().__init__()
        self.pooled = pooled

    def forward(self, ids: List[torch.Tensor], masks: List[torch.Tensor],
                inverse: torch.Tensor) -> torch.Tensor:
        parts: List[torch.Tensor] = []
        for k in range(len(ids)):
            parts.append(self.pooled(ids[k], masks[k]))                 # (b_k, H)
        return torch.cat(parts)[inverse]                                 # (B, H)


class TracedEncoder(nn.Module):
    """A traced encoder that pools: :meth:`TextClassifier.features` calls
    :meth:`pooled_features` for a sub-batch and :meth:`TextClassifier.encode` calls
    :meth:`pooled_features_in_order` for all of a batch's at once, with no Python between
    their operations (a serving thread then takes the interpreter back once per batch)."""

    def __init__(self, script: nn.Module, in_order: nn.Module) -> None:
        super().__init__()
        self.script = script
        self.in_order = in_order

    def pooled_features(self, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
        return self.script(input_ids, attention_mask)                    # (B, H) float32

    def pooled_features_in_order(self, ids: list[torch.Tensor], masks: list[torch.Tensor],
                                 inverse: torch.Tensor) -> torch.Tensor:
        return self.in_order(ids, masks, inverse)                        # (B, H) float32

    forward = pooled_features


# base encoder -> its checked trace (head-mode snapshots share both; lora/full snapshots own
# an encoder with other weights and run it eagerly)
_TRACED: "weakref.WeakKeyDictionary[TextClassifier, TracedEncoder]" = weakref.WeakKeyDictionary()


def traced(base: TextClassifier, mode: str = "head") -> TracedEncoder | None:
    """``base``'s checked trace, for a snapshot of ``mode`` that shares its encoder (head)."""
    return _TRACED.get(base) if mode == "head" else None


def trace_encoder(model: TextClassifier) -> TracedEncoder | None:
    """The frozen encoder as a TorchScript trace, or None (then serving runs it eagerly).

    A trace runs the whole forward pass in C++ without the GIL: no Python between the ~100
    operations of a MiniLM pass, and no waiting for the interpreter that the event loop and
    the learner also need. Measured on 2 cores (bf16, batches of 32): 1.38x the texts/s of the
    eager encoder on a quiet process and 1.54x beside a Python thread busy 30% of the time;
    one text p50 4.3 ms vs 6.2 ms (docs/serving.md). The trace is checked against the eager
    encoder on other batch sizes and lengths, padded and not, before it is used: a family
    whose forward pass does not trace faithfully (or a torch without ``torch.jit.trace``,
    which torch 2.13 marks deprecated in favour of ``torch.export``) keeps the eager
    encoder, with a warning. SERVE_TRACE=false turns it off."""
    encoder = model.encoder
    vocab = int(getattr(encoder.config, "vocab_size", 0) or 0)
    if not hasattr(torch.jit, "trace") or vocab < 2:
        return None
    pad = model.tokenizer.pad_token_id or 0
    generator = torch.Generator().manual_seed(0)

    def example(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, vocab, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        if batch > 1:                      # one shorter row: padding must be masked as eager
            mask[0, max(1, length // 2):] = 0
            ids[mask == 0] = pad
        return ids.to(model.device), mask.to(model.device)

    dtype = next(encoder.parameters()).dtype
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")   # TracerWarnings, the API's deprecation notice
            script = torch.jit.trace(_Pooled(encoder).eval(), example(4, 12),
                                     check_trace=False)
            for shape in ((1, 1), (1, 9), (3, model.max_length), (8, 23)):
                ids, mask = example(*shape)
                want = model.features({"input_ids": ids, "attention_mask": mask})  # eager
                got = script(ids, mask)
                if got.shape != want.shape or not torch.allclose(got, want, atol=tol, rtol=tol):
                    raise ValueError(f"the trace disagrees with the encoder on {shape}")
            in_order = torch.jit.script(_InOrder(script))
            (a, ma), (b, mb) = example(2, 5), example(3, 17)   # two sub-batches, then
            want = torch.cat([model.features({"input_ids": b, "attention_mask": mb}),
                              model.features({"input_ids": a, "attention_mask": ma})])
            got = in_order([a, b], [ma, mb], torch.tensor([2, 3, 4, 0, 1]))   # b's rows first
            if got.shape != want.shape or not torch.allclose(got, want, atol=tol, rtol=tol):
                raise ValueError("the scripted batch disagrees with the encoder")
    except Exception as exc:   # any failure: the eager encoder serves, as without the trace
        log.warning("serving runs %s eagerly (its trace was not usable: %s: %s)",
                    type(encoder).__name__, type(exc).__name__, exc)
        return None
    return TracedEncoder(script, in_order)


def warm_up(model: TextClassifier) -> None:
    """Run one text of every length up to ``max_length`` tokens through the encoder.

    A reduced-precision CPU encoder computes through oneDNN, which builds (and caches) a
    kernel for every new input shape: the first request of each length paid ~5 ms more
    (bf16 single-text p99 12.6 ms on first sight, 8.4 ms once seen). Warming the shapes a
    single request can have costs about 0.4 s at start, off the request path."""
    pad = model.tokenizer.pad_token_id or 0
    encoder = traced(model) or model.encoder
    with torch.inference_mode():
        for length in range(1, model.max_length + 1):
            ids = torch.full((1, length), pad, dtype=torch.long, device=model.device)
            model.features({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                           encoder=encoder)


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
    """One version of a model, ready to answer. Several threads may score with it at once
    (the serving base's tokenizer is per thread, :class:`PerThreadTokenizer`); an explanation
    holds :meth:`exclusive` against eager scoring."""

    def __init__(self, model: TextClassifier, labels: dict[str, list[str]], version: int, *,
                 mode: str, name: str = "teacher", published_ts: float | None = None,
                 fast: nn.Module | None = None) -> None:
        self.model = model.eval()
        if not isinstance(getattr(model, "tokenizer", None), (PerThreadTokenizer, type(None))):
            model.tokenizer = PerThreadTokenizer(model.tokenizer)   # e.g. a loaded student
        self.fast = fast   # the base encoder's checked trace (head mode), used for inference
        self._labels = {t: list(v) for t, v in labels.items()}
        self.model_version = version
        self.mode = mode
        self.name = name
        self.published_ts = published_ts
        self.device = model.device

    @classmethod
    def empty(cls, base: TextClassifier, *, mode: str) -> "ModelSnapshot":
        """Version 0: no task has a label yet (what a replica serves before any version)."""
        return cls(_shell(base), {}, 0, mode=mode, fast=traced(base, mode))

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
                   published_ts=published_ts, fast=traced(base, artifact.mode))

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
        eager = _EAGER.shared() if self.fast is None else contextlib.nullcontext()
        with eager, torch.inference_mode(), self._autocast():
            if features is None and (labels or keep) and texts:
                lanes = lanes_for(torch.get_num_threads()) if self.device.type == "cpu" else None
                features = torch.cat([self.model.encode(texts[i:i + _CHUNK], lanes=lanes,
                                                        encoder=self.fast).float().cpu()
                                      for i in range(0, len(texts), _CHUNK)])      # (B, H)
            if labels and texts:
                head = self.model.head(task)
                probs = head(features.to(self.device)).float().softmax(dim=-1).cpu()  # (B, N)
            else:
                probs = torch.zeros(len(texts), len(labels))
        return Scores(labels=list(labels), probs=probs, features=features if keep else None,
                      model_version=self.model_version)

    def exclusive(self) -> contextlib.AbstractContextManager:
        """Held while explaining: no eager scoring runs meanwhile (the attribution's hooks
        are on the eager encoder; a traced encoder is not affected)."""
        return _EAGER.exclusive()

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
