"""Cache of frozen-encoder features (``mode="head"``).

With a frozen encoder a text's pooled features never change, so replay should not pay
for encoding the same remembered text again and again. The cache keeps the features of
the texts in the replay memory (pruned to them after each update) plus *pinned* texts a
caller asks to keep (the benchmark pins its whole data set once and shares it between
runs). Features live on the CPU as float32.

>>> cache = FeatureCache(lambda texts: torch.ones(len(texts), 2))
>>> cache.get(["a", "b", "a"]).shape
torch.Size([3, 2])
>>> cache.prune(keep={"a"}); len(cache)
1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["FeatureCache"]


class FeatureCache:
    def __init__(self, encode: Callable[[list[str]], torch.Tensor]) -> None:
        self.encode = encode  # texts -> (B, H) CPU float32
        self._reset()

    def _reset(self) -> None:
        self._cached: dict[str, torch.Tensor] = {}
        self._pinned: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._cached)

    def _lookup(self, text: str) -> torch.Tensor | None:
        found = self._pinned.get(text)
        return found if found is not None else self._cached.get(text)

    def get(self, texts: Sequence[str], *, store: bool = True) -> torch.Tensor:
        """(B, H) features of ``texts``; misses are encoded (and kept when ``store``)."""
        missing = [t for t in dict.fromkeys(texts) if self._lookup(t) is None]
        fresh = dict(zip(missing, self.encode(missing))) if missing else {}
        if store:
            self._cached.update(fresh)
        return torch.stack([fresh[t] if t in fresh else self._lookup(t) for t in texts])

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
        keep = set(keep)
        self._cached = {t: f for t, f in self._cached.items() if t in keep}

    def clear(self) -> None:
        self._cached = {}
