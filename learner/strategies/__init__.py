"""Anti-forgetting strategies, one per file, built from ``LearnerConfig.strategy``.

>>> [s.name for s in build_strategies(LearnerConfig(strategy="er+ewc"))]
['er', 'ewc']
"""

from __future__ import annotations

from ..config import LearnerConfig
from .base import Batch, Outputs, Strategy
from .derpp import DerPP
from .er import ExperienceReplay
from .ewc import OnlineEWC
from .lwf import LwF
from .naive import Naive

__all__ = ["Batch", "DerPP", "ExperienceReplay", "LwF", "Naive", "OnlineEWC", "Outputs", "Strategy",
           "build_strategies"]


def build_strategies(config: LearnerConfig) -> list[Strategy]:
    """Fresh strategy objects for ``config.strategy`` (``"er+ewc"`` -> [ER, EWC])."""
    made: dict[str, callable] = {
        "naive": Naive,
        "er": ExperienceReplay,
        "derpp": lambda: DerPP(alpha=config.derpp_alpha),
        "ewc": lambda: OnlineEWC(lam=config.ewc_lambda),
        "lwf": lambda: LwF(alpha=config.lwf_alpha),
    }
    return [made[name]() for name in config.strategies]
