"""The learning side of streamlearner: model, replay memory, online learner, checkpoints.

Never imports Faust, ``streams`` or ``monitoring``: it is handed texts and labels and
hands back predictions and numbers.
"""

from .checkpoints import CheckpointError, CheckpointManager
from .config import LearnerConfig, MemoryConfig
from .learner import Learner, Prediction, UpdateStats
from .memory import MemoryItem, ReplayMemory
from .model import GrowingHead, TextClassifier, default_model_path, resolve_device

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "GrowingHead",
    "Learner",
    "LearnerConfig",
    "MemoryConfig",
    "MemoryItem",
    "Prediction",
    "ReplayMemory",
    "TextClassifier",
    "UpdateStats",
    "default_model_path",
    "resolve_device",
]
