"""Seeded text perturbations for the robustness evaluation: character typos and word drops.

Each word is dropped with probability ``rate`` (never the last one left), otherwise given
one typo with probability ``rate`` (swap two neighbours, delete, insert or replace a
letter). The same ``(text, seed)`` always gives the same output.

>>> perturb("please block my card right now", rate=0.3, seed=1)
'plesae wy card right onow'
>>> perturb("hi", rate=0.0, seed=0)
'hi'
"""

from __future__ import annotations

import random
import string
import zlib

__all__ = ["perturb", "perturb_all"]


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + rng.choice(string.ascii_lowercase) + word[i:]
    return word[:i] + rng.choice(string.ascii_lowercase) + word[i + 1 :]


def perturb(text: str, *, rate: float, seed: int) -> str:
    rng = random.Random(seed * 1_000_003 + zlib.crc32(text.encode()))
    words = text.split()
    out = []
    for k, word in enumerate(words):
        left = len(words) - k - 1 + len(out)  # words that would remain if this one goes
        if rng.random() < rate and left > 0:
            continue
        out.append(_typo(word, rng) if rng.random() < rate else word)
    return " ".join(out)


def perturb_all(texts: list[str], *, rate: float, seed: int) -> list[str]:
    return [perturb(t, rate=rate, seed=seed) for t in texts]
