"""Cache of frozen-encoder features (``mode="head"``).

With a frozen encoder a text's pooled features never change, so nothing should pay for
encoding the same text twice. The cache keeps three kinds of features:

* **memory**: the texts in the replay memory (pruned to them after each update), so replay
  never re-encodes a remembered text;
* **recent**: the last ``recent_capacity`` texts encoded for a prediction (``store=False``).
  In the stream every event is predicted before it is learned (prequential), and the drift
  detectors embed the same batch: with the recent features, one encoder pass per event
  serves the prediction, the drift test and the update. Bounded, least recently used first;
  a recent hit that is learned moves to the memory kind;
* **pinned**: texts a caller asks to keep for good (the benchmark pins its whole data set
  once and shares it between runs).

Features live on the CPU as float32.

>>> cache = FeatureCache(lambda texts: torch.ones(len(texts), 2))
>>> cache.get(["a", "b", "a"]).shape
torch.Size([3, 2])
>>> cache.prune(keep={"a"}); len(cache)
1
>>> _ = cache.get(["c"], store=False); len(cache), cache.recent_size
(1, 1)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["FeatureCache", "encode_once"]


class FeatureCache:
    def __init__(self, encode: Callable[[list[str]], torch.Tensor], recent_capacity: int = 4096) -> None:
        if recent_capacity < 0:
            raise ValueError(f"recent_capacity must be >= 0, got {recent_capacity}")
        self.encode = encode  # texts -> (B, H) CPU float32
        self.recent_capacity = recent_capacity
        self._reset()

    def _reset(self) -> None:
        self._cached: dict[str, torch.Tensor] = {}
        self._pinned: dict[str, torch.Tensor] = {}
        self._recent: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cached)

    @property
    def recent_size(self) -> int:
        return len(self._recent)

    def _lookup(self, text: str) -> torch.Tensor | None:
        found = self._pinned.get(text)
        if found is None:
            found = self._cached.get(text)
        if found is None:
            found = self._recent.get(text)
        return found

    def get(self, texts: Sequence[str], *, store: bool = True) -> torch.Tensor:
        """(B, H) features of ``texts``; misses are encoded.

        ``store=True`` (learning) keeps the features of every text with the memory kind;
        ``store=False`` (predicting, embedding for drift) keeps the misses as recent only.
        """
        found: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):
            f = self._lookup(t)
            if f is None:
                missing.append(t)
            else:
                found[t] = f
        if missing:
            found.update(zip(missing, self.encode(missing)))  # (M, H) -> M rows
        if store:
            for t, f in found.items():
                if t not in self._pinned:
                    self._cached[t] = f
        elif missing and self.recent_capacity:
            recent = self._recent
            for t in missing:
                recent[t] = found[t]
            while len(recent) > self.recent_capacity:
                recent.popitem(last=False)
        return torch.stack([found[t] for t in texts])

    def offer(self, texts: Sequence[str], features: torch.Tensor) -> None:
        """Keep ``features`` (B, H) of ``texts`` as recent ones: features computed elsewhere
        with the same frozen encoder (the serving copy that just predicted them), so that
        learning and embedding them costs no encoder pass here."""
        texts = list(texts)
        if len(texts) != len(features):
            raise ValueError(f"texts and features differ in length: {len(texts)} != {len(features)}")
        if not self.recent_capacity:
            return
        recent = self._recent
        for t, f in zip(texts, features):
            if t not in self._pinned and t not in self._cached:
                recent[t] = f.detach().float().cpu()
                recent.move_to_end(t)
        while len(recent) > self.recent_capacity:
            recent.popitem(last=False)

    def pin(self, texts: Sequence[str], features: torch.Tensor | None = None) -> None:
        """Keep features of ``texts`` for good (given, or encoded now when None)."""
        texts = list(texts)
        if features is None:
            missing = [t for t in dict.fromkeys(texts) if t not in self._pinned]
            features = self.encode(missing) if missing else torch.zeros(0)
            texts = missing
        if len(texts) != len(features):
            raise ValueError(f"texts and features differ in length: {len(texts)} != {len(features)}")
        self._pinned.update(zip(texts, (f.detach().float().cpu() for f in features)))

    def pinned(self) -> dict[str, torch.Tensor]:
        return dict(self._pinned)

    def prune(self, keep: Iterable[str]) -> None:
        """Drop memory-kind features of texts not in ``keep`` (recent and pinned stay)."""
        keep = keep if isinstance(keep, (set, frozenset)) else set(keep)
        cached = self._cached
        if len(cached) > len(keep) or any(t not in keep for t in cached):
            self._cached = {t: f for t, f in cached.items() if t in keep}

    def clear(self) -> None:
        self._cached = {}
        self._recent.clear()


def encode_once(texts: Sequence[str], *, model: str | None, device: str, max_length: int,
                cache: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Frozen-encoder features of ``texts`` (text -> (H,) CPU float32 tensor), each text
    encoded once by the encoder ``model`` (None: the bundled one). ``cache``, a safetensors
    file (with a ``.json`` beside it naming the encoder and the texts), keeps them between
    runs; it is used only when it was written for the same encoder and ``max_length``.
    For offline runs over a fixed data set: replaying a stream (tuning), the benchmarks."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from learner.config import LearnerConfig
    from learner.learner import Learner

    texts = list(dict.fromkeys(texts))
    tag = f"{model or 'bundled'}|{max_length}"
    found: dict = {}
    path = Path(cache) if cache else None
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("tag") == tag:
            found = dict(zip(meta["texts"], load_file(str(path))["features"]))
    missing = [t for t in texts if t not in found]
    if missing:
        if log is not None:
            log(f"encoding {len(missing)} texts once (frozen encoder)...")
        encoder = Learner(LearnerConfig(model=model, device=device, mode="head",
                                        max_length=max_length))
        found.update(zip(missing, encoder._encode(missing)))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": torch.stack(list(found.values())).contiguous()}, str(path))
            path.with_suffix(".json").write_text(json.dumps({"tag": tag, "texts": list(found)}))
    return {t: found[t] for t in texts}
