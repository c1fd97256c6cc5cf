import dataclasses

import pytest

from learner import LearnerConfig, MemoryConfig


def test_defaults_are_valid():
    assert MemoryConfig() == MemoryConfig(capacity=5000, replay_ratio=1.0, seed=0)
    cfg = LearnerConfig()
    assert cfg.model is None and cfg.device == "auto" and cfg.steps_per_batch == 1


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MemoryConfig().capacity = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value",
    [
        ("capacity", 0),
        ("capacity", -1),
        ("capacity", 1.5),
        ("capacity", True),
        ("capacity", "10"),
        ("replay_ratio", -0.1),
        ("replay_ratio", float("nan")),
        ("replay_ratio", float("inf")),
        ("replay_ratio", "1"),
        ("seed", -1),
        ("seed", None),
    ],
)
def test_memory_config_rejects(field, value):
    with pytest.raises(ValueError) as e:
        MemoryConfig(**{field: value})
    assert str(e.value).split()[0] == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", ""),
        ("model", 3),
        ("device", "gpu"),
        ("device", "cuda:"),
        ("device", "cuda:x"),
        ("device", None),
        ("lr", 0.0),
        ("lr", -1e-5),
        ("lr", float("nan")),
        ("head_lr", 0),
        ("head_lr", "5e-3"),
        ("weight_decay", -0.01),
        ("steps_per_batch", 0),
        ("steps_per_batch", 1.0),
        ("max_length", 2),
        ("max_length", False),
        ("grad_clip", -1.0),
        ("grad_clip", float("inf")),
        ("seed", -3),
        ("freeze_encoder", 1),
        ("freeze_encoder", "yes"),
    ],
)
def test_learner_config_rejects(field, value):
    with pytest.raises(ValueError) as e:
        LearnerConfig(**{field: value})
    assert str(e.value).split()[0] == field


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_strings_accepted(device):
    assert LearnerConfig(device=device).device == device


def test_ints_accepted_for_floats_and_zero_clip():
    cfg = LearnerConfig(lr=1, grad_clip=0, weight_decay=0)
    assert cfg.lr == 1 and cfg.grad_clip == 0
    assert MemoryConfig(replay_ratio=0).replay_ratio == 0
