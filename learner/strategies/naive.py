"""Naive sequential fine-tuning: cross-entropy on the new samples only (the lower bound)."""

from __future__ import annotations

from .base import Strategy

__all__ = ["Naive"]


class Naive(Strategy):
    name = "naive"
    replays = False
