"""The contract every strategy (and mode) keeps: inputs not mutated, state round-trips
through a checkpoint, seeded runs are deterministic, the memory stays within its bound."""

import math

import pytest
import torch

from learner import CheckpointManager, LearnerConfig, MemoryConfig
from learner.strategies import build_strategies

TEXTS = ["where is my card", "my card has not arrived", "how do I top up", "top up failed", "exchange rate?"]
LABELS = ["card_arrival", "card_arrival", "top_up", "top_up", "exchange_rate"]
NEWS = ["shares rose 5%", "profit fell sharply", "the company is based in Espoo"]
SENTIMENT = ["positive", "negative", "neutral"]

CASES = [  # (strategy, mode, memory capacity): every strategy, both memory regimes (full / evicting)
    ("naive", "head", 64), ("er", "head", 4), ("er", "head", 64), ("derpp", "head", 4), ("derpp", "head", 64),
    ("ewc", "head", 64), ("lwf", "head", 64), ("er+ewc", "head", 4), ("er+lwf", "full", 4),
    ("derpp+ewc+lwf", "lora", 64),
]


def _stream(learner):
    """Two tasks, labels opening mid-stream (consolidations), a drift; returns what it saw."""
    out = []
    steps = [("intents", TEXTS[:2], LABELS[:2]), ("intents", TEXTS, LABELS), ("news", NEWS, SENTIMENT),
             ("intents", TEXTS[2:], LABELS[2:])]
    for i, (task, texts, labels) in enumerate(steps):
        if i == 3:
            learner.on_drift("intents", updates=1)
        given_texts, given_labels = list(texts), list(labels)
        stats = learner.learn_many(task, given_texts, given_labels)
        assert given_texts == texts and given_labels == labels  # inputs not mutated
        out.append((round(stats.loss, 6), stats.n_replay, stats.model_version))
    preds = learner.predict_many("intents", TEXTS) + learner.predict_many("news", NEWS)
    return out, [(p.label, round(p.confidence, 5)) for p in preds]


@pytest.mark.parametrize("strategy, mode, capacity", CASES, ids=[f"{s}-{m}-mem{c}" for s, m, c in CASES])
def test_strategy_contract(tiny_learner, tmp_path, strategy, mode, capacity):
    memory = MemoryConfig(capacity=capacity, replay_ratio=1.0)
    make = lambda: tiny_learner(memory=memory, strategy=strategy, mode=mode, seed=1, lr=1e-3)  # noqa: E731

    learner = make()
    first, second = _stream(learner), _stream(make())
    assert first == second  # seeded runs are deterministic
    assert all(math.isfinite(loss) for loss, _, _ in first[0])
    assert len(learner.replay) <= capacity  # memory bound
    replays = any(s.replays for s in learner.strategies)
    assert (learner.counters()["samples_replayed"] > 0) == replays

    manager = CheckpointManager(tmp_path / "ckpt")
    manager.save(learner)
    restored = make()
    assert manager.load_latest(restored) is None  # no extra given
    a, b = learner.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "state_dict does not round-trip"
    assert learner.metadata()["strategies"] == restored.metadata()["strategies"]
    assert [(p.label, round(p.confidence, 5)) for p in restored.predict_many("intents", TEXTS)] == \
           [(p.label, round(p.confidence, 5)) for p in learner.predict_many("intents", TEXTS)]
    if mode == "head":
        assert not any(k.startswith("encoder.") for k in a)
    if mode == "lora":
        enc = [k for k in a if k.startswith("encoder.")]
        assert enc and all("lora_" in k for k in enc)
    # A restored learner keeps learning.
    assert math.isfinite(restored.learn_many("news", NEWS, SENTIMENT).loss)


def test_derpp_stores_logits_and_ewc_lwf_hold_state(tiny_learner):
    learner = tiny_learner(strategy="derpp+ewc+lwf", mode="head")
    for _ in range(2):
        learner.learn_many("intents", TEXTS[:2], LABELS[:2])
    learner.learn_many("intents", TEXTS, LABELS)
    assert all(item.logits is not None for item in learner.replay.items())
    tensors = learner.state_dict()
    assert any(k.startswith("strategy.ewc.fisher/") for k in tensors)
    assert any(k.startswith("strategy.lwf.head/") for k in tensors)


def test_head_mode_caches_memory_features_only(tiny_learner):
    learner = tiny_learner(mode="head", memory=MemoryConfig(capacity=3))
    calls = []
    encode = learner.features.encode
    learner.features.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    learner.learn_many("intents", TEXTS[:3], LABELS[:3])
    learner.learn_many("intents", TEXTS[3:], LABELS[3:])
    assert calls == [TEXTS[:3], TEXTS[3:]]  # replayed texts were not encoded again
    # Pruned to the memory once more than _PRUNE_SLACK features beyond it are cached.
    from learner import learner as learner_module
    assert len(learner.features) <= 3 + learner_module._PRUNE_SLACK
    learner.features.prune(item.text for item in learner.replay.items())
    assert len(learner.features) <= 3
    assert {item.text for item in learner.replay.items()} >= set(learner.features._cached)


def test_ace_masks_absent_labels_for_new_rows(tiny_learner):
    from learner.losses import cross_entropy
    from learner.strategies import Batch, Outputs

    rows, targets = torch.tensor([0, 1]), torch.tensor([2, 0])
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    batch = Batch("t", ["new", "old"], ["t", "t"], ["c", "a"], 1, [object()], {"t": rows}, {"t": targets}, False)
    ace = cross_entropy(batch, Outputs(torch.zeros(2, 4), {"t": logits}), ace=True)
    plain = cross_entropy(batch, Outputs(torch.zeros(2, 4), {"t": logits}), ace=False)
    # The new row only sees its own label (loss 0); the replayed row sees all three.
    expected = torch.nn.functional.cross_entropy(logits[1:], targets[1:], reduction="sum") / 2
    assert torch.isclose(ace, expected) and plain > ace


def test_fgm_changes_the_update_and_needs_gradients(tiny_learner):
    base = tiny_learner(mode="full", seed=2)
    adv = tiny_learner(mode="full", seed=2, adv_epsilon=1.0)
    for _ in range(2):  # the first update has zero heads: no gradient reaches the embeddings yet
        base.learn_many("intents", TEXTS, LABELS)
        adv.learn_many("intents", TEXTS, LABELS)
    a, b = base.state_dict(), adv.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    lora = tiny_learner(mode="lora", seed=2, adv_epsilon=1.0)  # frozen embedding table: still works
    for _ in range(2):
        assert math.isfinite(lora.learn_many("intents", TEXTS, LABELS).loss)
    with pytest.raises(ValueError, match="^adv_epsilon"):
        LearnerConfig(mode="head", adv_epsilon=0.5)


@pytest.mark.parametrize("spec, message", [
    ("er+bogus", "^strategy"), ("naive+er", "^strategy"), ("er+derpp", "^strategy"), ("", "^strategy"),
])
def test_bad_strategy_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        LearnerConfig(strategy=spec)


@pytest.mark.parametrize("field, value", [
    ("mode", "adapter"), ("bias_correction", "wa"), ("lora_rank", 0), ("lora_layers", -1),
    ("ewc_lambda", -1.0), ("derpp_alpha", float("nan")), ("lwf_alpha", -0.1), ("adv_epsilon", -1.0),
])
def test_bad_new_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        LearnerConfig(**{field: value})


def test_build_strategies_composes():
    assert [s.name for s in build_strategies(LearnerConfig(strategy="derpp+ewc"))] == ["derpp", "ewc"]
