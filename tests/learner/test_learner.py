import math

import pytest
import torch

from learner import MemoryConfig, Prediction

TEXTS = ["where is my card", "my card has not arrived", "how do I top up", "top up failed", "exchange rate?"]
LABELS = ["card_arrival", "card_arrival", "top_up", "top_up", "exchange_rate"]


def test_predict_before_any_label(tiny_learner):
    learner = tiny_learner()
    assert learner.model_version == 0
    assert learner.predict_many("intents", ["hello", "world"]) == [Prediction(None, 0.0, 0)] * 2
    assert learner.predict_many("intents", []) == []
    assert learner.tasks() == [] and learner.labels("intents") == []


def test_learn_bumps_version_grows_labels_and_predicts(tiny_learner):
    learner = tiny_learner()
    stats = learner.learn_many("intents", TEXTS[:3], LABELS[:3])
    assert stats.model_version == learner.model_version == 1
    assert (stats.n_new, stats.n_replay) == (3, 0)  # empty memory: nothing to replay
    assert math.isfinite(stats.loss) and stats.grad_norm > 0 and stats.seconds > 0
    assert learner.labels("intents") == ["card_arrival", "top_up"]

    stats = learner.learn_many("intents", TEXTS[2:], LABELS[2:])
    assert stats.model_version == 2 and stats.n_replay == 3
    assert learner.labels("intents") == ["card_arrival", "top_up", "exchange_rate"]
    preds = learner.predict_many("intents", TEXTS)
    assert len(preds) == 5
    assert all(p.label in LABELS and 0.0 < p.confidence <= 1.0 and p.model_version == 2 for p in preds)
    counters = learner.counters()
    assert counters["updates"] == 2 and counters["samples_seen"] == {"intents": 6}
    assert counters["samples_replayed"] == 3 and len(learner.replay) == 6


