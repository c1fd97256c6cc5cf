"""Shared fixtures: a tiny random BERT that loads offline in well under a second."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded 2-layer, 32-wide BERT with the bundled MiniLM tokenizer, saved to a tmp dir."""
    import torch
    from transformers import BertConfig, BertModel

    from learner.model import default_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):  # do not disturb the session's global RNG
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    source = Path(default_model_path())
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, path / name)
    return str(path)


@pytest.fixture
def tiny_learner(tiny_model_dir: str):
    """Factory: ``tiny_learner(memory=MemoryConfig(...), head_lr=...)`` -> a CPU Learner."""
    from learner import Learner, LearnerConfig

    def make(memory=None, **overrides):
        overrides.setdefault("device", "cpu")
        overrides.setdefault("mode", "full")  # the tests below exercise the whole model
        return Learner(LearnerConfig(model=tiny_model_dir, **overrides), memory)

    return make
