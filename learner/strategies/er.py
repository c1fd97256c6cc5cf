"""Experience replay: each update mixes samples drawn from the class-balanced memory
(``MemoryConfig.replay_ratio`` per new sample) into the cross-entropy.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019. The learner
does the mixing; this class only says that it wants it.
"""

from __future__ import annotations

from .base import Strategy

__all__ = ["ExperienceReplay"]


class ExperienceReplay(Strategy):
    name = "er"
    replays = True