def test_learning_reduces_loss(tiny_learner):
    learner = tiny_learner(memory=MemoryConfig(replay_ratio=0.0), head_lr=1e-2, lr=1e-3)
    losses = [learner.learn_many("intents", TEXTS, LABELS).loss for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    assert [p.label for p in learner.predict_many("intents", TEXTS)] == LABELS


def test_inputs_not_mutated(tiny_learner):
    learner = tiny_learner()
    texts, labels = list(TEXTS), list(LABELS)
    learner.learn_many("intents", texts, labels)
    learner.learn_many("intents", texts, labels)
    learner.predict_many("intents", texts)
    assert texts == TEXTS and labels == LABELS
    learner.learn_many("intents", tuple(TEXTS), tuple(LABELS))  # any sequence works


def _run(learner):
    out = []
    for i in range(4):
        stats = learner.learn_many("a" if i % 2 else "b.task", TEXTS, LABELS[i:] + LABELS[:i])
        out.append((stats.loss, stats.grad_norm, stats.n_replay))
    preds = learner.predict_many("a", TEXTS)
    return out, [(p.label, p.confidence) for p in preds]


def test_seeded_runs_are_deterministic(tiny_learner):
    first = _run(tiny_learner(seed=3))
    second = _run(tiny_learner(seed=3))
    assert first == second
    assert _run(tiny_learner(seed=4))[0] != first[0]


def test_multitask_replay_uses_each_samples_head(tiny_learner):
    learner = tiny_learner(memory=MemoryConfig(replay_ratio=2.0))
    learner.learn_many("feedback.intents", TEXTS, LABELS)
    stats = learner.learn_many("news", ["stocks up", "stocks down"], ["positive", "negative"])
    assert stats.n_replay == 4 and math.isfinite(stats.loss)
    assert learner.tasks() == ["feedback.intents", "news"]
    assert learner.replay.sizes() == {"feedback.intents": 5, "news": 2}


def test_growth_keeps_old_logits_and_extends_optimizer(tiny_learner):
    learner = tiny_learner()
    learner.learn_many("intents", TEXTS[:2], LABELS[:2])
    head = learner.model.head("intents")
    old_weight = head.weights[0]
    adam_state = {k: v.clone() for k, v in learner.optimizer.state[old_weight].items()}
    learner.model.eval()
    with torch.no_grad():
        feats = learner.model.encode(TEXTS)  # (B, H)
        before = head(feats)  # (B, 1)
    learner._grow("intents", ["top_up", "exchange_rate", "top_up"])
    with torch.no_grad():
        after = head(feats)  # (B, 3)
    assert torch.equal(after[:, :1], before)
    new_weight, new_bias = head.weights[1], head.biases[1]
    optimized = [p for group in learner.optimizer.param_groups for p in group["params"]]
    assert any(p is new_weight for p in optimized) and any(p is new_bias for p in optimized)
    assert all(torch.equal(adam_state[k], v) for k, v in learner.optimizer.state[old_weight].items())
    assert learner.labels("intents") == ["card_arrival", "top_up", "exchange_rate"]


def test_empty_and_invalid_inputs(tiny_learner):
    learner = tiny_learner()
    stats = learner.learn_many("intents", [], [])
    assert stats.model_version == 0 and stats.n_new == 0 and math.isnan(stats.loss)
    with pytest.raises(TypeError):
        learner.learn_many("intents", "a text", "a label")
    with pytest.raises(TypeError):
        learner.predict_many("intents", "a text")
    with pytest.raises(ValueError):
        learner.learn_many("intents", ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="^task"):
        learner.learn_many("", ["a"], ["x"])
    with pytest.raises(TypeError):
        learner.learn_many("intents", ["a"], [3])
    assert learner.model_version == 0 and learner.tasks() == []


def test_non_finite_loss_skips_update(tiny_learner):
    learner = tiny_learner()
    learner.learn_many("intents", TEXTS, LABELS)
    with torch.no_grad():
        learner.model.head("intents").weights[0].fill_(float("nan"))
    stats = learner.learn_many("intents", TEXTS, LABELS)
    assert math.isnan(stats.loss) and stats.model_version == 1 == learner.model_version
    assert len(learner.replay) == 5
    assert learner.counters()["skipped_updates"] == 1


def test_freeze_encoder_trains_heads_only(tiny_learner):
    learner = tiny_learner(freeze_encoder=True)
    assert learner.optimizer is None  # nothing trainable until the first label
    encoder_before = {k: v.clone() for k, v in learner.model.encoder.state_dict().items()}
    learner.learn_many("intents", TEXTS, LABELS)
    learner.learn_many("intents", TEXTS, LABELS)
    assert all(torch.equal(v, encoder_before[k]) for k, v in learner.model.encoder.state_dict().items())
    assert learner.model.head("intents").bias.abs().sum() > 0


def test_steps_per_batch_and_no_replay(tiny_learner):
    learner = tiny_learner(memory=MemoryConfig(replay_ratio=0.0), steps_per_batch=3)
    learner.learn_many("intents", TEXTS, LABELS)
    stats = learner.learn_many("intents", TEXTS, LABELS)
    assert stats.n_replay == 0 and stats.model_version == 2
    assert learner.counters()["optimizer_steps"] == 6


def test_on_drift_boosts_replay_and_lr_for_n_updates_then_restores(tiny_learner):
    from learner.config import MemoryConfig

    learner = tiny_learner(memory=MemoryConfig(capacity=100, replay_ratio=1.0))
    learner.learn_many("t", [f"text {i}" for i in range(8)], ["a", "b"] * 4)
    base_lrs = [g["lr"] for g in learner.optimizer.param_groups]
    learner.on_drift("t", updates=2, lr_scale=3.0, replay_scale=2.0)
    assert learner.adapting == 2
    stats = learner.learn_many("t", ["x one", "x two"], ["a", "b"])
    assert stats.n_replay == 4                      # 2 new x ratio 1 x scale 2
    assert [g["lr"] for g in learner.optimizer.param_groups] == base_lrs
    learner.learn_many("t", ["y one", "y two"], ["a", "b"])
    assert learner.adapting == 0
    assert learner.learn_many("t", ["z one", "z two"], ["a", "b"]).n_replay == 2
